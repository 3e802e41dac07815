"""``relay serve``'s flags: each overrides the setting of its name, and a flag left out keeps the env's."""

from __future__ import annotations

import pytest

from relay.core.tls import ServerTLS
from relay.server import parse_serve

#: flag -> the setting it sets
FLAGS = {
    "--listen": "listen",
    "--redis-url": "redis_url",
    "--legacy-redis-url": "legacy_redis_url",
    "--metrics-listen": "metrics_listen",
    "--api-keys-file": "api_keys_file",
}


@pytest.mark.parametrize(("flag", "name"), sorted(FLAGS.items()))
def test_each_flag_overrides_its_setting(monkeypatch, flag, name):
    monkeypatch.setenv("RELAY_LISTEN", "127.0.0.1:1")
    settings, _ = parse_serve(["serve", flag, "x:9"])
    assert getattr(settings, name) == "x:9"


def test_an_absent_flag_keeps_the_environment(monkeypatch):
    monkeypatch.setenv("RELAY_LISTEN", "127.0.0.1:1")
    monkeypatch.setenv("RELAY_API_KEYS_FILE", "/env/keys.json")
    settings, role = parse_serve(["serve", "--redis-url", "redis://r:1/0"])
    assert (settings.listen, settings.api_keys_file, role) == ("127.0.0.1:1", "/env/keys.json", "all")


def test_the_tls_flags_override_the_tls_files_one_by_one(monkeypatch):
    monkeypatch.setenv("RELAY_TLS_CERT_FILE", "/env.crt")
    monkeypatch.setenv("RELAY_TLS_KEY_FILE", "/env.key")
    monkeypatch.delenv("RELAY_TLS_CLIENT_CA_FILE", raising=False)
    argv = ["serve", "controller", "--tls-key-file", "/flag.key", "--tls-client-ca-file", ""]
    settings, _ = parse_serve(argv)
    assert settings.tls == ServerTLS("/env.crt", "/flag.key", "")


def test_the_role_is_the_positional_argument():
    assert parse_serve(["serve", "jobs"])[1] == "jobs"
    with pytest.raises(SystemExit):
        parse_serve(["serve", "workers"])
