"""Rollout without downtime: a new primary pack renamed into ``[pack] rollout_folder``.

A candidate is a visible folder of the rollout folder (a pack is copied under a hidden or
``.tmp`` name and renamed in; only the rename makes it a candidate).  It must load like any
pack (seal, every sha256, the signature when ``pack.trusted_keys`` is set: a half-copied
folder fails here, naming the missing file), be built and warmed up on this station's
backend, and pass its self-test before it replaces the running primary pack:

* with ``PACK/tests/expected.json`` (``{"FILE.dcm": {"decision": ..., "view": ...}, ...}``,
  files under ``PACK/tests/``): every listed image is judged to a verdict with the expected
  decision and view;
* without it, and when the pack covers ANKLE: :data:`PHANTOMS` phantoms from
  :mod:`edge_worker.phantoms.ankle` are judged by both packs; every one must be a verdict and at
  least :data:`MIN_AGREEMENT` of the decisions must agree with the running pack (a new pack
  may move borderline cases, not overturn the station);
* otherwise it is refused (no evidence it works here).

Accepted, the running pack folder is kept as ``ROLLOUT/previous`` (a copy of ``pack.path``
at the first rollout), the candidate becomes ``ROLLOUT/current`` (used at the next start too), and the
daemon's judge thread swaps in the new router between two batches.  Refused, the candidate is
renamed ``ROLLOUT/.refused-NAME`` and the running pack is untouched.  Either way a retained
message on ``<prefix>/<site>/<station>/pack`` (edge_worker/schema/pack.schema.json) says
``accepted`` or ``refused`` and why.
``edge-worker rollback`` renames ``previous`` back in as a candidate, checked the same way.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_worker.errors import PackError

log = logging.getLogger(__name__)

CURRENT, PREVIOUS = "current", "previous"
#: Phantoms judged by both packs when the candidate has no test images of its own.
PHANTOMS = 8
#: Share of phantom decisions the candidate must share with the running pack.
MIN_AGREEMENT = 0.75
#: How often the rollout folder is looked at (a rename is atomic: no settle time needed).
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Decision:
    """What happened to one candidate: ``state`` is ``accepted`` or ``refused``."""

    state: str
    name: str
    reason: str
    digest: str = ""
    previous_digest: str = ""

    def as_payload(self) -> dict[str, Any]:
        """The retained ``pack`` message."""
        return {"schema": "xray-qc/pack@1", "state": self.state, "pack": self.name, "reason": self.reason,
                "digest": self.digest, "previous_digest": self.previous_digest,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def candidates(folder: Path) -> list[Path]:
    """Visible subfolders of the rollout folder that are neither ``current`` nor ``previous``,
    oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
             and not p.name.endswith(".tmp") and p.name not in (CURRENT, PREVIOUS)]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def installed(folder: str) -> Path | None:
    """``ROLLOUT/current`` when a rollout installed one (it wins over ``pack.path``), else None."""
    current = Path(folder) / CURRENT if folder else None
    return current if current is not None and (current / "manifest.json").is_file() else None


def _verdicts(judge: Any, files: list[Path]) -> list[dict[str, Any]]:
    outcomes = judge.judge_many([(f, None) for f in files])
    bad = [(f.name, o.payload.get("reason") or o.payload.get("error")) for f, o in zip(files, outcomes)
           if o.kind != "verdict"]
    if bad:
        raise PackError(f"self-test image(s) not judged: {bad[:3]}")
    return [o.payload for o in outcomes]


def self_test(pack_root: Path, body_parts: tuple[str, ...], new_judge: Any, old_judge: Any) -> str:
    """Judge the pack's own test images (or phantoms against the running pack).

    Returns a one-line summary; raises :class:`PackError` saying what failed."""
    expected_file = pack_root / "tests" / "expected.json"
    if expected_file.is_file():
        try:
            expected: dict[str, dict[str, str]] = json.loads(expected_file.read_text())
        except (OSError, ValueError) as exc:
            raise PackError(f"tests/expected.json: {exc}") from exc
        files = [pack_root / "tests" / name for name in expected]
        wrong = [
            f"{f.name}: {p['decision']}/{p['view']['label']}"
            for f, p in zip(files, _verdicts(new_judge, files))
            if p["decision"] != expected[f.name].get("decision", p["decision"])
            or p["view"]["label"] != expected[f.name].get("view", p["view"]["label"])
        ]
        if wrong:
            raise PackError(f"self-test: {len(wrong)}/{len(files)} test images differ ({wrong[:3]})")
        return f"{len(files)} test images as expected"
    if "ANKLE" not in body_parts:
        raise PackError("no tests/expected.json and no phantoms for its body parts: nothing proves it")
    from edge_worker.phantoms.ankle import write_phantom

    with tempfile.TemporaryDirectory(prefix="edge-rollout-") as tmp:
        files = [Path(tmp) / f"p{i}.dcm" for i in range(PHANTOMS)]
        for i, f in enumerate(files):
            write_phantom(f, seed=9000 + i, size=512, view="AP" if i % 2 else "LAT")
        new, old = _verdicts(new_judge, files), _verdicts(old_judge, files)
    same = sum(n["decision"] == o["decision"] for n, o in zip(new, old))
    if same < MIN_AGREEMENT * len(files):
        raise PackError(f"self-test: agrees with the running pack on {same}/{len(files)} phantoms "
                        f"(at least {MIN_AGREEMENT:.0%} needed)")
    return f"agrees with the running pack on {same}/{len(files)} phantoms"


