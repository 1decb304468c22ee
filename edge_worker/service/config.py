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
import itertools
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_worker.errors import ConfigError
from edge_worker.judging.bodypart import parse_keywords, parse_synonyms

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: How long a file found by a scan (not an event) must hold still; see edge_worker.watching.watch.
SCAN_SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class WatchConfig:
    folder: Path = Path("/var/lib/edge-worker/incoming")
    """Folder the modality writes DICOM files into."""
    recursive: bool = True
    """Also watch subfolders (modalities often write study/series folders)."""
    settle_seconds: float = 0.5
    """A file must keep its size, mtime, ctime and content fingerprint this long before it is
    read (a file whose last 64 KiB are zeros: at least 2 s, the scan settle time); 0-3600 s,
    above 0."""
    skip_settle_when_whole: bool = True
    """Read a file its writer closed at once when its DICOM structure proves it whole (the Pixel
    Data ends at the end of the file, and is not unwritten zeros at its end or in a sampled
    block); false: always wait ``settle_seconds``."""
    incomplete_deadline_seconds: float = 120.0
    """A file still changing after this long is quarantined as incomplete (above settle_seconds
    and 2 s, at most a day)."""
    use_polling: bool = False
    """Poll instead of inotify close-write events (network filesystems)."""


@dataclass(frozen=True)
class QuarantineConfig:
    folder: Path = Path("/var/lib/edge-worker/quarantine")
    """Rejected files are moved here with a ``.reason.json`` beside each.  It may sit inside the
    watch folder (the watcher skips it), never be it, nor hold it, nor overlap the state folder."""


@dataclass(frozen=True)
class StateConfig:
    folder: Path = Path("/var/lib/edge-worker/state")
    """Durable state: the outbox of unacknowledged messages and the journal.  Same layout rule
    as the quarantine folder."""
    outbox_max_messages: int = 100_000
    """Outbox bound (10-10,000,000); when full, new messages are refused and health reports it."""
    min_free_mb: int = 64
    """Free space (MiB) the state folder's filesystem must have at start, for the outbox, the
    journal and the optimised-model cache; below it the daemon refuses to start and says so."""


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
    """ALIAS=PART pairs mapping whole BodyPartExamined values onto the packs' body parts."""
    body_part_keywords: tuple[str, ...] = ()
    """WORD=PART pairs added to the built-in keyword table (English and German) that reads the
    body part from BodyPartExamined, the anatomic region, StudyDescription, SeriesDescription
    and ProtocolName, e.g. "KNÖCHEL=ANKLE".  Whole words, case- and accent-insensitive; a
    trailing * matches the start of a word ("SPRUNGG*=ANKLE"); a site's word wins over a
    built-in one spelt the same."""
    trusted_keys: tuple[str, ...] = ()
    """Ed25519 public key files (PEM, from ``edge-export keygen``); when set, every pack must
    carry a ``signature.json`` by one of them over its current digest, else it is refused.
    Empty: signatures are not required."""
    rollout_folder: str = ""
    """Folder watched for new packs renamed in (write under a hidden or ``.tmp`` name first);
    each is verified, warmed up and checked on its test images before it replaces the
    primary pack between two files.  Empty: no rollout."""
    commands: bool = False
    """Take install and rollback commands from ``<prefix>/<site>/<station>/command`` and
    ``<prefix>/<site>/command`` (QoS 1, a persistent session of a second client), and follow the
    site's canary plan on ``<prefix>/<site>/rollout``.  Needs rollout_folder and store_folder;
    the broker's ACL decides who may send them (systemd/mosquitto/acl: the ``rollout`` user)."""
    store_folder: str = ""
    """Local pack store: the folders that commands and plans name (filled by the hospital's own
    file distribution; MQTT carries only the command).  A named folder must have the digest
    the command gives; it is then copied into rollout_folder.  Never the watch or rollout folder."""
    canary_max_verdicts: int = 1000
    """The most live images (1-100,000) a plan may ask this station, as its canary, to judge
    with both packs before it decides; a plan asking more is refused."""


