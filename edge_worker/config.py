"""Typed, strict configuration: a TOML file, or the quick-start flags, never both half-way.

Every field is documented where it is declared.  Unknown keys and wrong types are rejected
with the key's dotted name and its line in the file.  Loading has no side effects: it creates
no folder and opens no connection (``edge-worker check`` does that on purpose).

Secrets are not written in the file: the MQTT password is read from the systemd credential
``mqtt-password`` in ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``), or from
``mqtt.password_file``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_worker.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: How long a file found by a scan (not an event) must hold still; see edge_worker.watch.
SCAN_SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class WatchConfig:
    folder: Path = Path("/var/lib/edge-worker/incoming")
    """Folder the modality writes DICOM files into."""
    recursive: bool = True
    """Also watch subfolders (modalities often write study/series folders)."""
    settle_seconds: float = 0.5
    """A file must keep its size, mtime, ctime and content fingerprint this long before it is
    read (a file whose last 64 KiB are zeros: at least 2 s, the scan settle time)."""
    skip_settle_when_whole: bool = True
    """Read a file its writer closed at once when its DICOM structure proves it whole (the Pixel
    Data ends at the end of the file, and is not unwritten zeros at its end or in a sampled
    block); false: always wait ``settle_seconds``."""
    incomplete_deadline_seconds: float = 120.0
    """A file still changing after this long is quarantined as incomplete."""
    use_polling: bool = False
    """Poll instead of inotify close-write events (network filesystems)."""


@dataclass(frozen=True)
class QuarantineConfig:
    folder: Path = Path("/var/lib/edge-worker/quarantine")
    """Rejected files are moved here with a ``.reason.json`` beside each."""


@dataclass(frozen=True)
class StateConfig:
    folder: Path = Path("/var/lib/edge-worker/state")
    """Durable state: the outbox of unacknowledged messages."""
    outbox_max_messages: int = 100_000
    """Outbox bound; when full, new messages are refused and health reports it."""


@dataclass(frozen=True)
class PackConfig:
    path: str = ""
    """Primary model pack folder; empty means the demo pack shipped with the worker."""
    extra: tuple[str, ...] = ()
    """More pack folders; each image goes to the pack whose body_parts cover it."""
    bundled: bool = True
    """Also load the other packs shipped with the worker (the chest pack, where present)."""
    default: str = ""
    """Pack name for images whose body part no pack covers; empty rejects them."""
    synonyms: tuple[str, ...] = ("THORAX=CHEST", "LUNG=CHEST", "CXR=CHEST")
    """ALIAS=PART pairs mapping BodyPartExamined values onto the packs' body parts."""


@dataclass(frozen=True)
class InferenceConfig:
    backends: tuple[str, ...] = ("onnxruntime-cpu",)
    """Backend preference, first usable wins: tensorrt, onnxruntime-tensorrt, onnxruntime-cuda,
    onnxruntime-cpu.  Falling back to the CPU after a GPU backend is a health failure."""
    threads: int = 2
    """Intra-op threads per network."""
    precision: str = "fp16"
    """TensorRT precision: fp32, fp16 or int8; refused, never lowered, where the GPU cannot."""
    max_batch: int = 8
    """Largest batch of the TensorRT optimisation profile."""
    batch_files: int = 4
    """Most files, among those already waiting, judged together: each network then runs once
    on all of them (large inputs in smaller runs).  A lone file never waits for company; 1
    turns batching off.  At most max_batch."""


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings; TLS itself is switched on by an ``mqtts://`` URL."""

    ca_file: str = ""
    """CA bundle that signed the broker's certificate; empty uses the system store."""
    cert_file: str = ""
    """Client certificate for certificate authentication."""
    key_file: str = ""
    """Private key of the client certificate."""
    insecure: bool = False
    """Skip the broker hostname check (testing only)."""


