"""The review copies the dashboard received: the reduced image each verdict was about.

The worker publishes one ``xray-qc/review-copy@1`` message per verdict when ``[verdict]
review_copy`` is on (see ``docs/review-copy.md``).  :class:`ReviewCopies` checks it (schema,
sha256, size, an image that decodes to the stated size), keeps it in ``review_copies`` beside
the review store's tables, gives it back to the review pages and the export, and prunes by age
and total size, oldest first.

A copy may arrive before its verdict (two topics, no order between them), so it is kept
without one; pruning removes copies whose verdict never came like any other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import cv2
import numpy as np
import sqlalchemy as sa

from edge_worker.publish.review_copy import InvalidReviewCopy, ParsedReviewCopy, parse_review_copy
from edge_worker.subscribers.review import db
from edge_worker.subscribers.review.store import ReviewStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewCopy:
    """One stored copy.  ``scale``: copy pixels per stored pixel, so a verdict's ROI box (in the
    stored image's pixels) lands on the copy at ``box * scale``."""

    data: bytes
    media_type: str
    width: int
    height: int
    scale: float


def _decodes_to_its_size(copy: ParsedReviewCopy) -> str | None:
    """Why the bytes are not an 8-bit image of the stated size, or None when they are."""
    image = cv2.imdecode(np.frombuffer(copy.data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return f"{copy.media_type} data does not decode"
    if image.dtype != np.uint8:
        return f"image is {image.dtype}, not 8-bit"
    if image.shape[:2] != (copy.height, copy.width):
        return f"image is {image.shape[1]}x{image.shape[0]}, the payload says {copy.width}x{copy.height}"
    return None


class ReviewCopies:
    """Review copies kept in ``store``'s database, bounded by ``max_age_days`` and ``max_bytes``.

    Raises ValueError for bounds that are not positive.  Database loss raises the store's
    :class:`~edge_worker.subscribers.review.errors.StoreUnavailable`.
    """

    def __init__(self, store: ReviewStore, *, max_age_days: float, max_bytes: int) -> None:
        if not max_age_days > 0 or max_bytes <= 0:
            raise ValueError(
                f"review copies need positive bounds, got {max_age_days} days and {max_bytes} bytes"
            )
        self.store = store
        self.max_age_days = float(max_age_days)
        self.max_bytes = int(max_bytes)

    def accept(self, payload: bytes) -> str | None:
        """Keep one received review-copy payload; returns its verdict id, or None if refused
        (the reason is logged).  A redelivery of a kept copy returns the id and changes nothing;
        a different copy for a verdict that has one is refused (the first one stays)."""
        try:
            copy = parse_review_copy(payload)
        except InvalidReviewCopy as exc:
            log.warning("review copy refused: %s", exc)
            return None
        if len(copy.data) > self.max_bytes:
            log.warning("review copy for %s refused: %d bytes is over the store's %d",
                        copy.verdict_id, len(copy.data), self.max_bytes)  # fmt: skip
            return None
        why = _decodes_to_its_size(copy)
        if why is not None:
            log.warning("review copy for %s refused: %s", copy.verdict_id, why)
            return None
        table = db.copies

        def run(conn: sa.Connection) -> str | None:
            kept = conn.execute(
                sa.select(table.c.sha256).where(table.c.verdict_id == copy.verdict_id)
            ).first()
            if kept is None:
                conn.execute(sa.insert(table).values(
                    verdict_id=copy.verdict_id, media_type=copy.media_type, width=copy.width,
                    height=copy.height, scale=copy.scale, sha256=copy.sha256,
                    bytes=len(copy.data), data=copy.data, received_at=self.store.now(),
                ))  # fmt: skip
                return copy.verdict_id
            return copy.verdict_id if kept.sha256 == copy.sha256 else None

        try:
            result = self.store.transaction(run)
        except sa.exc.IntegrityError:
            # Two receivers raced on the same id: the other one stored it; compare with that.
            result = self.store.transaction(run)
        if result is None:
            log.warning(
                "review copy for %s refused: a different copy is already kept", copy.verdict_id
            )
        return result

    def get(self, verdict_id: str) -> ReviewCopy | None:
        """The copy for ``verdict_id``, or None when none was received (or it was pruned)."""
        table = db.copies
        row = self.store.transaction(lambda c: c.execute(
            sa.select(table.c.data, table.c.media_type, table.c.width, table.c.height, table.c.scale)
            .where(table.c.verdict_id == verdict_id)
        ).first())  # fmt: skip
        if row is None:
            return None
        return ReviewCopy(bytes(row.data), row.media_type, row.width, row.height, float(row.scale))

    def prune(self) -> int:
        """Delete copies older than ``max_age_days``, then the oldest until the rest fit in
        ``max_bytes``; returns how many rows were deleted."""
        table = db.copies
        cutoff = self.store.now() - timedelta(days=self.max_age_days)

        def run(conn: sa.Connection) -> int:
            deleted = conn.execute(sa.delete(table).where(table.c.received_at < cutoff)).rowcount
            rows = conn.execute(
                sa.select(table.c.verdict_id, table.c.bytes)
                .order_by(table.c.received_at.desc(), table.c.verdict_id.desc())
            ).all()  # fmt: skip
            total, over = 0, []
            for row in rows:  # newest first: keep while they fit
                total += row.bytes
                if total > self.max_bytes:
                    over.append(row.verdict_id)
            for start in range(0, len(over), 500):
                deleted += conn.execute(
                    sa.delete(table).where(table.c.verdict_id.in_(over[start : start + 500]))
                ).rowcount
            return int(deleted)

        return self.store.transaction(run)
