"""A canary plan for one site: one station tries a pack on live images, the others wait.

The plan is retained on ``<prefix>/<site>/rollout`` (``xray-qc/rollout-plan@1``,
edge_worker/schema/rollout-plan.schema.json).  Each station reads it and takes one role:

* the **canary** installs the pack at once (through the command path: store, digest, rollout)
  and keeps the pack it replaced judging in shadow.  :class:`Shadow` counts, over its next
  ``min_verdicts`` live verdicts, how many decisions the two packs share.  Then it settles:
  ``accepted`` when the share is at least ``min_agreement``, else ``rolled_back`` (the daemon
  puts the shadow pack back);
* every **follower** waits for the canary's retained ``rollout/status``
  (``xray-qc/rollout-status@1``) of the same plan and digest, and :func:`follow` says
  ``install`` only for ``accepted`` with enough verdicts and agreement, ``hold`` for a canary
  that rolled back or refused the pack, and ``wait`` otherwise.

Pure: no MQTT, no files, no clock but the one passed in.  The daemon does the wiring.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from edge_worker.packs.command import DIGEST, ID, PACK_NAME, Refused

PLAN_SCHEMA = "xray-qc/rollout-plan@1"
STATUS_SCHEMA = "xray-qc/rollout-status@1"
_STATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Canary states; the last three are final.
WAITING, SHADOW, ACCEPTED, ROLLED_BACK, REFUSED, HELD = (
    "waiting", "shadow", "accepted", "rolled_back", "refused", "held")  # fmt: skip
FINAL = frozenset({ACCEPTED, ROLLED_BACK, REFUSED, HELD})


@dataclass(frozen=True)
class Plan:
    """One rollout plan of a site."""

    id: str
    pack: str
    digest: str
    canary: str
    min_verdicts: int
    min_agreement: float


def parse_plan(doc: dict[str, Any], max_verdicts: int) -> Plan:
    """A :class:`Plan` from a decoded message; raises :class:`Refused` with the first problem.

    ``max_verdicts`` is the station's own bound on ``min_verdicts`` (``[pack]
    canary_max_verdicts``): a canary judges every image twice for that long."""
    if doc.get("schema") != PLAN_SCHEMA:
        raise Refused(f"schema: expected {PLAN_SCHEMA!r}, got {doc.get('schema')!r}"[:200])
    unknown = sorted(set(doc) - {"schema", "id", "pack", "digest", "canary", "min_verdicts",
                                 "min_agreement", "issued_by", "issued_at"})  # fmt: skip
    if unknown:
        raise Refused(f"unknown field(s): {', '.join(unknown)}"[:200])
    for key, pattern in (("id", ID), ("pack", PACK_NAME), ("digest", DIGEST), ("canary", _STATION)):
        value = doc.get(key)
        if not isinstance(value, str) or not pattern.match(value):
            raise Refused(f"{key}: {value!r} is not allowed here"[:200])
    n = doc.get("min_verdicts")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_verdicts:
        raise Refused(f"min_verdicts: {n!r} must be an integer 1..{max_verdicts}"[:200])
    share = doc.get("min_agreement")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not (
        math.isfinite(share) and 0.0 < share <= 1.0
    ):
        raise Refused(f"min_agreement: {share!r} must be a number in (0, 1]"[:200])
    return Plan(doc["id"], doc["pack"], doc["digest"], doc["canary"], n, float(share))


@dataclass
class Shadow:
    """The canary's count of equal decisions between the new pack and the one it replaced."""

    plan: Plan
    verdicts: int = 0
    agreed: int = 0
    state: str = SHADOW
    differing: list[str] = field(default_factory=list)  # the first few images that differ

    def observe(self, new_decision: str, old_decision: str, image: str = "") -> str:
        """Count one live image both packs judged to a verdict; returns the state after it
        (:data:`SHADOW` until ``min_verdicts`` are counted, then accepted or rolled_back)."""
        if self.state != SHADOW:
            return self.state
        self.verdicts += 1
        if new_decision == old_decision:
            self.agreed += 1
        elif len(self.differing) < 5:
            self.differing.append(f"{image}: {old_decision} -> {new_decision}")
        if self.verdicts >= self.plan.min_verdicts:
            self.state = ACCEPTED if self.agreement >= self.plan.min_agreement else ROLLED_BACK
        return self.state

    @property
    def agreement(self) -> float:
        """Share of equal decisions so far (0 before the first)."""
        return self.agreed / self.verdicts if self.verdicts else 0.0


def status(station: str, plan: Plan, state: str, reason: str, shadow: Shadow | None = None,
           now: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The retained ``<prefix>/<site>/<station>/rollout/status`` message."""
    return {
        "schema": STATUS_SCHEMA, "plan": plan.id, "station": station,
        "role": "canary" if station == plan.canary else "follower",
        "state": state, "reason": reason, "pack": plan.pack, "digest": plan.digest,
        "verdicts": shadow.verdicts if shadow else 0, "agreed": shadow.agreed if shadow else 0,
        "agreement": round(shadow.agreement, 6) if shadow else 0.0,
        "min_verdicts": plan.min_verdicts, "min_agreement": plan.min_agreement,
        "differing": list(shadow.differing) if shadow else [],
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now)),
    }  # fmt: skip


def follow(plan: Plan, canary_status: dict[str, Any]) -> str:
    """What a follower does on the canary's status: ``install``, ``hold`` or ``wait``.

    Only a status of this very plan and digest, from the canary itself, counts; ``install``
    needs ``accepted`` with at least ``min_verdicts`` verdicts and ``min_agreement`` agreement,
    re-checked here rather than trusted from the canary's word "accepted"."""
    if (canary_status.get("schema") != STATUS_SCHEMA or canary_status.get("plan") != plan.id
            or canary_status.get("digest") != plan.digest or canary_status.get("station") != plan.canary):
        return "wait"
    state = canary_status.get("state")
    if state in (ROLLED_BACK, REFUSED):
        return "hold"
    if state != ACCEPTED:
        return "wait"
    verdicts, agreed = canary_status.get("verdicts"), canary_status.get("agreed")
    if not isinstance(verdicts, int) or not isinstance(agreed, int) or verdicts < plan.min_verdicts:
        return "wait"
    return "install" if agreed / verdicts >= plan.min_agreement else "hold"
