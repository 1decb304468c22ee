"""MQTT connection settings and the topic layout; pure values, no network.

Only :mod:`edge_worker.publish.mqtt` turns these into a paho client.  Both classes validate on
construction and raise :class:`~edge_worker.errors.ConfigError`, so a bad broker URL or station
name stops the daemon before it reports ready.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from edge_worker.errors import ConfigError

_SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}
PROTOCOLS = ("3.1.1", "5")
# Fields that only the URL may set: overriding them would make the URL lie.
_URL_FIELDS = frozenset({"host", "port", "tls"})


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker.

    host, port: broker address.  tls: connect with TLS (``mqtts://``).  ca_file: CA bundle that
    signs the broker certificate (None: the system store).  cert_file, key_file: client
    certificate for mutual TLS (both or neither).  tls_insecure: skip the host-name check (test
    rigs only).  username, password: broker credentials (password never appears in ``repr``).
    keepalive: seconds between pings; it bounds how long a half-open connection goes unnoticed.
    client_id: MQTT client id ("" = ``xray-edge-<site>-<station>``, stable so broker ACLs can use
    ``%c``).  topic_prefix: first topic level.  protocol: ``"3.1.1"`` (default: the embedded
    amqtt broker speaks nothing else) or ``"5"``, recommended with mosquitto: under 3.1.1 a
    broker that denies a publish by ACL still acknowledges it and drops it, so the verdict is
    lost silently, while MQTT 5 returns "not authorised" and the outbox keeps the row.
    reconnect_min_delay, reconnect_max_delay: back-off bounds in seconds between attempts.
    """

    host: str
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive: int = 30
    client_id: str = ""
    topic_prefix: str = "xray"
    protocol: str = "3.1.1"
    reconnect_min_delay: int = 1
    reconnect_max_delay: int = 60

    def __post_init__(self) -> None:
        if not self.host or any(c in self.host for c in "/ "):
            raise ConfigError(f"mqtt host: invalid host {self.host!r}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"mqtt port: {self.port} is outside 1..65535")
        if not 1 <= self.keepalive <= 65535:
            # 0 would disable pings, and with them the detection of half-open connections.
            raise ConfigError(f"mqtt keepalive: {self.keepalive} is outside 1..65535 seconds")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"mqtt protocol: {self.protocol!r} is not one of {PROTOCOLS}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("mqtt cert_file and key_file must be given together")
        if not self.tls and (self.ca_file or self.cert_file or self.tls_insecure):
            raise ConfigError("mqtt ca_file/cert_file/tls_insecure need TLS: use an mqtts:// URL")
        if self.password is not None and self.username is None:
            raise ConfigError("mqtt password given without a username")
        if not 1 <= self.reconnect_min_delay <= self.reconnect_max_delay:
            raise ConfigError(
                "mqtt reconnect delays: need 1 <= reconnect_min_delay <= reconnect_max_delay, "
                f"got {self.reconnect_min_delay} and {self.reconnect_max_delay}"
            )
        _check_topic_levels("topic_prefix", self.topic_prefix, allow_slash=True)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> MqttSettings:
        """Build settings from ``mqtt://[user@]host[:port]`` or ``mqtts://...`` plus overrides.

        ``overrides`` are any other field (``ca_file=..., password=...``).  Raises
        :class:`ConfigError` for another scheme, a missing host, a bad port, a path, query or
        fragment, a password inside the URL (it belongs in ``$CREDENTIALS_DIRECTORY``), an
        unknown override, or an override of host/port/tls (those come from the URL).
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"mqtt url {url!r}: bad host or port ({exc})") from exc
        if parts.scheme not in _SCHEMES:
            raise ConfigError(f"mqtt url {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ConfigError(f"mqtt url {url!r}: no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"mqtt url {url!r}: must not have a path, query or fragment")
        if parts.password is not None:
            raise ConfigError(
                f"mqtt url for host {parts.hostname!r}: do not put the password in the URL; "
                "give it separately (from $CREDENTIALS_DIRECTORY)"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        for name in overrides:
            if name in _URL_FIELDS:
                raise ConfigError(f"mqtt setting {name!r} comes from the URL; do not override it")
            if name not in known:
                raise ConfigError(f"unknown mqtt setting {name!r}")
        tls, default_port = _SCHEMES[parts.scheme]
        values: dict[str, Any] = {
            "host": parts.hostname,
            "port": default_port if port is None else port,
            "tls": tls,
        }
        if parts.username:
            values["username"] = unquote(parts.username)
        values.update(overrides)
        return cls(**values)

    @property
    def url(self) -> str:
        """The broker address as a URL, without credentials (safe to log)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Topics:
    """Topic names for one station: ``<prefix>/<site>/<station>/<kind>``.

    verdict, error and review-copy carry per-image messages (QoS 1, not retained);
    availability carries the retained ``online``/``offline`` birth and death; status carries
    retained worker state; latest carries the retained summary of the station's last verdict or error.
    """

    site: str
    station: str
    prefix: str = "xray"

    def __post_init__(self) -> None:
        _check_topic_levels("topic_prefix", self.prefix, allow_slash=True)
        _check_topic_levels("site", self.site, allow_slash=False)
        _check_topic_levels("station", self.station, allow_slash=False)

    @property
    def base(self) -> str:
        """``<prefix>/<site>/<station>``."""
        return f"{self.prefix}/{self.site}/{self.station}"

    @property
    def verdict(self) -> str:
        """Per-image verdicts."""
        return f"{self.base}/verdict"

    @property
    def error(self) -> str:
        """Per-image rejections and failures."""
        return f"{self.base}/error"

    @property
    def review_copy(self) -> str:
        """Per-verdict reduced copies of the image (``xray-qc/review-copy@1``), when switched on."""
        return f"{self.base}/review-copy"

    @property
    def availability(self) -> str:
        """Retained ``online``/``offline``; ``offline`` is also the last will."""
        return f"{self.base}/availability"

    @property
    def status(self) -> str:
        """Retained worker status document."""
        return f"{self.base}/status"

    @property
    def latest(self) -> str:
        """Retained summary of the last verdict or error (``xray-qc/latest@1``)."""
        return f"{self.base}/latest"


def _check_topic_levels(name: str, value: str, *, allow_slash: bool) -> None:
    """Raise ConfigError unless ``value`` is usable as (a run of) literal topic levels."""
    bad = "+#\x00" if allow_slash else "+#/\x00"
    if not value or any(c in value for c in bad):
        raise ConfigError(f"{name}: {value!r} must be non-empty and contain none of {bad!r}")
    if allow_slash and (value.startswith("/") or value.endswith("/") or "//" in value):
        raise ConfigError(f"{name}: {value!r} has an empty topic level")