@dataclass(frozen=True)
class MqttConfig:
    url: str = "mqtt://127.0.0.1:1883"
    """Broker URL: mqtt://host:port or mqtts://host:port."""
    username: str = ""
    """MQTT user name; empty for anonymous."""
    password_file: str = ""
    """File holding the password, if not given as the systemd credential 'mqtt-password'."""
    client_id: str = ""
    """MQTT client id; empty derives edge-worker-<site>-<station>."""
    topic_prefix: str = "xray"
    """First topic level: <prefix>/<site>/<station>/verdict."""
    keepalive: int = 30
    """Seconds between keepalive pings; the broker publishes the last will after 1.5x."""
    protocol: str = "5"
    """MQTT version, "5" or "3.1.1".  Use 5: under 3.1.1 a broker that denies a publish by
    ACL still acknowledges it, and the verdict is dropped without a sign."""
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class IngestConfig:
    modalities: tuple[str, ...] = ("CR", "DX", "RG", "XA", "RF", "PX", "OT")
    """Modalities accepted as projection radiography."""
    accept_for_processing: bool = False
    """Judge 'For Processing' (raw detector) images too."""
    max_side: int = 8192
    """Largest accepted Rows or Columns."""


@dataclass(frozen=True)
class ServiceConfig:
    metrics_listen: str = "127.0.0.1:9750"
    """host:port of the Prometheus endpoint (/metrics); empty disables it."""
    status_interval_seconds: float = 30.0
    """How often the retained status message is refreshed (also on every health change)."""
    stall_seconds: float = 120.0
    """Files waiting and none judged for this long: the systemd watchdog ping is withheld."""
    stop_timeout_seconds: float = 20.0
    """On SIGTERM: time to finish queued files and deliver messages (keep under TimeoutStopSec)."""


@dataclass(frozen=True)
class VerdictConfig:
    thumbnail: bool = False
    """Add a small PNG of the region of interest to each verdict, for the ward dashboard.  Off by
    default: a radiograph can carry burned-in patient details, which would then leave the box."""
    thumbnail_size: int = 192
    """Longest side of the thumbnail in pixels (32-512)."""


@dataclass(frozen=True)
class Config:
    site: str = "site"
    """Hospital or site name, second topic level."""
    station: str = "station-1"
    """This X-ray station's id, third topic level."""
    watch: WatchConfig = field(default_factory=WatchConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    state: StateConfig = field(default_factory=StateConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)

    def mqtt_password(self) -> str | None:
        """The MQTT password from the systemd credential or the password file, if any."""
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / "mqtt-password").is_file():
            return (Path(creds) / "mqtt-password").read_text(encoding="utf-8").strip()
        if self.mqtt.password_file:
            try:
                return Path(self.mqtt.password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"mqtt.password_file: cannot read it: {exc}") from exc
        return None


def _line_of(text: str, dotted: str) -> int | None:
    """Best-effort line number of a dotted key in the TOML text, for error messages."""
    for number, line in enumerate(text.splitlines(), start=1):
        # The key may itself be a table: [mqqt] or [mqqt.tls].
        if re.match(rf"^\[\s*{re.escape(dotted)}\s*[\].]", line.strip()):
            return number
    *tables, key = dotted.split(".")
    in_table = not tables
    header = "[" + ".".join(tables) + "]"
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            in_table = stripped.split("#")[0].strip() == header
            continue
        if in_table and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    if tables:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip().split("#")[0].strip() == header:
                return number
    return None


