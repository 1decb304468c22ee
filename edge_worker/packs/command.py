"""Install and rollback by command: pure parsing, the pack store, and the ledger of acted ids.

A command (``xray-qc/command@1``, edge_worker/schema/command.schema.json) arrives on
``<prefix>/<site>/<station>/command`` or ``<prefix>/<site>/command`` (site-wide).  It names
content, not a folder: ``pack`` is a folder of the local pack store (``[pack] store_folder``,
filled by the hospital's own file distribution; MQTT carries only the command) and ``digest``
the :func:`~edge_worker.packs.pack.pack_digest` that folder must have.  The digest is checked
first, before the pack is parsed or copied: a store folder whose content differs is refused,
whatever its name.  An accepted command copies the folder under a hidden name into
``[pack] rollout_folder`` and renames it in, so :mod:`edge_worker.packs.rollout` verifies,
warms up, self-tests, swaps and reports it as it does any candidate.

Each command id is acted on once: :class:`Ledger` keeps the ids in the state folder, so a
command redelivered by the broker's persistent session (or re-sent by a confused operator) is
answered ``duplicate`` and nothing is installed twice.  Every refusal is a value
(:class:`Refused`), answered on ``<prefix>/<site>/<station>/command/result``
(edge_worker/schema/command-result.schema.json), never an exception out of the listener.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_worker.packs.pack import pack_digest
from edge_worker.packs.rollout import PREVIOUS

SCHEMA = "xray-qc/command@1"
RESULT_SCHEMA = "xray-qc/command-result@1"
ACTIONS = ("install", "rollback")
#: Store folder names: one path level, no hidden or temporary names (those are copies in flight).
PACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
#: The largest command accepted; a command is a few hundred bytes.
MAX_BYTES = 16_384


class Refused(Exception):
    """A command (or plan) that is not acted on; ``str()`` is the reason sent back."""


@dataclass(frozen=True)
class Command:
    """One well-formed command."""

    id: str
    action: str
    pack: str
    digest: str
    issued_by: str
    issued_at: str


def _text(doc: dict[str, Any], key: str, pattern: re.Pattern[str] | None = None, required: bool = True) -> str:
    value = doc.get(key, "" if not required else None)
    if not isinstance(value, str) or (required and not value):
        raise Refused(f"{key}: expected a non-empty string, got {value!r}"[:200])
    if pattern is not None and value and not pattern.match(value):
        raise Refused(f"{key}: {value!r} is not allowed here"[:200])
    return value


def json_object(raw: bytes) -> dict[str, Any]:
    """Decode a message body as one JSON object; raises :class:`Refused` saying why not."""
    if len(raw) > MAX_BYTES:
        raise Refused(f"{len(raw)} bytes: a command is at most {MAX_BYTES}")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(f"not JSON: {exc}"[:200]) from exc
    if not isinstance(doc, dict):
        raise Refused(f"expected a JSON object, got {type(doc).__name__}")
    return doc


def parse_command(raw: bytes) -> Command:
    """A :class:`Command` from a message body; raises :class:`Refused` with the first problem.

    ``pack`` is required for ``install``; for ``rollback`` it may be empty (the digest then
    names the pack before the last rollout, ``ROLLOUT/previous``)."""
    doc = json_object(raw)
    if doc.get("schema") != SCHEMA:
        raise Refused(f"schema: expected {SCHEMA!r}, got {doc.get('schema')!r}"[:200])
    ident = _text(doc, "id", ID)
    action = _text(doc, "action")
    if action not in ACTIONS:
        raise Refused(f"action: {action!r} is not one of {', '.join(ACTIONS)}"[:200])
    pack = _text(doc, "pack", PACK_NAME, required=action == "install")
    digest = _text(doc, "digest", DIGEST)
    known = {"schema", "id", "action", "pack", "digest", "issued_by", "issued_at"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise Refused(f"unknown field(s): {', '.join(unknown)}"[:200])
    return Command(ident, action, pack, digest, _text(doc, "issued_by", required=False)[:200],
                   _text(doc, "issued_at", required=False)[:64])  # fmt: skip


def message_id(raw: bytes) -> str | None:
    """The ``id`` of a refused message when it has a usable one (for the result), else None."""
    try:
        value = json.loads(raw.decode("utf-8")).get("id")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and ID.match(value) else None


def check_store(store: Path, name: str, digest: str) -> Path:
    """The store folder ``name`` when its content digest is ``digest``; raises :class:`Refused`.

    Nothing but the digest is looked at: the pack is parsed and verified later, by the rollout."""
    folder = store / name
    if not folder.is_dir():
        raise Refused(f"pack {name!r}: no such folder in the pack store")
    try:
        actual = pack_digest(folder, {})
    except OSError as exc:
        raise Refused(f"pack {name!r}: cannot be read: {exc}"[:200]) from exc
    if actual != digest:
        raise Refused(f"pack {name!r}: its digest is {actual[:12]}..., the command names {digest[:12]}...: "
                      "a different pack, refused")  # fmt: skip
    return folder


def check_previous(rollout: Path, digest: str) -> Path:
    """``ROLLOUT/previous`` when its digest is ``digest`` (a rollback names content too)."""
    previous = rollout / PREVIOUS
    if not (previous / "manifest.json").is_file():
        raise Refused("rollback: there is no previous pack to go back to")
    actual = pack_digest(previous, {})
    if actual != digest:
        raise Refused(f"rollback: the previous pack is {actual[:12]}..., the command names {digest[:12]}...")
    return previous


def hand_over(folder: Path, rollout: Path, tag: str) -> Path:
    """Copy ``folder`` into the rollout folder under a hidden name, then rename it in.

    Returns the candidate's path (``NAME-TAG``); only the rename makes it a candidate."""
    rollout.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", tag)[:40]
    target = rollout / f"{folder.name}-{safe}"
    hidden = rollout / f".{target.name}.tmp"
    if hidden.exists():
        shutil.rmtree(hidden)
    shutil.copytree(folder, hidden, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    os.replace(hidden, target)
    return target


def result(station: str, ident: str | None, state: str, reason: str, pack: str = "", digest: str = "",
           topic: str = "") -> dict[str, Any]:  # fmt: skip
    """The ``command/result`` message: ``state`` is handed_over, refused or duplicate."""
    return {"schema": RESULT_SCHEMA, "id": ident, "station": station, "state": state, "reason": reason,
            "pack": pack, "digest": digest, "topic": topic,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip


class Ledger:
    """Ids acted on, one per line in a file of the state folder (appended, fsynced).

    ``claim(id)`` is True the first time an id is seen, ever, and False afterwards."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._ids = set(path.read_text(encoding="utf-8").split())
        except FileNotFoundError:
            self._ids = set()

    def __contains__(self, ident: str) -> bool:
        with self._lock:
            return ident in self._ids

    def claim(self, ident: str) -> bool:
        """Record ``ident``; False when it was recorded before.  Raises OSError when the file
        cannot be written (then nothing is acted on: acting twice is worse than not at all)."""
        with self._lock:
            if ident in self._ids:
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(ident + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._ids.add(ident)
            return True
