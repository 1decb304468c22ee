"""MqttSettings.from_url and Topics: valid input builds values, bad input is a ConfigError."""

from __future__ import annotations

import pytest

from edge_worker.errors import ConfigError
from edge_worker.publish.mqtt import MqttSettings, Topics


def test_plain_and_tls_urls() -> None:
    s = MqttSettings.from_url("mqtt://broker.local:1884")
    assert (s.host, s.port, s.tls) == ("broker.local", 1884, False)
    assert MqttSettings.from_url("mqtt://broker.local").port == 1883
    t = MqttSettings.from_url("mqtts://broker.local/", ca_file="/etc/ca.pem", keepalive=10)
    assert (t.port, t.tls, t.ca_file, t.keepalive) == (8883, True, "/etc/ca.pem", 10)
    assert t.url == "mqtts://broker.local:8883"


def test_username_from_url_password_from_override_and_not_in_repr() -> None:
    s = MqttSettings.from_url("mqtt://ward%2Bbox@10.0.0.5", password="s3cret")
    assert (s.username, s.password) == ("ward+box", "s3cret")
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://broker:1883", "scheme"),
        ("ws://broker", "scheme"),
        ("broker:1883", "scheme"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:99999", "port"),
        ("mqtt://broker:abc", "port"),
        ("mqtt://broker:0", "port"),
        ("mqtt://broker:1883/topic", "path"),
        ("mqtt://broker?x=1", "query"),
        ("mqtt://user:pw@broker", "password"),
    ],
)
def test_bad_urls(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        MqttSettings.from_url(url)


@pytest.mark.parametrize(
    "overrides, why",
    [
        ({"colour": "red"}, "unknown mqtt setting"),
        ({"port": 1}, "comes from the URL"),
        ({"tls": True}, "comes from the URL"),
        ({"ca_file": "/ca.pem"}, "need TLS"),
        ({"tls_insecure": True}, "need TLS"),
        ({"password": "x"}, "without a username"),
        ({"keepalive": 0}, "keepalive"),
        ({"protocol": "3.1"}, "protocol"),
        ({"topic_prefix": "a/+"}, "topic_prefix"),
        ({"topic_prefix": "a//b"}, "empty topic level"),
        ({"reconnect_min_delay": 5, "reconnect_max_delay": 2}, "reconnect"),
    ],
)
def test_bad_overrides(overrides: dict[str, object], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        MqttSettings.from_url("mqtt://broker", **overrides)


def test_client_cert_needs_key() -> None:
    with pytest.raises(ConfigError, match="together"):
        MqttSettings.from_url("mqtts://broker", cert_file="/c.pem")
    s = MqttSettings.from_url("mqtts://broker", cert_file="/c.pem", key_file="/k.pem")
    assert s.cert_file == "/c.pem"


def test_settings_are_frozen() -> None:
    s = MqttSettings.from_url("mqtt://broker")
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_topics() -> None:
    t = Topics("north", "xr-2")
    assert t.verdict == "xray/north/xr-2/verdict"
    assert t.error == "xray/north/xr-2/error"
    assert t.availability == "xray/north/xr-2/availability"
    assert t.status == "xray/north/xr-2/status"
    assert Topics("n", "s", prefix="hosp/qc").verdict == "hosp/qc/n/s/verdict"


@pytest.mark.parametrize("site, station", [("", "s"), ("a/b", "s"), ("n", "x+"), ("n", "#")])
def test_bad_topic_levels(site: str, station: str) -> None:
    with pytest.raises(ConfigError):
        Topics(site, station)
