"""Stand-in packs for tests: the demo pack's networks under another manifest, sealed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edge_worker.packs.pack import default_pack_dir, seal_manifest


def pack_as(dest: Path, **manifest_fields: Any) -> Path:
    """Copy the demo pack to ``dest`` with ``manifest_fields`` changed, re-sealed as the export
    tool would (e.g. ``name=``, ``body_parts=``); returns ``dest``."""
    shutil.copytree(default_pack_dir(), dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest.update(manifest_fields)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    seal_manifest(dest)
    return dest
