"""The TensorRT engine cache: an engine is only ever loaded on the box and stack it was built for.

TensorRT engines do not travel: an engine is tied to the GPU model, its compute capability and
the exact TensorRT version ("Version tag does not match" after an upgrade is the classic
failure).  Every engine is therefore stored under a key made of all of those plus the sha256
of the ONNX file it came from, the precision and the batch profile, with a sidecar JSON that
repeats the key and the engine's own sha256.  A lookup that finds an engine built for anything
else reports it as stale instead of handing it to the runtime.

No TensorRT or CUDA import here: the export tool and the worker share this module, and the
cache logic is tested on machines without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class GpuIdentity:
    """What makes a GPU and its software stack distinct for TensorRT."""

    name: str
    compute_capability: str  # "9.0" for Hopper
    tensorrt_version: str

    def slug(self) -> str:
        """A filesystem-safe summary, for folder names and logs."""
        name = "".join(c if c.isalnum() else "-" for c in self.name).strip("-").lower()
        return f"{name}_sm{self.compute_capability.replace('.', '')}_trt{self.tensorrt_version}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on."""

    onnx_sha256: str
    gpu: GpuIdentity
    precision: str
    max_batch: int

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    def digest(self) -> str:
        """A short stable hash of the whole key: the engine's file name."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Lookup:
    """The result of a cache lookup: a usable engine path, or why there is none."""

    path: Path | None
    status: str  # "hit", "miss", "stale", "corrupt"
    detail: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EngineCache:
    """Engines in ``folder/<gpu slug>/<key digest>.engine`` with a ``.json`` sidecar each."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _paths(self, key: EngineKey) -> tuple[Path, Path]:
        base = self.folder / key.gpu.slug() / key.digest()
        return base.with_suffix(".engine"), base.with_suffix(".json")

    def lookup(self, key: EngineKey) -> Lookup:
        """Find the engine for ``key``; a foreign or damaged one is reported, never returned."""
        engine, meta = self._paths(key)
        if engine.is_file() and meta.is_file():
            try:
                record = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                return Lookup(None, "corrupt", f"{meta.name}: unreadable sidecar ({exc})")
            if record.get("key") != key.as_dict():
                return Lookup(None, "stale", f"{engine.name} was built for {record.get('key')}")
            if record.get("engine_sha256") != _sha256(engine):
                return Lookup(None, "corrupt", f"{engine.name}: sha256 differs from its sidecar")
            return Lookup(engine, "hit", f"{engine.name} built {record.get('built_at', '?')}")
        stale = self.foreign_engines(key)
        if stale:
            return Lookup(
                None,
                "stale",
                f"no engine for {key.gpu.slug()}, but engines for this model exist for "
                f"{', '.join(sorted(stale))}: they cannot run here and will not be loaded",
            )
        return Lookup(None, "miss", f"no engine for {key.onnx_sha256[:12]} on {key.gpu.slug()}")

    def foreign_engines(self, key: EngineKey) -> set[str]:
        """GPU/TensorRT slugs that hold an engine for the same ONNX file but not this stack."""
        found: set[str] = set()
        if not self.folder.is_dir():
            return found
        for sidecar in self.folder.glob("*/*.json"):
            if sidecar.parent.name == key.gpu.slug():
                continue
            try:
                record = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if record.get("key", {}).get("onnx_sha256") == key.onnx_sha256:
                found.add(sidecar.parent.name)
        return found

    def store(self, key: EngineKey, engine_bytes: bytes, report: dict[str, object]) -> Path:
        """Write an engine and its sidecar atomically; returns the engine's path."""
        engine, meta = self._paths(key)
        engine.parent.mkdir(parents=True, exist_ok=True)
        for target, data in (
            (engine, engine_bytes),
            (
                meta,
                json.dumps(
                    {
                        "key": key.as_dict(),
                        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
                        **report,
                    },
                    indent=2,
                    sort_keys=True,
                ).encode(),
            ),
        ):
            fd, tmp = tempfile.mkstemp(dir=engine.parent, prefix=f".{target.name}.")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        return engine
