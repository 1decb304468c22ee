"""How one verdict relates to the earlier ones: ``supersedes`` and ``shares_uid_with``.

Two questions the journal can answer before a verdict is stored, and which a radiographer must
not be left to guess:

* the same file again, with other content (a writer that came back after the verdict): the new
  verdict ``supersedes`` the last verdict sent for that path on the same image;
* another file with an earlier image's SOP Instance UID but other pixels (a modality reusing UIDs,
  a re-processed image): the verdict ``shares_uid_with`` the earlier one, carries the reason
  ``uid_reused`` and goes to review.

Both are written into the payload before it is remembered, so a re-judged image still gets its
stored payload back (same id, same content).  A failing state disk costs only these links.
"""

from __future__ import annotations

import logging
import sqlite3

from edge_worker.judging.decision import Reason, add_reason
from edge_worker.judging.process import Outcome
from edge_worker.publish.journal import Journal

log = logging.getLogger(__name__)


class Lineage:
    """Links verdicts to the earlier messages they replace or share a UID with."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def supersede(self, outcome: Outcome, name: str) -> None:
        """Give a verdict ``supersedes``: the id of the verdict it replaces, else None.

        It replaces the last message sent for the same path (``name``, as the journal names
        it) when that was a verdict on the same image (same SOP Instance UID, or both without
        one) with another id: the file's content changed after its verdict.  A path reused for
        another image, or after an error (whose file went to the quarantine), supersedes nothing.
        """
        if outcome.kind != "verdict":
            return
        outcome.payload["supersedes"] = None
        try:
            last = self.journal.last_message(name)
        except sqlite3.Error as exc:  # a failing state disk: the daemon's send reports it
            log.warning("cannot look up the last message for %s: %s", name, exc)
            return
        if last is None:
            return
        last_id, last_kind, last_uid = last
        same_image = last_uid == outcome.payload.get("sop_instance_uid")
        if last_kind == "verdict" and last_id != outcome.id and same_image:
            outcome.payload["supersedes"] = last_id

    def note_reused_uid(self, outcome: Outcome) -> None:
        """A verdict whose UID came before with other pixels says so, and goes to review.

        Raises :class:`sqlite3.Error` when the journal cannot be read or written (the caller
        keeps the file for a retry, as for any journal write).
        """
        p = outcome.payload
        uid, digest = p.get("sop_instance_uid"), p.get("pixel_sha256")
        if outcome.kind != "verdict" or not uid or not digest:
            return
        earlier = self.journal.other_image(uid, digest)
        # The same file rewritten (a late writer) supersedes its earlier verdict and says so in
        # ``supersedes``; a reused UID is another file with other pixels.
        if earlier is not None and earlier not in (outcome.id, p.get("supersedes")):
            p["shares_uid_with"] = earlier
            add_reason(p, Reason("uid_reused", (
                f"Another, different image had this SOP Instance UID before (verdict {earlier}): "
                "the modality reused a UID or the image was re-processed. Check which image "
                "reached the PACS before relying on either verdict."
            )))  # fmt: skip
        self.journal.record_image(uid, digest, outcome.id)

    def sent(self, outcome: Outcome, name: str) -> None:
        """Record the message as the last one for ``name`` (what a later verdict supersedes)."""
        try:
            self.journal.set_last_message(name, outcome.id, outcome.kind,
                                          outcome.payload.get("sop_instance_uid"))  # fmt: skip
        except sqlite3.Error as exc:
            # The message is queued; only the link a later verdict would name is lost.
            log.warning("cannot record the last message for %s: %s", name, exc)
