"""Settings and limits: the environment variable each is read from, how its text is read, and the value
it has when the variable is unset."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.core.config import Settings
from relay.core.limits import Limits, max_valid_request_bytes
from relay.core.redis_client import RedisTLS
from relay.core.stages import Stage
from relay.core.tls import ServerTLS

#: variable -> (its text, the setting, the value read)
SETTINGS_FROM_ENV = {
    "REDIS_URL": ("redis://a:1/0", "redis_url", "redis://a:1/0"),
    "RELAY_LEGACY_REDIS_URL": ("redis://b:2/0", "legacy_redis_url", "redis://b:2/0"),
    "RELAY_REDIS_WAIT_REPLICAS": ("2", "redis_wait_replicas", 2),
    "RELAY_REDIS_WAIT_TIMEOUT_MS": ("750", "redis_wait_timeout_ms", 750),
    "RELAY_LISTEN": ("0.0.0.0:1", "listen", "0.0.0.0:1"),
    "RELAY_METRICS_LISTEN": ("", "metrics_listen", ""),
    "RELAY_API_KEYS_FILE": ("/k.json", "api_keys_file", "/k.json"),
    "RELAY_CONSOLE_LISTEN": ("0.0.0.0:2", "console_listen", "0.0.0.0:2"),
    "RELAY_CONSOLE_TLS_CERT": ("/c.pem", "console_tls_certfile", "/c.pem"),
    "RELAY_CONSOLE_TLS_KEY": ("/k.pem", "console_tls_keyfile", "/k.pem"),
    "RELAY_METRIC_WORKSPACES": (" a, b,,c ", "metric_workspaces", ("a", "b", "c")),
    "RELAY_METRIC_WORKSPACE_TOP_N": ("7", "metric_workspace_top_n", 7),
    "RELAY_VERIFICATION_MAX_AGE_SECONDS": ("1.5", "verification_max_age_seconds", 1.5),
    "RELAY_BACKFILL_LATENCY_CEILING_MS": ("40", "backfill_latency_ceiling_seconds", 0.04),
    "RELAY_BACKFILL_SCRIPT_BUDGET_MS": ("5", "backfill_script_budget_seconds", 0.005),
    "RELAY_LOG_LEVEL": ("debug", "log_level", "DEBUG"),
    "RELAY_LOG_FORMAT": (" Text ", "log_format", "text"),
    "RELAY_CREDENTIALS": ("/creds.json", "credentials_path", Path("/creds.json")),
    "AI_JOBS_NEW_SCHEMA": ("off", "default_stage", Stage.LEGACY_ONLY),
}

#: setting -> its value when no variable is set
SETTINGS_UNSET = {
    "redis_url": "",
    "legacy_redis_url": "",
    "redis_wait_replicas": 0,
    "redis_wait_timeout_ms": 500,
    "listen": "127.0.0.1:50051",
    "metrics_listen": "127.0.0.1:9464",
    "api_keys_file": "",
    "console_listen": "127.0.0.1:8080",
    "console_tls_certfile": "",
    "console_tls_keyfile": "",
    "metric_workspaces": (),
    "metric_workspace_top_n": 20,
    "verification_max_age_seconds": 6 * 3600,
    "backfill_latency_ceiling_seconds": 0.025,
    "backfill_script_budget_seconds": 0.002,
    "log_level": "INFO",
    "log_format": "auto",
    "default_stage": Stage.READ_NEW,
    "tls": ServerTLS("", "", ""),
    "redis_tls": RedisTLS("", "", ""),
}


@pytest.mark.parametrize(("variable", "case"), sorted(SETTINGS_FROM_ENV.items()))
def test_each_setting_is_read_from_its_variable(variable, case):
    text, name, value = case
    assert getattr(Settings.from_env({variable: text}), name) == value


def test_an_unset_variable_leaves_its_setting_at_its_default():
    settings = Settings.from_env({})
    assert {name: getattr(settings, name) for name in SETTINGS_UNSET} == SETTINGS_UNSET


def test_an_empty_credentials_variable_keeps_the_default_path(tmp_path):
    settings = Settings.from_env({"RELAY_CREDENTIALS": "", "XDG_CONFIG_HOME": str(tmp_path)})
    assert settings.credentials_path == Settings().credentials_path


def test_the_tls_files_are_read_from_their_variables():
    settings = Settings.from_env(
        {
            "RELAY_TLS_CERT_FILE": "/s.crt",
            "RELAY_TLS_KEY_FILE": "/s.key",
            "RELAY_TLS_CLIENT_CA_FILE": "/ca.pem",
            "RELAY_REDIS_TLS_CA_FILE": "/rca.pem",
            "RELAY_REDIS_TLS_CERT_FILE": "/r.crt",
            "RELAY_REDIS_TLS_KEY_FILE": "/r.key",
        }
    )
    assert settings.tls == ServerTLS("/s.crt", "/s.key", "/ca.pem")
    assert settings.redis_tls == RedisTLS("/rca.pem", "/r.crt", "/r.key")


def test_overrides_win_over_the_environment_and_none_is_no_override():
    settings = Settings.from_env({"RELAY_LISTEN": "0.0.0.0:1"}, listen="0.0.0.0:2", redis_url=None)
    assert (settings.listen, settings.redis_url) == ("0.0.0.0:2", "")


def test_a_variable_that_is_not_a_number_is_refused():
    with pytest.raises(ValueError):
        Settings.from_env({"RELAY_REDIS_WAIT_REPLICAS": "two"})


def test_each_limit_is_read_from_its_variable():
    limits = Limits.from_env(
        {
            "RELAY_MAX_CONCURRENT_RPCS": "10",
            "RELAY_REDIS_POOL_SIZE": "3",
            "RELAY_REDIS_POOL_TIMEOUT_SECONDS": "0.5",
            "RELAY_MAX_RECEIVE_BYTES": "2048",
        }
    )
    assert limits == Limits(
        max_concurrent_rpcs=10, redis_pool_size=3, redis_pool_timeout_seconds=0.5, max_receive_bytes=2048
    )
    assert limits.receive_bytes == 2048


def test_unset_limits_keep_their_defaults_and_admit_every_valid_request():
    limits = Limits.from_env({})
    assert limits == Limits(
        max_concurrent_rpcs=1024, redis_pool_size=64, redis_pool_timeout_seconds=2.0, max_receive_bytes=0
    )
    assert max_valid_request_bytes() < limits.receive_bytes <= max_valid_request_bytes() + 1024
