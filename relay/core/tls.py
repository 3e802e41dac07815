"""TLS for gRPC: the server's credentials (TLS, or mTLS with a client CA) and relayctl's.

Files are read once, when the server starts or the channel is made; a missing or unreadable file is
an error at start-up (:class:`TLSConfigError`), never a silent fall-back to plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TLSConfigError(ValueError):
    """A TLS setting that cannot work (a certificate without its key, an unreadable file)."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read the {what} {path!r}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """``cert_file``/``key_file`` make the server listen with TLS only; ``client_ca_file`` also requires
    client certificates signed by that CA (mTLS)."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.key_file or self.client_ca_file)

    def check(self) -> None:
        if not self.enabled:
            return
        if not (self.cert_file and self.key_file):
            raise TLSConfigError(
                "TLS needs both RELAY_TLS_CERT_FILE and RELAY_TLS_KEY_FILE (--tls-cert-file, --tls-key-file)"
                + ("; a client CA alone cannot serve TLS" if self.client_ca_file else "")
            )

    def credentials(self) -> grpc.ServerCredentials:
        self.check()
        pair = (_read(self.key_file, "TLS key"), _read(self.cert_file, "TLS certificate"))
        if self.client_ca_file:
            return grpc.ssl_server_credentials(
                [pair],
                root_certificates=_read(self.client_ca_file, "client CA file"),
                require_client_auth=True,
            )
        return grpc.ssl_server_credentials([pair])

    def describe(self) -> str:
        if not self.enabled:
            return "plaintext"
        return "mTLS (client certificates required)" if self.client_ca_file else "TLS"


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """What relayctl (or any client) presents: ``ca_file`` to trust (else the system's roots), and
    ``cert_file``/``key_file`` for a server that requires client certificates."""

    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    #: The name the server's certificate is checked against, when the target is an address it lacks.
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert_file) != bool(self.key_file):
            raise TLSConfigError("a client certificate needs its key, and a key its certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA file") if self.ca_file else None,
            private_key=_read(self.key_file, "client key") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "client certificate") if self.cert_file else None,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
