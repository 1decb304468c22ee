"""Building a station's parts from its config: pipelines, the router, ingest and broker settings.

The daemon (:mod:`edge_worker.service.daemon`), ``edge-worker check`` and the demo build their
parts here, so each of them loads a pack, picks a backend and reads the broker settings alike.
"""

from __future__ import annotations

from pathlib import Path

from edge_worker.backends import LoadOptions, select
from edge_worker.errors import PackError
from edge_worker.ingest.types import IngestPolicy
from edge_worker.judging.bodypart import parse_keywords
from edge_worker.judging.decision import Rules
from edge_worker.judging.routing import Router, parse_synonyms
from edge_worker.pipeline.runner import Pipeline
from edge_worker.publish.mqtt import MqttSettings
from edge_worker.service import preflight
from edge_worker.service.config import Config


def build_router(config: Config, primary: Pipeline) -> Router:
    """The primary pipeline plus one per extra (and bundled) pack, routed by body part."""
    others = preflight.pack_sources(config, primary.pack.root)[1:]
    pipelines = [primary] + [build_pipeline(config, d, key) for key, d in others]
    for p in pipelines:
        if not p.pack.judges_radiographs:
            raise PackError(f"{p.pack.root}: {p.pack.name} is a volume pack (tiled_volume, no view "
                            "stage): it judges MR series; name it as [series] pack")  # fmt: skip
    return Router(pipelines, parse_synonyms(config.pack.synonyms), config.pack.default,
                  parse_keywords(config.pack.body_part_keywords))  # fmt: skip


def build_pipeline(config: Config, pack_dir: Path | None = None, key: str = "pack.path") -> Pipeline:
    """Load and verify a pack (default: the configured primary; ``key`` names it in errors),
    select the backend, create and warm every session."""
    root = pack_dir or preflight.pack_sources(config)[0][1]
    pack = preflight.load_named(key, root, config.pack.trusted_keys)
    backend = select(list(config.inference.backends))
    options = LoadOptions(
        threads=config.inference.threads,
        cache_dir=config.state.folder / "engines",
        precision=config.inference.precision,
        max_batch=config.inference.max_batch,
    )
    rules = Rules(deviation_index_limit=config.verdict.deviation_index_limit)
    pipeline = Pipeline(pack, backend, options, rules)
    pipeline.warm_up()
    return pipeline


def backend_problem(config: Config, pipeline: Pipeline) -> str | None:
    """Why the running backend is not what was asked for, or ``None``.

    Running on the CPU when a GPU backend was preferred is a health failure: the box still
    judges images, but too slowly, and IT must know.
    """
    wanted = config.inference.backends[0]
    chosen = pipeline.backend
    if chosen.name == wanted:
        return None
    failures = "; ".join(f"{k}: {v}" for k, v in chosen.failures.items())
    where = "on the CPU " if chosen.on_cpu else ""
    return f"running {where}with {chosen.name} although {wanted} was preferred ({failures})"


def ingest_policy(config: Config) -> IngestPolicy:
    """The ingest limits from the config."""
    return IngestPolicy(
        modalities=tuple(m.upper() for m in config.ingest.modalities),
        accept_for_processing=config.ingest.accept_for_processing,
        max_side=config.ingest.max_side,
        decode_memory_mib=config.ingest.decode_memory_mib,
    )


def mqtt_settings(config: Config) -> MqttSettings:
    """Broker settings from the config, with the password from the credential store."""
    m = config.mqtt
    return MqttSettings.from_url(
        m.url,
        username=m.username or None,
        password=config.mqtt_password(),
        client_id=m.client_id or f"edge-worker-{config.site}-{config.station}",
        topic_prefix=m.topic_prefix,
        keepalive=m.keepalive,
        protocol=m.protocol,
        ca_file=m.tls.ca_file or None,
        cert_file=m.tls.cert_file or None,
        key_file=m.tls.key_file or None,
        tls_insecure=m.tls.insecure,
    )