@dataclass(frozen=True)
class InferenceConfig:
    backends: tuple[str, ...] = ("onnxruntime-cpu",)
    """Backend preference, first usable wins: tensorrt, onnxruntime-tensorrt, onnxruntime-cuda,
    onnxruntime-cpu.  Falling back to the CPU after a GPU backend is a health failure."""
    threads: int = 2
    """Intra-op threads per network (1-256)."""
    precision: str = "fp16"
    """TensorRT precision: fp32, fp16 or int8; refused, never lowered, where the GPU cannot."""
    max_batch: int = 8
    """Largest batch of the TensorRT optimisation profile (1-1024)."""
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
    """Seconds between keepalive pings (5-65535); the broker publishes the last will after 1.5x."""
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
    """Largest accepted Rows or Columns (64-65535)."""
    decode_memory_mib: int = 1024
    """Memory one file's read and decode may take (64-65536 MiB).  A file predicted to need more
    is refused (decode_budget_exceeded) before any pixel is allocated; with decode_isolated, the
    decode process is also limited to this much (RLIMIT_DATA) above its idle size.  A 3000x3000
    16-bit radiograph needs about 100 MiB."""
    decode_timeout_seconds: float = 20.0
    """Longest one file's read and decode may take (1-600 s) in the isolated decode process; past
    it the process is killed and the file refused (decode_budget_exceeded)."""
    decode_isolated: bool = True
    """Read and decode each file in a separate, limited worker process (restarted when a file
    kills it), so that a hostile file cannot take the daemon down.  false: decode in the daemon
    (no memory or time bound beyond the prediction)."""


@dataclass(frozen=True)
class ServiceConfig:
    metrics_listen: str = "127.0.0.1:9750"
    """host:port of the Prometheus endpoint (/metrics), port 1-65535; empty disables it."""
    status_interval_seconds: float = 30.0
    """How often the retained status message is refreshed (also on every health change); above
    0, at most a day."""
    stall_seconds: float = 120.0
    """Files waiting and none judged for this long: the systemd watchdog ping is withheld (above
    0, at most a day)."""
    stop_timeout_seconds: float = 20.0
    """On SIGTERM: time to finish queued files and deliver messages (keep under TimeoutStopSec;
    above 0, at most 3600 s)."""


@dataclass(frozen=True)
class VerdictConfig:
    thumbnail: bool = False
    """Add a small PNG of the region of interest to each verdict, for the ward dashboard.  Off by
    default: a radiograph can carry burned-in patient details, which would then leave the box."""
    thumbnail_size: int = 192
    """Longest side of the thumbnail in pixels (32-512)."""
    review_copy: bool = False
    """After each verdict, publish a reduced copy of the image as stored (PNG) on
    ``<prefix>/<site>/<station>/review-copy`` through the outbox, for the review dashboard, and
    keep it in ``<state.folder>/review-copies``.  Off by default, for the thumbnail's reason."""
    review_copy_size: int = 1024
    """Longest side of the review copy in pixels (256-2048); never enlarged."""
    review_copy_max_age_days: float = 30.0
    """Copies kept on the box are deleted after this many days, and always with their source
    file (retention); 0: only with the source (0-3650)."""
    review_copy_max_total_mib: float = 2048.0
    """The copies kept on the box stay under this size, oldest deleted first; 0: no bound."""
    heatmap_overlay: bool = False
    """Add each heatmap's map as a small grey PNG (``heatmaps.<label>.overlay``) covering the
    whole image as stored, for the dashboard to lay over its copy.  Off by default, like the
    thumbnail: it is a picture derived from the patient's image."""
    heatmap_overlay_size: int = 128
    """Longest side of a heatmap overlay in pixels (32-512)."""
    deviation_index_limit: float = 3.0
    """Largest accepted |deviation index| (IEC 62494-1, DICOM (0018,1413), or computed from the
    exposure index and its target): outside it a verdict carries an under- or over-exposure
    reason and goes to review.  0 switches the check off; files without the indices say nothing
    about exposure (0-20)."""


@dataclass(frozen=True)
class DerivedConfig:
    folder: str = ""
    """Where a pack's derived images (``derive`` stages, e.g. bone suppression) are written as
    DICOM Secondary Captures, named by their new SOP Instance UID; the verdict names the file.
    Empty: none are written, and the derive stages do not run.  Never the watch folder nor inside it (the worker would judge its
    own output), nor the quarantine or state folder."""


