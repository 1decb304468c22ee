"""A copy of a bundled pack with one stage option changed, resealed: for tests that compare
the worker with and without an inference option on the same real networks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edge_worker.packs.pack import seal_manifest


def with_option(pack: Path, dest: Path, stage: str, key: str, value: object) -> Path:
    """``pack`` copied to ``dest`` with ``key`` set to ``value`` on the stage named (or, for a
    task name, every stage of that task) ``stage``; the manifest resealed.  Returns ``dest``."""
    shutil.copytree(pack, dest)
    path = dest / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["stages"]:
        if stage in (entry["name"], entry["task"]):
            entry[key] = value
    path.write_text(json.dumps(manifest, indent=2))
    seal_manifest(dest)
    return dest
