"""The review store's errors, under the package's one root (:class:`EdgeWorkerError`).

Two kinds: :class:`StoreUnavailable` (the database cannot be reached; nothing was written) and
:class:`Refused` (the store said no to a change, and wrote an audit row saying so).
"""

from __future__ import annotations

from typing import Any

from edge_worker.errors import EdgeWorkerError


class ReviewError(EdgeWorkerError):
    """Root of the review store's errors."""


class StoreUnavailable(ReviewError):
    """The database is down or unreachable; the operation was rolled back entirely."""


class Refused(ReviewError):
    """A change the rules do not allow; an audit row records the refusal."""

    code = "refused"


class InvalidFlags(Refused):
    """A flag list with entries that are not CID 7011 codes or the pack's own codes."""

    code = "invalid_flags"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class UnknownVerdict(Refused):
    """A review names a verdict id the store never received."""

    code = "unknown_verdict"


class NotAllowed(Refused):
    """The user's role does not allow the operation, or the user is unknown."""

    code = "not_allowed"


class RuleViolation(Refused):
    """The tiers' rules forbid it (a tier-two decision on an image not in its queue, bad
    without a flag, an outcome the tier cannot give)."""

    code = "rule_violation"


class Conflict(Refused):
    """The verdict changed since the caller saw it: ``current_version`` and the change that
    made it (``earlier``, a dict of the review or reopening).  Confirm against the new version."""

    code = "conflict"

    def __init__(self, verdict_id: str, seen: int, current_version: int, earlier: dict[str, Any] | None) -> None:
        super().__init__(f"verdict {verdict_id} is at version {current_version}, not {seen}")
        self.verdict_id = verdict_id
        self.seen = seen
        self.current_version = current_version
        self.earlier = earlier


class AuthError(ReviewError):
    """Login or session refused (bad password, unknown, expired or revoked session, bad CSRF)."""