def _convert(value: Any, hint: Any, dotted: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise TypeError(f"expected a path string, got {value!r}")
        return Path(value)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return tuple(value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise TypeError(f"expected a table [{dotted}], got {value!r}")
        return _build(hint, value, dotted)
    if isinstance(hint, types.UnionType):
        raise TypeError(f"unsupported union type for {dotted}")
    raise TypeError(f"unsupported type {hint!r}")


class _FieldError(Exception):
    def __init__(self, dotted: str, message: str) -> None:
        super().__init__(message)
        self.dotted = dotted


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else key
            raise _FieldError(dotted, f"unknown key '{dotted}' (allowed here: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        dotted = f"{prefix}.{name}" if prefix else name
        try:
            kwargs[name] = _convert(value, hints[name], dotted)
        except TypeError as exc:
            raise _FieldError(dotted, f"{dotted}: {exc}") from exc
    return cls(**kwargs)


def validate(config: Config) -> Config:
    """Cross-field checks that types alone cannot express; returns ``config`` unchanged."""
    for key in ("site", "station"):
        value = getattr(config, key)
        if not _NAME.match(value):
            raise ConfigError(
                f"{key}: {value!r} must be 1-64 letters, digits, '.', '_' or '-' "
                "(it becomes an MQTT topic level)"
            )
    if not config.inference.backends:
        raise ConfigError("inference.backends: list at least one backend")
    if config.inference.precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"inference.precision: {config.inference.precision!r} is not fp32, fp16 or int8")
    if config.inference.max_batch < 1:
        raise ConfigError("inference.max_batch: must be at least 1")
    if not 1 <= config.inference.batch_files <= config.inference.max_batch:
        raise ConfigError("inference.batch_files: must be 1..max_batch")
    if config.inference.threads < 1:
        raise ConfigError("inference.threads: must be at least 1")
    if config.watch.settle_seconds <= 0:
        raise ConfigError("watch.settle_seconds: must be > 0")
    if config.watch.incomplete_deadline_seconds <= max(config.watch.settle_seconds, SCAN_SETTLE_SECONDS):
        raise ConfigError(
            "watch.incomplete_deadline_seconds: must exceed settle_seconds and the "
            f"{SCAN_SETTLE_SECONDS:.0f} s a file found by a folder scan must hold still"
        )
    if config.service.metrics_listen and not re.match(r"^[^\s:]*:\d+$", config.service.metrics_listen):
        raise ConfigError(f"service.metrics_listen: {config.service.metrics_listen!r} is not host:port")
    if config.service.status_interval_seconds <= 0 or config.service.stall_seconds <= 0:
        raise ConfigError("service: status_interval_seconds and stall_seconds must be > 0")
    if not 32 <= config.verdict.thumbnail_size <= 512:
        raise ConfigError("verdict.thumbnail_size: must be 32..512 pixels")
    if config.state.outbox_max_messages < 10:
        raise ConfigError("state.outbox_max_messages: must be at least 10")
    if config.mqtt.protocol not in ("5", "3.1.1"):
        raise ConfigError(f"mqtt.protocol: {config.mqtt.protocol!r} is not \"5\" or \"3.1.1\"")
    if not re.match(r"^mqtts?://[^/\s:]+(:\d+)?/?$", config.mqtt.url):
        raise ConfigError(f"mqtt.url: {config.mqtt.url!r} is not mqtt://host[:port] or mqtts://host[:port]")
    if bool(config.mqtt.tls.cert_file) != bool(config.mqtt.tls.key_file):
        raise ConfigError("mqtt.tls: cert_file and key_file go together")
    tls = config.mqtt.tls
    if config.mqtt.url.startswith("mqtt://") and (tls.ca_file or tls.cert_file or tls.insecure):
        raise ConfigError("mqtt.tls: TLS settings given but mqtt.url is not mqtts://")
    return config


def parse(text: str, source: str = "<config>") -> Config:
    """Parse TOML text into a validated :class:`Config`; :class:`ConfigError` names key and line."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        config = _build(Config, raw, "")
    except _FieldError as exc:
        line = _line_of(text, exc.dotted)
        where = f"{source}:{line}" if line else source
        raise ConfigError(f"{where}: {exc}") from exc
    return validate(config)


def load(path: Path) -> Config:
    """Read and validate a TOML config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    return parse(text, str(path))


def with_overrides(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``config`` with some fields replaced, e.g. ``watch={"folder": Path(...)}``.

    Top-level scalars go under the key ``top``.
    """
    top = sections.pop("top", {})
    changes: dict[str, Any] = dict(top)
    for name, fields in sections.items():
        changes[name] = dataclasses.replace(getattr(config, name), **fields)
    return validate(dataclasses.replace(config, **changes))