@dataclass(frozen=True)
class RetentionConfig:
    """What happens to files once judged, and how large the kept ones may grow.

    The default archives with a bound: the watch folder stays empty (a restart's reconcile
    scan stays short and the modality's disk never fills), a judged image stays at hand for a
    month for a physicist or a re-analysis, and the archive never takes more than its bound.
    """

    judged: str = "archive"
    """A judged file is moved to ``archive_folder/YYYY-MM-DD/`` ("archive"), deleted
    ("delete"), or left in the watch folder for another system to clear ("keep")."""
    archive_folder: str = ""
    """Where judged files are archived; empty: ``<state.folder>/archive``.  Outside the watch
    folder, or inside it and then excluded from watching."""
    max_age_days: float = 30.0
    """Archived files older than this (by modification time) are deleted; 0: no age limit."""
    max_total_mib: float = 10_240.0
    """The archive is kept under this size, oldest files deleted first; 0: no size bound."""
    quarantine_max_age_days: float = 90.0
    """Quarantined files (with their reason) older than this are deleted; 0: no age limit."""
    quarantine_max_total_mib: float = 2_048.0
    """The quarantine is kept under this size, oldest first; 0: no size bound."""
    interval_seconds: float = 600.0
    """How often the archive and the quarantine are pruned (the first pass right after start)."""


@dataclass(frozen=True)
class SeriesConfig:
    enabled: bool = False
    """Collect cross-sectional series (edge_worker.watching.series) instead of judging their files
    one by one; false: such files go the radiograph way (and are refused by ingest.modalities)."""
    modalities: tuple[str, ...] = ("MR",)
    """Modalities whose files are collected by Series Instance UID (never also in ingest.modalities)."""
    quiet_seconds: float = 5.0
    """A series is looked at once no file of it came for this long (0.1-3600 s)."""
    max_wait_seconds: float = 300.0
    """A series still short of images this long after its first file is refused (slice_missing
    or series_timeout) and quarantined: never held forever (above quiet_seconds, at most a day)."""
    max_voxels: int = 512 * 512 * 256
    """Largest volume assembled, in voxels (4 bytes each as float32), checked before any pixel
    is read; above it: volume_too_large."""
    pack: str = ""
    """The volume pack (a tiled_volume stage); empty: complete series are refused with
    no_pack_for_body_part (the refusals above still work)."""


@dataclass(frozen=True)
class PacsTlsConfig:
    """DICOM TLS (PS3.15 B.1): on when ``[pacs] tls`` is true."""

    ca_file: str = ""
    """CA bundle that signed the PACS's certificate; empty uses the system store."""
    cert_file: str = ""
    """Our client certificate, for a PACS that requires one."""
    key_file: str = ""
    """Private key of the client certificate."""