class RolloutWatcher:
    """Polls the rollout folder and hands each accepted candidate to ``install``.

    ``prepare(path)`` builds (loads, verifies, warms up) the candidate and returns an object
    with ``judge`` (a RoutedJudge), ``digest`` and ``body_parts``; ``running()`` returns the
    running judge; ``install(prepared)`` swaps it in; ``report(decision)`` publishes it.
    """

    def __init__(self, folder: Path, prepare: Callable[[Path], Any], running: Callable[[], Any],
                 install: Callable[[Any], None], report: Callable[[Decision], None]) -> None:
        self.folder = folder
        self._prepare, self._running, self._install, self._report = prepare, running, install, report
        self._stuck: set[Path] = set()  # refused candidates that could not be renamed aside
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edge-worker/rollout", daemon=True)

    def start(self) -> None:
        """Start polling (at once: a candidate renamed in while stopped is taken now)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and join the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for path in candidates(self.folder):
                if path in self._stuck:
                    continue
                if self._stop.is_set():
                    return
                self._report(self.consider(path))
            self._stop.wait(POLL_SECONDS)

    def consider(self, path: Path) -> Decision:
        """Verify, warm up and self-test one candidate; install it or set it aside."""
        running = self._running()
        old_digest = running.pipeline.pack.digest
        try:
            prepared = self._prepare(path)
            summary = self_test(path, prepared.body_parts, prepared.judge, running)
        except Exception as exc:  # noqa: BLE001 - reported, never swallowed
            # A candidate is untrusted input: ONNX Runtime raises its own exception types
            # (InvalidArgument, Fail...) for a network it cannot run, and any failure of any
            # kind must keep the running pack and be reported, not end the rollout thread.
            aside = self.folder / f".refused-{path.name}-{time.time_ns()}"
            try:
                path.rename(aside)
            except OSError as move:  # it would be tried again at every poll: remember it
                self._stuck.add(path)
                log.error("cannot set refused pack %s aside: %s", path.name, move)
            log.warning("pack %s refused, %s kept: %s", path.name, old_digest[:12], exc)
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return Decision("refused", path.name, f"{path.name}: {why}", previous_digest=old_digest)
        current, previous = self.folder / CURRENT, self.folder / PREVIOUS
        if previous.exists():
            shutil.rmtree(previous)
        if current.exists():
            current.rename(previous)
        else:  # the first rollout: keep a copy of the configured pack for a rollback
            shutil.copytree(running.pipeline.pack.root, previous,
                            ignore=shutil.ignore_patterns(".*", "__pycache__"))
        # The sessions are in memory: the folder can move under the prepared pipeline.
        path.rename(current)
        self._install(prepared)
        log.info("pack %s accepted (%s): %s replaces %s", path.name, summary,
                 prepared.digest[:12], old_digest[:12])
        return Decision("accepted", path.name, summary, prepared.digest, old_digest)


def restore_previous(folder: Path) -> Path:
    """Put ``ROLLOUT/previous`` back as ``current`` without a new check (a canary whose live
    agreement fell short: the previous pack was judging a moment ago and is still loaded).
    The pack it replaces is set aside as ``ROLLOUT/.rolled-back-NAME-NS``; returns that path.
    Raises :class:`PackError` when there is no previous pack."""
    previous, current = folder / PREVIOUS, folder / CURRENT
    if not (previous / "manifest.json").is_file():
        raise PackError(f"nothing to restore: no {previous}")
    aside = folder / f".rolled-back-{time.time_ns()}"
    if current.exists():
        current.rename(aside)
    previous.rename(current)
    return aside


def rollback(folder: Path) -> Path:
    """Rename ``ROLLOUT/previous`` in as a candidate (checked like any); returns its new path.
    Raises :class:`PackError` when there is nothing to roll back to."""
    previous = folder / PREVIOUS
    if not (previous / "manifest.json").is_file():
        raise PackError(f"nothing to roll back to: no {previous}")
    target = folder / f"rollback-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    previous.rename(target)
    return target
