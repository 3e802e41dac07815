"""The one place a Redis client is made from a URL: plain, TLS (``rediss://``), ACL users, the embedded store.

Every Redis URL Relay takes goes through :func:`connect`:

- ``redis://[user:password@]host:port/db`` and ``rediss://...`` (TLS). The user and password are an ACL
  user's (``AUTH user password``); a password alone is the ``default`` user's.
- TLS settings come from :class:`RedisTLS` (``RELAY_REDIS_TLS_CA_FILE``, ``RELAY_REDIS_TLS_CERT_FILE``,
  ``RELAY_REDIS_TLS_KEY_FILE``) or redis-py's own query parameters
  (``?ssl_ca_certs=/path&ssl_cert_reqs=required``); the query wins where both say something.
- An empty URL is the embedded in-memory store (fakeredis), for a first look only.

:func:`probe_restart_detection` says once, in the log, when the ACL user may not run ``INFO``: the sweeps
then cannot see a Redis restart (their SCAN cursors are tied to INFO's ``run_id``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

log = logging.getLogger("relay.redis")

#: Client defaults for a networked Redis (the URL's query may override them).
DEFAULT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "health_check_interval": 30,
}


@dataclass(frozen=True, slots=True)
class RedisTLS:
    """TLS files for ``rediss://`` URLs: the CA to trust (else the system's roots) and a client
    certificate for a Redis started with ``tls-auth-clients yes``."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.ca_file:
            out["ssl_ca_certs"] = self.ca_file
        if self.cert_file:
            out["ssl_certfile"] = self.cert_file
        if self.key_file:
            out["ssl_keyfile"] = self.key_file
        return out


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def connect(url: str, tls: RedisTLS | None = None, *, what: str = "REDIS_URL", **options: Any) -> Redis:
    """A client for ``url`` (see the module doc); ``what`` names the setting in messages.

    An empty ``url`` is the embedded store: a caller for whom empty means something else (another URL
    that defaults to the main store) decides that before calling.

    ``options`` are redis-py client options that override the defaults (not the URL's query).
    """
    if not url:
        from fakeredis import FakeAsyncRedis, FakeServer

        log.warning(f"{what} is not set: using an embedded in-memory store; all data is lost at exit")
        return FakeAsyncRedis(server=FakeServer(version=(7, 0)))
    return Redis.from_url(url, **{**DEFAULT_OPTIONS, **options, **tls_options(url, tls, what=what)})


def tls_options(url: str, tls: RedisTLS | None, *, what: str = "REDIS_URL") -> dict[str, Any]:
    """The redis-py options that ``tls`` adds for ``url`` (none unless it is ``rediss://``; the URL's own
    query wins); refuses a URL scheme Relay does not speak."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{what} must be redis://, rediss:// or unix://, not {redact(url)!r}")
    if parts.scheme == "rediss" and tls is not None:
        given = parse_qs(parts.query)
        return {k: v for k, v in tls.options().items() if k not in given}
    if tls is not None and tls.options():
        log.warning(f"{what} is not a rediss:// URL: the Redis TLS files are not used for it")
    return {}


async def probe_restart_detection(redis: Redis) -> bool:
    """Whether this client may run ``INFO server`` (restart detection); logs once when it may not."""
    try:
        await redis.info("server")
    except NoPermissionError:
        log.warning(
            "Redis restart detection is off: this Redis user may not run INFO, so a backfill, verification "
            "or sweep resumed after a Redis restart cannot tell that its SCAN cursor belongs to the old run "
            "(allow +info in the ACL to turn it on)",
            extra={"reason": "noperm-info"},
        )
        return False
    except ResponseError:
        return False  # a store without INFO (the embedded one never restarts)
    return True
