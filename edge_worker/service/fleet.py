"""The station's side of fleet rollouts: commands and the site's canary plan, wired to the rollout.

:class:`FleetDesk` receives what :class:`~edge_worker.publish.listener.Listener` hands on
(:meth:`FleetDesk.topics`), decides with the pure modules :mod:`edge_worker.packs.command`
and :mod:`edge_worker.packs.canary`, and acts only through the existing rollout path: a pack
checked by digest in the store is copied and renamed into the rollout folder, where
:class:`~edge_worker.packs.rollout.RolloutWatcher` verifies, warms up, self-tests and swaps it.
The daemon tells the desk what the rollout did (:meth:`decided`, :meth:`swapped`) and lets it
judge each batch again with the shadow pack while it is a canary (:meth:`shadow_judge`).

Threads: :meth:`handle` runs on the listener's thread, :meth:`decided` on the rollout
thread, :meth:`swapped` and :meth:`shadow_judge` on the judge thread; one lock guards the state,
never held while judging or copying.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_worker.packs import canary
from edge_worker.packs.canary import Plan, Shadow
from edge_worker.packs.command import (
    Ledger,
    Refused,
    check_previous,
    check_store,
    hand_over,
    json_object,
    message_id,
    parse_command,
    result,
)
from edge_worker.packs.rollout import Decision, rollback

log = logging.getLogger(__name__)

#: Send a message through the outbox: (topic, document, retained).
Send = Callable[[str, dict[str, Any], bool], None]


class FleetDesk:
    """Commands and canary plans for one station (see the module docstring)."""

    def __init__(self, *, prefix: str, site: str, station: str, store: Path, rollout: Path, state: Path,
                 max_verdicts: int, send: Send, running_digest: Callable[[], str],
                 restore: Callable[[Any, str], None]) -> None:  # fmt: skip
        """``restore(judge, reason)`` puts the shadow judge back (a canary below its threshold)."""
        self.prefix, self.site, self.station = prefix, site, station
        self.store, self.rollout, self.max_verdicts = store, rollout, max_verdicts
        self.ledger = Ledger(state / "acted-ids")
        self._send, self._running_digest, self._restore = send, running_digest, restore
        self._lock = threading.Lock()
        self.plan: Plan | None = None
        self._peer: dict[str, dict[str, Any]] = {}  # station -> its last rollout/status
        self._candidate: tuple[str, Plan] | None = None  # handed over for a plan: (name, plan)
        self._shadow: Shadow | None = None
        self._shadow_judge: Any = None

    # -- topics ------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.station}"

    def topics(self) -> list[str]:
        """What the listener subscribes: own and site-wide commands, the plan, peers' status."""
        site = f"{self.prefix}/{self.site}"
        return [f"{self.base}/command", f"{site}/command", f"{site}/rollout", f"{site}/+/rollout/status"]

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from the listener; never raises for a bad message (it is answered)."""
        site = f"{self.prefix}/{self.site}"
        if topic in (f"{self.base}/command", f"{site}/command"):
            self._command(topic, payload)
        elif topic == f"{site}/rollout":
            self._plan(payload)
        elif topic.endswith("/rollout/status"):
            self._peer_status(topic[len(site) + 1:].split("/", 1)[0], payload)

    # -- commands ------------------------------------------------------------------------------
    def _answer(self, topic: str, ident: str | None, state: str, reason: str, pack: str = "",
                digest: str = "") -> None:  # fmt: skip
        (log.warning if state == "refused" else log.info)("command %s on %s: %s: %s", ident, topic, state, reason)
        self._send(f"{self.base}/command/result", result(self.station, ident, state, reason, pack, digest, topic),
                   False)  # fmt: skip

    def _command(self, topic: str, payload: bytes) -> None:
        try:
            cmd = parse_command(payload)
        except Refused as exc:
            self._answer(topic, message_id(payload), "refused", f"malformed command: {exc}")
            return
        if cmd.id in self.ledger:
            self._answer(topic, cmd.id, "duplicate", "this command id was acted on before", cmd.pack, cmd.digest)
            return
        try:
            if cmd.action == "install":
                folder = check_store(self.store, cmd.pack, cmd.digest)
            else:
                folder = check_previous(self.rollout, cmd.digest)
            if cmd.digest == self._running_digest():
                raise Refused(f"{cmd.digest[:12]}... is the running pack already")
            if not self.ledger.claim(cmd.id):
                raise Refused("this command id was acted on before")
        except (Refused, OSError) as exc:
            self._answer(topic, cmd.id, "refused", str(exc), cmd.pack, cmd.digest)
            return
        try:
            target = hand_over(folder, self.rollout, cmd.id) if cmd.action == "install" else rollback(self.rollout)
        except Exception as exc:  # noqa: BLE001 - a disk error: reported, the running pack stays
            self._answer(topic, cmd.id, "refused", f"cannot hand the pack to the rollout: {exc}", cmd.pack, cmd.digest)
            return
        self._answer(topic, cmd.id, "handed_over", f"{target.name} renamed into the rollout folder; its "
                     f"verification and swap are reported on {self.base}/pack", cmd.pack, cmd.digest)  # fmt: skip

    # -- the canary plan -------------------------------------------------------------------
    def _status(self, plan: Plan, state: str, reason: str, shadow: Shadow | None = None) -> None:
        log.info("rollout plan %s: %s (%s)", plan.id, state, reason)
        self._send(f"{self.base}/rollout/status", canary.status(self.station, plan, state, reason, shadow), True)

    def _plan(self, payload: bytes) -> None:
        if not payload:
            return  # a retained plan cleared
        try:
            plan = canary.parse_plan(json_object(payload), self.max_verdicts)
        except Refused as exc:
            log.warning("rollout plan refused: %s", exc)
            self._send(f"{self.base}/command/result", result(self.station, message_id(payload), "refused",
                                                             f"malformed rollout plan: {exc}"), False)  # fmt: skip
            return
        if f"plan:{plan.id}" in self.ledger:
            return  # acted on before (the retained plan again after a restart)
        with self._lock:
            self.plan = plan
        if plan.canary == self.station:
            self._install_for(plan, "canary: installed at once, the previous pack judges in shadow")
        else:
            self._status(plan, canary.WAITING, f"waiting for canary {plan.canary}")
            with self._lock:
                peer = self._peer.get(plan.canary)
            if peer is not None:
                self._follow(plan, peer)

    def _peer_status(self, station: str, payload: bytes) -> None:
        if station == self.station or not payload:
            return
        try:
            doc = json_object(payload)
        except Refused:
            return
        with self._lock:
            self._peer[station] = doc
            plan = self.plan
        if plan is not None and station == plan.canary != self.station and f"plan:{plan.id}" not in self.ledger:
            self._follow(plan, doc)

    def _follow(self, plan: Plan, peer: dict[str, Any]) -> None:
        action = canary.follow(plan, peer)
        if action == "install":
            self._install_for(plan, f"canary {plan.canary} agreed on {peer['agreed']}/{peer['verdicts']} images")
        elif action == "hold":
            try:
                self.ledger.claim(f"plan:{plan.id}")
            except OSError as exc:
                log.error("cannot record plan %s: %s", plan.id, exc)
            self._status(plan, canary.HELD, f"canary {plan.canary}: {peer.get('state')}: {peer.get('reason', '')}")

    def _install_for(self, plan: Plan, why: str) -> None:
        try:
            folder = check_store(self.store, plan.pack, plan.digest)
            if plan.digest == self._running_digest():
                raise Refused(f"{plan.digest[:12]}... is the running pack already")
            if not self.ledger.claim(f"plan:{plan.id}"):
                return
            target = hand_over(folder, self.rollout, f"plan-{plan.id}")
        except (Refused, OSError) as exc:
            self._status(plan, canary.REFUSED, str(exc))
            return
        with self._lock:
            self._candidate = (target.name, plan)
        self._status(plan, "installing", f"{why}; {target.name} renamed into the rollout folder")

    # -- what the rollout did -----------------------------------------------------------------
    def decided(self, decision: Decision) -> None:
        """The rollout's decision on a candidate (rollout thread)."""
        with self._lock:
            pending = self._candidate
            if pending is None or pending[0] != decision.name:
                return
            self._candidate = None
            plan = pending[1]
        if decision.state == "refused":
            self._status(plan, canary.REFUSED, decision.reason)
        elif plan.canary != self.station:
            self._status(plan, canary.ACCEPTED, f"installed: {decision.reason}")
        else:  # the judge thread swaps it in before the next image and keeps the old in shadow
            with self._lock:
                shadow = self._shadow
            self._status(plan, canary.SHADOW, f"installed ({decision.reason}); the next {plan.min_verdicts} "
                         "images are judged with both packs", shadow)  # fmt: skip

    def swapped(self, old: Any, new: Any) -> None:
        """The judge thread took a new judge; as a canary, keep the old one in shadow."""
        with self._lock:
            plan = self.plan
            if plan is None or plan.canary != self.station or new.pipeline.pack.digest != plan.digest:
                return
            if self._shadow is not None and self._shadow.plan.id == plan.id:
                return
            self._shadow, self._shadow_judge = Shadow(plan), old
        log.info("rollout plan %s: pack %s judges, %s in shadow", plan.id, plan.digest[:12],
                 old.pipeline.pack.digest[:12])  # fmt: skip

    def shadow_judge(self, files: list[Path], outcomes: list[Any]) -> None:
        """As a canary in shadow: judge the batch's verdicts with the previous pack too and
        count equal decisions; settle when enough are counted (judge thread)."""
        with self._lock:
            shadow, judge = self._shadow, self._shadow_judge
        if shadow is None:
            return
        pairs = [(f, o) for f, o in zip(files, outcomes) if o.kind == "verdict"]
        if not pairs:
            return
        olds = judge.judge_many([(f, None) for f, _ in pairs])
        state = shadow.state
        for (f, new), old in zip(pairs, olds):
            if old.kind == "verdict":
                state = shadow.observe(str(new.payload["decision"]), str(old.payload["decision"]), f.name)
        if state == canary.SHADOW:
            self._status(shadow.plan, state, f"{shadow.verdicts}/{shadow.plan.min_verdicts} images judged by both",
                         shadow)  # fmt: skip
            return
        with self._lock:
            self._shadow, self._shadow_judge = None, None
        figures = f"agreement {shadow.agreed}/{shadow.verdicts} = {shadow.agreement:.3f}"
        if state == canary.ACCEPTED:
            self._status(shadow.plan, state, f"{figures} >= {shadow.plan.min_agreement}", shadow)
            return
        reason = f"{figures} < {shadow.plan.min_agreement}: the previous pack is put back"
        self._restore(judge, f"canary plan {shadow.plan.id}: {reason}")
        self._status(shadow.plan, state, reason, shadow)


def dumps(doc: dict[str, Any]) -> bytes:
    """A message body as the outbox stores it."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
