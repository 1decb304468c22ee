"""``edge-worker check``: prove the config, pack, backend and broker before going live.

The backend check names the distribution that provides the ``onnxruntime`` module and refuses
the CPU build for a GPU backend, or both builds installed together (:mod:`.backends.ort_install`).
Each check prints one line, ``ok`` or ``FAIL`` with the reason; the exit code is 1 if any
check failed.  The config and pack checks are the ones ``run`` makes before it starts
(:mod:`edge_worker.service.preflight`), in the same words: the folders (layout, writable by whoever runs
the check, so run it as the service user; free space for the state), and every configured pack.
It is the only place that opens a broker connection on purpose outside the daemon: a test
message goes to ``<prefix>/<site>/<station>/check``; with ``[pacs]`` enabled it also sends the
PACS a C-ECHO as our AE title.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from edge_worker.errors import EdgeWorkerError
from edge_worker.service.config import Config, load


def _broker(config: Config) -> str:
    """Connect with the daemon's own settings (TLS, credentials, protocol) and publish one
    QoS 1 test message; under MQTT 5 an ACL refusal of that message is reported too."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_worker.service.assembly import mqtt_settings

    s = mqtt_settings(config)
    topic = f"{s.topic_prefix}/{config.site}/{config.station}/check"
    # Not the daemon's client id: a check while the service runs must not disconnect it.
    client_id = f"{s.client_id or f'edge-worker-{config.site}-{config.station}'}-check"
    if s.protocol == "5":
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    else:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    if s.username is not None:
        client.username_pw_set(s.username, s.password)
    if s.tls:
        try:
            client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file)
        except OSError as exc:  # ssl.SSLError is an OSError
            raise EdgeWorkerError(f"mqtt TLS files cannot be loaded: {exc}") from exc
        client.tls_insecure_set(s.tls_insecure)
    answered, acked = threading.Event(), threading.Event()
    refused: list[str] = []
    publish_reasons: list[object] = []

    def on_connect(c: object, u: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            refused.append(str(reason))
        answered.set()

    def on_log(c: object, u: object, level: int, buf: str) -> None:
        # A refused client certificate (TLS 1.3) shows only as a failed read after the handshake.
        if level == paho.MQTT_LOG_ERR and buf.startswith("failed to receive on socket: "):
            refused.append(buf.removeprefix("failed to receive on socket: "))
            answered.set()

    def on_publish(c: object, u: object, mid: int, reason: object, props: object) -> None:
        publish_reasons.append(reason)
        acked.set()

    client.on_connect = on_connect
    client.on_log = on_log
    client.on_publish = on_publish
    try:
        client.connect(s.host, s.port, keepalive=10)
    except OSError as exc:
        raise EdgeWorkerError(f"cannot reach broker {s.url}: {exc}") from exc
    client.loop_start()
    try:
        if not answered.wait(5.0):
            raise EdgeWorkerError(f"broker {s.url}: no answer (CONNACK) within 5 s")
        if refused:
            raise EdgeWorkerError(f"broker {s.url} refused the connection: {refused[0]}")
        client.publish(topic, b'{"check": true}', qos=1)
        if not acked.wait(5.0):
            raise EdgeWorkerError(f"broker {s.url}: no PUBACK for {topic} within 5 s")
        if getattr(publish_reasons[0], "is_failure", False):
            raise EdgeWorkerError(
                f"broker {s.url} refused the test message to {topic}: {publish_reasons[0]} "
                "(check the broker's ACL for this station)"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    return f"published a test message to {topic} over {s.url} (MQTT {s.protocol}) and got its PUBACK"


def _pacs(config: Config) -> str:
    """C-ECHO the configured PACS with our AE title (TLS where ``[pacs] tls`` asks for it)."""
    from edge_worker.service.pacs_desk import echo

    answered, sentence = echo(config)
    if not answered:
        raise EdgeWorkerError(f"PACS: {sentence}")
    return sentence


def run_checks(
    config_path: Path | None,
    backend: str | None = None,
    pack_dir: Path | None = None,
    skip_broker: bool = False,
) -> int:
    """Run every check, print one line each, return 0 when all pass, else 1."""
    from edge_worker.backends import select
    from edge_worker.service.preflight import check_folders, load_packs, signature_note

    failures = 0
    config: Config | None = None

    def step(name: str, fn: Callable[[], str]) -> None:
        nonlocal failures
        try:
            print(f"ok    {name}: {fn()}", flush=True)
        except EdgeWorkerError as exc:
            failures += 1
            print(f"FAIL  {name}: {exc}", flush=True)

    def check_config() -> str:
        nonlocal config
        if config_path is None:
            config = Config()
            return "built-in defaults are valid (give --config to check the folders too)"
        loaded = load(config_path)
        config = loaded
        # The same folder checks as `run`, which creates what is missing: check creates nothing.
        folders = check_folders(loaded, create=False)
        if folders.quarantine_problem:  # run would start, degraded: rejected files would wait
            raise EdgeWorkerError(folders.quarantine_problem)
        return f"{config_path} is valid; folders usable: " + ", ".join(f.describe() for f in folders.reports)

    step("config", check_config)
    cfg = config or Config()

    def check_pack() -> str:
        lines = []
        for key, pack in load_packs(cfg, pack_dir):
            flag = ", NOT FOR CLINICAL USE" if pack.not_for_clinical_use else ""
            signed = signature_note(cfg, pack)
            lines.append(f"{pack.name} {pack.version} ({key}): {len(pack.stages)} stages, "
                         f"sha256 verified, {signed}{flag}")
        if cfg.series.enabled and cfg.series.pack:  # the volume pack of [series] (docs/mri-series.md)
            from edge_worker.service.preflight import load_named

            volume = load_named("series.pack", Path(cfg.series.pack), cfg.pack.trusted_keys)
            if not any(s.task == "tiled_volume" for s in volume.stages):
                raise EdgeWorkerError(f"series.pack: {volume.name} has no tiled_volume stage: it judges no volume")
            lines.append(f"{volume.name} {volume.version} (series.pack): tiled_volume, sha256 verified")
        return "; ".join(lines)

    step("pack", check_pack)

    def check_backend() -> str:
        preference = [backend] if backend else list(cfg.inference.backends)
        chosen = select(preference)
        if chosen.on_cpu and preference[0] != chosen.name:
            raise EdgeWorkerError(
                f"would run on the CPU ({chosen.name}) although {preference[0]} was preferred: "
                + "; ".join(f"{k}: {v}" for k, v in chosen.failures.items())
            )
        if not chosen.name.startswith("onnxruntime"):
            return f"{chosen.name} is usable"
        from edge_worker.backends.ort_install import installed

        # Which wheel owns the onnxruntime module: the CPU and GPU builds share it (ort_install).
        install = installed()
        if install.problem() is not None:
            raise EdgeWorkerError(f"{chosen.name}: {install.problem()}")
        return f"{chosen.name} is usable (the onnxruntime module is from {install.describe()})"

    step("backend", check_backend)
    if not skip_broker and config is not None:
        step("broker", lambda: _broker(cfg))
    if config is not None and cfg.pacs.enabled:
        step("pacs", lambda: _pacs(cfg))
    return 1 if failures else 0
