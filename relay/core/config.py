"""Configuration, read once at start-up from the environment (flags override it) into frozen dataclasses."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from relay.core.env_fields import env_field, read_env
from relay.core.redis_client import RedisTLS
from relay.core.stages import Stage, stage_from_flags
from relay.core.tls import ServerTLS


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list, spaces and empty entries dropped."""
    return tuple(name for name in text.replace(" ", "").split(",") if name)


def _millis(text: str) -> float:
    """Milliseconds, as seconds."""
    return float(text) / 1000


def _default_credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "relay" / "credentials.json"


@dataclass(frozen=True, slots=True)
class Settings:
    #: Empty: the embedded in-memory store (fakeredis), for a first look; never for production.
    redis_url: str = env_field("REDIS_URL", "")
    #: The single Redis holding the legacy layout; empty: the same store as ``redis_url`` (topology 1).
    legacy_redis_url: str = env_field("RELAY_LEGACY_REDIS_URL", "")
    #: Replicas that must confirm each mutating RPC's writes (WAIT) before it is answered; 0: none.
    redis_wait_replicas: int = env_field("RELAY_REDIS_WAIT_REPLICAS", 0)
    redis_wait_timeout_ms: int = env_field("RELAY_REDIS_WAIT_TIMEOUT_MS", 500)
    listen: str = env_field("RELAY_LISTEN", "127.0.0.1:50051")
    #: Empty turns the Prometheus endpoint off.
    metrics_listen: str = env_field("RELAY_METRICS_LISTEN", "127.0.0.1:9464")
    api_keys_file: str = env_field("RELAY_API_KEYS_FILE", "")
    #: The migration console (controller role); empty turns it off. TLS when a certificate is given.
    console_listen: str = env_field("RELAY_CONSOLE_LISTEN", "127.0.0.1:8080")
    console_tls_certfile: str = env_field("RELAY_CONSOLE_TLS_CERT", "")
    console_tls_keyfile: str = env_field("RELAY_CONSOLE_TLS_KEY", "")
    #: Where ``relay serve`` saves a development key and ``relayctl`` looks for one.
    credentials_path: Path = field(default_factory=_default_credentials_path)
    #: The stage used until one is set in Redis, from the old system's flags.
    default_stage: Stage = Stage.READ_NEW
    #: Workspaces that keep their own metric label; the rest count as "other".
    metric_workspaces: tuple[str, ...] = env_field("RELAY_METRIC_WORKSPACES", (), _names)
    metric_workspace_top_n: int = env_field("RELAY_METRIC_WORKSPACE_TOP_N", 20)
    max_params_bytes: int = 64 * 1024
    max_result_bytes: int = 1024 * 1024
    max_actions_per_call: int = 100
    idempotency_ttl_seconds: int = 24 * 3600
    #: How often a replica re-reads the stage table, besides the change notices.
    stage_refresh_seconds: float = 0.5
    #: How long after a stage change every replica is taken to have seen it (above the refresh interval):
    #: stage rules only trust an operation that started at least this long after the change it depends on.
    stage_settle_seconds: float = 2.0
    #: How old a clean verification may be and still allow NEW_ONLY or a cleanup.
    verification_max_age_seconds: float = env_field("RELAY_VERIFICATION_MAX_AGE_SECONDS", 6 * 3600.0)
    #: Seconds an api key found in Redis is trusted before it is read again (revocation delay).
    api_key_cache_seconds: float = 5.0
    shutdown_grace_seconds: float = 10.0
    #: Backfill: Redis round trips slower than this make the backfill slow down (0 turns the brake off).
    backfill_latency_ceiling_seconds: float = env_field("RELAY_BACKFILL_LATENCY_CEILING_MS", 0.025, _millis)
    #: Backfill, verify, cleanup, reverse copy: each Redis script runs about this long at most, its batch
    #: sized to fit (0: no budget, the operator's batch size).
    backfill_script_budget_seconds: float = env_field("RELAY_BACKFILL_SCRIPT_BUDGET_MS", 0.002, _millis)
    #: Backfill: the lease a running backfill renews; a controller that dies loses it after this long.
    backfill_lease_seconds: float = 10.0
    #: Backfill: how often each controller looks for a backfill whose controller died, and resumes it
    #: when backfill_auto_resume is on (else marks it ORPHANED for ResumeBackfill).
    backfill_orphan_check_seconds: float = 3.0
    backfill_auto_resume: bool = True
    log_level: str = env_field("RELAY_LOG_LEVEL", "INFO", str.upper)
    #: json, text, or auto (from_env's default: text when stderr is a terminal, else json).
    log_format: str = "json"
    #: gRPC TLS (env RELAY_TLS_CERT_FILE, RELAY_TLS_KEY_FILE, RELAY_TLS_CLIENT_CA_FILE): with a
    #: certificate and key every role listens with TLS only; a client CA also requires client certificates.
    tls: ServerTLS = field(default_factory=ServerTLS)
    #: TLS files for rediss:// URLs (env RELAY_REDIS_TLS_CA_FILE, _CERT_FILE, _KEY_FILE).
    redis_tls: RedisTLS = field(default_factory=RedisTLS)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = read_env(cls, env)
        values.update(
            {
                "default_stage": stage_from_flags(env),
                "log_format": env.get("RELAY_LOG_FORMAT", "").strip().lower() or "auto",
                "tls": ServerTLS(
                    env.get("RELAY_TLS_CERT_FILE", ""),
                    env.get("RELAY_TLS_KEY_FILE", ""),
                    env.get("RELAY_TLS_CLIENT_CA_FILE", ""),
                ),
                "redis_tls": RedisTLS(
                    env.get("RELAY_REDIS_TLS_CA_FILE", ""),
                    env.get("RELAY_REDIS_TLS_CERT_FILE", ""),
                    env.get("RELAY_REDIS_TLS_KEY_FILE", ""),
                ),
            }
        )
        if env.get("RELAY_CREDENTIALS"):
            values["credentials_path"] = Path(env["RELAY_CREDENTIALS"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