@dataclass(frozen=True)
class PacsConfig:
    """Results in the PACS (docs/pacs.md): an SR per verdict, a KOS per confirmed rejection."""

    enabled: bool = False
    """Send DICOM objects to the PACS below (off: nothing leaves the box by DICOM)."""
    ae_title: str = "EDGEWORKER"
    """Our AE title (1-16 characters); the PACS must list it among its modalities."""
    host: str = ""
    """The PACS's host name or address."""
    port: int = 104
    """The PACS's DICOM port (1-65535)."""
    called_ae: str = ""
    """The PACS's AE title."""
    tls: bool = False
    """Use DICOM TLS ([pacs.tls] holds the files)."""
    tls_files: PacsTlsConfig = field(default_factory=PacsTlsConfig)
    timeout_seconds: float = 10.0
    """Connection, association and answer timeout (0.5-600 s)."""
    send_reports: bool = True
    """Send a Structured Report per verdict; false: only confirmed rejections are sent."""
    retry_max_seconds: float = 300.0
    """Longest wait between two tries of an object the PACS did not take (back-off doubles from
    2 s up to this; 2-86400 s)."""
    keep_days: float = 365.0
    """How long the station remembers a judged image's header (for a later confirmation) and
    what it sent (so it never sends it twice); older: a confirmation is refused source_gone
    (1-3650 days)."""
    revoke_code: str = ""
    """The PACS's own code to revoke a rejection, as CODE^SCHEME^Meaning (dcm4chee:
    REVOKE_REJECTION^99DCM4CHEE^Restore rejected Instances); empty: DICOM has no standard one,
    so a withdrawal sends nothing and asks for the image to be restored in the PACS by hand."""


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
    derived: DerivedConfig = field(default_factory=DerivedConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    series: SeriesConfig = field(default_factory=SeriesConfig)
    pacs: PacsConfig = field(default_factory=PacsConfig)

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

    @property
    def archive_folder(self) -> Path:
        """The folder judged files are archived into (``retention.archive_folder`` or its default)."""
        given = self.retention.archive_folder
        return Path(given) if given else self.state.folder / "archive"


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


#: The longest interval or timeout accepted: timers and waits far beyond a day are a typo, and
#: a few (systemd's, paho's) overflow past 2**31 ms.
MAX_SECONDS = 86_400.0


def _validate_rollout(config: Config) -> None:
    """The rollout folder is a folder of its own: never the watched folder or inside it (a
    pack's test images would be judged as radiographs), and needs a pack path to replace."""
    folder = config.pack.rollout_folder
    if not folder:
        return
    rollout, watch = Path(folder).resolve(), config.watch.folder.resolve()
    if rollout == watch or watch in rollout.parents or rollout in watch.parents:
        raise InvalidValue("pack.rollout_folder", f"{folder!r} overlaps watch.folder {str(watch)!r}")


def _validate_commands(config: Config) -> None:
    """Commands need somewhere to take packs from and somewhere to hand them to; the store is
    a folder of its own (a pack copied out of the rollout folder into itself would loop)."""
    p = config.pack
    _in_range("pack.canary_max_verdicts", p.canary_max_verdicts, 1, 100_000)
    if not p.commands:
        return
    if not p.rollout_folder:
        raise InvalidValue("pack.commands", "needs pack.rollout_folder (where commanded packs are renamed in)")
    if not p.store_folder:
        raise InvalidValue("pack.commands", "needs pack.store_folder (where commanded packs are taken from)")
    store = Path(p.store_folder).resolve()
    for key, other in (("watch.folder", config.watch.folder), ("pack.rollout_folder", Path(p.rollout_folder))):
        o = other.resolve()
        if store == o or o in store.parents or store in o.parents:
            raise InvalidValue("pack.store_folder", f"{p.store_folder!r} overlaps {key} {str(o)!r}")


class InvalidValue(ConfigError):
    """A value :func:`validate` refuses; ``key`` is its dotted name (for the line number)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _in_range(key: str, value: float, low: float, high: float, *, above: bool = False) -> None:
    """Raise :class:`InvalidValue` unless ``low <= value <= high`` (``low < value`` with
    ``above``); NaN and infinities are refused too (TOML can spell them)."""
    if math.isfinite(value) and (value > low if above else value >= low) and value <= high:
        return
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    bound = f"> {low:g}" if above else f">= {low:g}"
    raise InvalidValue(key, f"{shown} is out of range: must be {bound} and <= {high:g}")


def _port(key: str, listen: str) -> None:
    port = int(listen.rsplit(":", 1)[1]) if ":" in listen else -1
    if not 1 <= port <= 65535:
        raise InvalidValue(key, f"{listen!r}: the port must be 1..65535")


def _real(folder: Path) -> Path:
    # realpath, not absolute: a symlink must not hide that two folders are one.
    return Path(os.path.realpath(folder))


def _check_layout(config: Config) -> None:
    """Refuse watch, quarantine and state folders that overlap in a way that breaks the daemon.

    Equal folders, the watch folder inside the quarantine or state folder (the watcher ignores
    everything below those, so nothing would be judged), and quarantine and state inside each
    other are refused.  Quarantine or state inside the watch folder is allowed (the quick-start
    layout): the watcher excludes them.
    """
    folders = {
        "watch.folder": _real(config.watch.folder),
        "quarantine.folder": _real(config.quarantine.folder),
        "state.folder": _real(config.state.folder),
    }
    for a, b in itertools.combinations(folders, 2):
        if folders[a] == folders[b]:
            raise InvalidValue(b, f"{b} and {a} are the same folder ({folders[a]}); give each its own")
        for inner, outer in ((a, b), (b, a)):
            if outer == "watch.folder" or not folders[inner].is_relative_to(folders[outer]):
                continue
            why = (
                "the watcher ignores everything below it, so nothing would be judged"
                if inner == "watch.folder"
                else "keep them apart"
            )
            raise InvalidValue(inner, f"{inner} ({folders[inner]}) is inside {outer} ({folders[outer]}): {why}")


def validate(config: Config) -> Config:
    """Cross-field checks and ranges that types alone cannot express; returns ``config``
    unchanged or raises :class:`InvalidValue` (a :class:`ConfigError`) naming the dotted key."""
    for key in ("site", "station"):
        value = getattr(config, key)
        if not _NAME.match(value):
            raise InvalidValue(
                key,
                f"{value!r} must be 1-64 letters, digits, '.', '_' or '-' (it becomes an MQTT topic level)",
            )
    w, st, inf, svc = config.watch, config.state, config.inference, config.service
    if not inf.backends:
        raise InvalidValue("inference.backends", "list at least one backend")
    if inf.precision not in ("fp32", "fp16", "int8"):
        raise InvalidValue("inference.precision", f"{inf.precision!r} is not fp32, fp16 or int8")
    _in_range("inference.max_batch", inf.max_batch, 1, 1024)
    _in_range("inference.batch_files", inf.batch_files, 1, inf.max_batch)
    _in_range("inference.threads", inf.threads, 1, 256)
    _in_range("watch.settle_seconds", w.settle_seconds, 0, 3600, above=True)
    if w.incomplete_deadline_seconds <= max(w.settle_seconds, SCAN_SETTLE_SECONDS):
        raise InvalidValue(
            "watch.incomplete_deadline_seconds",
            f"must exceed settle_seconds and the {SCAN_SETTLE_SECONDS:.0f} s a file found by a "
            "folder scan must hold still",
        )
    _in_range("watch.incomplete_deadline_seconds", w.incomplete_deadline_seconds, 0, MAX_SECONDS)
    if svc.metrics_listen:
        if not re.match(r"^[^\s:]*:\d+$", svc.metrics_listen):
            raise InvalidValue("service.metrics_listen", f"{svc.metrics_listen!r} is not host:port")
        _port("service.metrics_listen", svc.metrics_listen)
    _in_range("service.status_interval_seconds", svc.status_interval_seconds, 0, MAX_SECONDS, above=True)
    _in_range("service.stall_seconds", svc.stall_seconds, 0, MAX_SECONDS, above=True)
    _in_range("service.stop_timeout_seconds", svc.stop_timeout_seconds, 0, 3600, above=True)
    _in_range("verdict.thumbnail_size", config.verdict.thumbnail_size, 32, 512)
    _in_range("verdict.review_copy_size", config.verdict.review_copy_size, 256, 2048)
    _in_range("verdict.review_copy_max_age_days", config.verdict.review_copy_max_age_days, 0, 3650)
    _in_range("verdict.review_copy_max_total_mib", config.verdict.review_copy_max_total_mib, 0, 1 << 20)
    _in_range("verdict.heatmap_overlay_size", config.verdict.heatmap_overlay_size, 32, 512)
    _validate_derived(config)
    _in_range("state.outbox_max_messages", st.outbox_max_messages, 10, 10_000_000)
    _in_range("state.min_free_mb", st.min_free_mb, 1, 1 << 20)
    # Rows and Columns are US (16-bit) in DICOM; below 64 pixels no network input makes sense.
    _in_range("ingest.max_side", config.ingest.max_side, 64, 65535)
    _in_range("verdict.deviation_index_limit", config.verdict.deviation_index_limit, 0, 20)
    _in_range("ingest.decode_memory_mib", config.ingest.decode_memory_mib, 64, 65536)
    _in_range("ingest.decode_timeout_seconds", config.ingest.decode_timeout_seconds, 1, 600)
    parse_synonyms(config.pack.synonyms)
    parse_keywords(config.pack.body_part_keywords)
    _validate_rollout(config)
    _validate_commands(config)
    _validate_retention(config)
    _validate_series(config)
    _validate_pacs(config)
    m = config.mqtt
    if m.protocol not in ("5", "3.1.1"):
        raise InvalidValue("mqtt.protocol", f"{m.protocol!r} is not \"5\" or \"3.1.1\"")
    if not re.match(r"^mqtts?://[^/\s:]+(:\d+)?/?$", m.url):
        raise InvalidValue("mqtt.url", f"{m.url!r} is not mqtt://host[:port] or mqtts://host[:port]")
    if re.search(r":\d+/?$", m.url):
        _port("mqtt.url", m.url.rstrip("/"))
    # Below 5 s the pings themselves are most of the traffic; 0 would switch them off, and with
    # them the detection of a half-open connection.
    _in_range("mqtt.keepalive", m.keepalive, 5, 65535)
    if bool(m.tls.cert_file) != bool(m.tls.key_file):
        raise InvalidValue("mqtt.tls.cert_file", "cert_file and key_file go together")
    tls = m.tls
    if m.url.startswith("mqtt://") and (tls.ca_file or tls.cert_file or tls.insecure):
        raise InvalidValue("mqtt.url", "TLS settings given in [mqtt.tls] but mqtt.url is not mqtts://")
    _check_layout(config)
    return config


def _validate_derived(config: Config) -> None:
    if not config.derived.folder:
        return
    folder, watch = Path(config.derived.folder).absolute(), config.watch.folder.absolute()
    if folder == watch or watch in folder.parents:
        raise ConfigError("derived.folder: must not be the watch folder or inside it (the worker "
                          "would judge its own derived images)")  # fmt: skip
    if folder in (config.quarantine.folder.absolute(), config.state.folder.absolute()):
        raise ConfigError("derived.folder: must not be the quarantine or state folder")


def _validate_series(config: Config) -> None:
    s = config.series
    _in_range("series.quiet_seconds", s.quiet_seconds, 0.1, 3600)
    _in_range("series.max_wait_seconds", s.max_wait_seconds, s.quiet_seconds, MAX_SECONDS, above=True)
    _in_range("series.max_voxels", s.max_voxels, 64**3, 1 << 31)
    both = {m.upper() for m in s.modalities} & {m.upper() for m in config.ingest.modalities}
    if s.enabled and both:
        raise InvalidValue("series.modalities", f"{', '.join(sorted(both))} also in ingest.modalities: "
                           "a file is either a radiograph or part of a series")  # fmt: skip


def _validate_pacs(config: Config) -> None:
    p = config.pacs
    _in_range("pacs.timeout_seconds", p.timeout_seconds, 0.5, 600)
    _in_range("pacs.retry_max_seconds", p.retry_max_seconds, 2, 86_400)
    _in_range("pacs.keep_days", p.keep_days, 1, 3650)
    _in_range("pacs.port", p.port, 1, 65535)
    for key in ("ae_title", "called_ae"):
        value = getattr(p, key)
        # PS3.5 6.2 AE: 16 characters of the default repertoire, no backslash, not all spaces.
        if (value or p.enabled) and not re.match(r"^[ -\[\]-~]{1,16}$", value) or (value and not value.strip()):
            raise InvalidValue(f"pacs.{key}", f"{value!r} is not an AE title (1-16 printable ASCII characters)")
    if p.enabled and not p.host:
        raise InvalidValue("pacs.host", "give the PACS's host when [pacs] is enabled")
    f = p.tls_files
    if bool(f.cert_file) != bool(f.key_file):
        raise InvalidValue("pacs.tls_files.cert_file", "cert_file and key_file go together")
    if not p.tls and (f.ca_file or f.cert_file):
        raise InvalidValue("pacs.tls", "TLS files given in [pacs.tls_files] but pacs.tls is false")
    if p.revoke_code:
        parts = p.revoke_code.split("^")
        if len(parts) != 3 or not all(x.strip() for x in parts):
            raise InvalidValue("pacs.revoke_code", f"{p.revoke_code!r} is not CODE^SCHEME^Meaning")


def _validate_retention(config: Config) -> None:
    r = config.retention
    if r.judged not in ("archive", "delete", "keep"):
        raise ConfigError(f"retention.judged: {r.judged!r} is not \"archive\", \"delete\" or \"keep\"")
    for key in ("max_age_days", "max_total_mib", "quarantine_max_age_days", "quarantine_max_total_mib"):
        if getattr(r, key) < 0:
            raise ConfigError(f"retention.{key}: must be >= 0 (0: no limit)")
    if r.interval_seconds <= 0:
        raise ConfigError("retention.interval_seconds: must be > 0")
    if r.judged == "archive":
        archive, watch = config.archive_folder.absolute(), config.watch.folder.absolute()
        if archive == watch:
            raise ConfigError("retention.archive_folder: must not be the watch folder itself")
        if archive in (config.quarantine.folder.absolute(), config.state.folder.absolute()):
            raise ConfigError("retention.archive_folder: must not be the quarantine or state folder")


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
    try:
        return validate(config)
    except InvalidValue as exc:
        line = _line_of(text, exc.key)
        where = f"{source}:{line}" if line else source
        raise ConfigError(f"{where}: {exc}") from exc


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
