"""``edge-worker check``: prove the config, pack, backend and broker before going live.

Each check prints one line, ``ok`` or ``FAIL`` with the reason; the exit code is 1 if any
check failed.  It is the only place that opens a broker connection on purpose outside the
daemon: a test message goes to ``<prefix>/<site>/<station>/check``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from edge_worker.config import Config, load
from edge_worker.errors import EdgeWorkerError


def _broker(config: Config) -> str:
    import paho.mqtt.client as mqtt

    from edge_worker.publish.mqtt import MqttSettings

    settings = MqttSettings.from_url(config.mqtt.url)
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-worker-check-{config.station}"
    )
    if config.mqtt.username:
        client.username_pw_set(config.mqtt.username, config.mqtt_password())
    if settings.tls:
        client.tls_set(
            ca_certs=config.mqtt.tls.ca_file or None,
            certfile=config.mqtt.tls.cert_file or None,
            keyfile=config.mqtt.tls.key_file or None,
        )
        client.tls_insecure_set(config.mqtt.tls.insecure)
    acked = threading.Event()
    refused: list[str] = []

    def on_connect(c: mqtt.Client, u: object, f: object, reason: object, p: object) -> None:
        if getattr(reason, "is_failure", False):
            refused.append(str(reason))

    client.on_connect = on_connect
    client.on_publish = lambda *a: acked.set()
    try:
        client.connect(settings.host, settings.port, keepalive=10)
    except OSError as exc:
        raise EdgeWorkerError(f"cannot reach broker {config.mqtt.url}: {exc}") from exc
    client.loop_start()
    try:
        topic = f"{config.mqtt.topic_prefix}/{config.site}/{config.station}/check"
        client.publish(topic, b'{"check": true}', qos=1)
        if not acked.wait(5.0):
            why = f"connection refused: {refused[0]}" if refused else "no PUBACK within 5 s"
            raise EdgeWorkerError(f"broker {config.mqtt.url}: {why}")
    finally:
        client.disconnect()
        client.loop_stop()
    return f"published a test message to {topic} and got its PUBACK"


def run_checks(
    config_path: Path | None,
    backend: str | None = None,
    pack_dir: Path | None = None,
    skip_broker: bool = False,
) -> int:
    """Run every check, print one line each, return 0 when all pass, else 1."""
    from edge_worker.backends import select
    from edge_worker.pack import load_pack

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
        config = load(config_path) if config_path else Config()
        return f"{config_path or 'built-in defaults'} is valid"

    step("config", check_config)
    cfg = config or Config()
    pack_path = pack_dir or (Path(cfg.pack.path) if cfg.pack.path else None)

    def check_pack() -> str:
        pack = load_pack(pack_path)
        flag = ", NOT FOR CLINICAL USE" if pack.not_for_clinical_use else ""
        return f"{pack.name} {pack.version}: {len(pack.stages)} stages, sha256 verified{flag}"

    step("pack", check_pack)

    def check_backend() -> str:
        preference = [backend] if backend else list(cfg.inference.backends)
        chosen = select(preference)
        if chosen.on_cpu and preference[0] != chosen.name:
            raise EdgeWorkerError(
                f"would run on the CPU ({chosen.name}) although {preference[0]} was preferred: "
                + "; ".join(f"{k}: {v}" for k, v in chosen.failures.items())
            )
        return f"{chosen.name} is usable"

    step("backend", check_backend)
    if not skip_broker and config is not None:
        step("broker", lambda: _broker(cfg))
    return 1 if failures else 0
