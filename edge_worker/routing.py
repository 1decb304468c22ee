"""Send each image to the pack for its body part, never to a wrong pack.

A pack declares the body parts it judges (``body_parts`` in its manifest).  An image's DICOM
BodyPartExamined (PS3.3 C.7.3.1, defined terms such as ``CHEST``, ``ANKLE``; sites also use
local words) is upper-cased, mapped through the configured synonyms, and looked up.  An image
no pack covers is refused with ``no_pack_for_body_part`` unless a default pack is configured:
a chest must never come back with an ankle pack's verdict.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_worker.errors import ConfigError, Rejection, RejectReason
from edge_worker.ingest.types import IngestPolicy
from edge_worker.pipeline.runner import Pipeline

if TYPE_CHECKING:
    from edge_worker.process import Outcome


def parse_synonyms(pairs: Iterable[str]) -> dict[str, str]:
    """``["THORAX=CHEST", ...]`` as ``{"THORAX": "CHEST"}``; :class:`ConfigError` if malformed."""
    table: dict[str, str] = {}
    for pair in pairs:
        alias, sep, part = pair.partition("=")
        if not sep or not alias.strip() or not part.strip():
            raise ConfigError(f"pack.synonyms: {pair!r} is not ALIAS=PART")
        table[alias.strip().upper()] = part.strip().upper()
    return table


class Router:
    """The loaded pipelines, indexed by the body parts their packs cover."""

    def __init__(
        self, pipelines: list[Pipeline], synonyms: dict[str, str] | None = None, default: str = ""
    ) -> None:
        if not pipelines:
            raise ConfigError("no model pack loaded")
        self.pipelines = pipelines
        self.synonyms = dict(synonyms or {})
        self._by_part: dict[str, Pipeline] = {}
        for pipeline in pipelines:
            for part in pipeline.pack.body_parts:
                other = self._by_part.get(part)
                if other is not None:
                    raise ConfigError(
                        f"packs {other.pack.name} and {pipeline.pack.name} both cover body part {part}"
                    )
                self._by_part[part] = pipeline
        self.default: Pipeline | None = None
        if default:
            matches = [p for p in pipelines if p.pack.name == default]
            if not matches:
                names = ", ".join(p.pack.name for p in pipelines)
                raise ConfigError(f"pack.default: no loaded pack is named {default!r} (loaded: {names})")
            self.default = matches[0]

    def coverage(self) -> str:
        """``"ankle-demo: ANKLE; chest-views: CHEST"``, for messages."""
        return "; ".join(f"{p.pack.name}: {', '.join(p.pack.body_parts) or '-'}" for p in self.pipelines)

    def route(self, body_part: str) -> Pipeline:
        """The pipeline for ``body_part``; a :class:`Rejection` when no pack covers it."""
        raw = (body_part or "").strip().upper()
        part = self.synonyms.get(raw, raw)
        pipeline = self._by_part.get(part)
        if pipeline is not None:
            return pipeline
        if self.default is not None:
            return self.default
        shown = f"body part {raw!r}" if raw else "no BodyPartExamined in the header"
        raise Rejection(
            RejectReason.NO_PACK_FOR_BODY_PART,
            f"{shown}: no loaded pack covers it ({self.coverage()}); configure pack.synonyms or pack.default",
        )


class RoutedJudge:
    """A judge per loaded pack, each file sent to the one for its body part.

    The header is read first (cheap, no pixels) to choose the pack; an uncovered body part
    becomes a ``no_pack_for_body_part`` error outcome without decoding anything.  ``pipeline``
    is the primary pack's, for status and logs.
    """

    def __init__(
        self,
        router: Router,
        site: str,
        station: str,
        policy: IngestPolicy,
        thumbnail_size: int | None = None,
    ) -> None:
        from edge_worker.process import Judge

        self.router = router
        self.policy = policy
        self._judges = {
            id(p): Judge(p, site, station, policy, thumbnail_size) for p in router.pipelines
        }
        self.pipeline = router.pipelines[0]

    def _judge_for(self, path: Path) -> Any:
        from edge_worker.ingest import read_header

        primary = self._judges[id(self.pipeline)]
        try:
            header = read_header(path, self.policy)
        except Rejection:
            return primary  # it reads the file again and reports the same typed rejection
        return self._judges[id(self.router.route(header.body_part))]

    def __call__(self, path: Path, seen_at: float | None = None) -> Outcome:
        """Judge one file with the pack for its body part."""
        return self.judge_many([(path, seen_at)])[0]

    def judge_many(self, files: Sequence[tuple[Path, float | None]]) -> list[Outcome]:
        """Judge several files, each pack's share in one batch; outcomes in input order."""
        outcomes: list[Outcome | None] = [None] * len(files)
        groups: dict[int, list[int]] = {}
        for i, (path, seen_at) in enumerate(files):
            try:
                judge = self._judge_for(path)
            except Rejection as rejection:
                outcomes[i] = self._uncovered(path, seen_at, rejection)
                continue
            groups.setdefault(id(judge), []).append(i)
        by_id = {id(j): j for j in self._judges.values()}
        for judge_id, indices in groups.items():
            judge = by_id[judge_id]
            batch = [files[i] for i in indices]
            results = judge.judge_many(batch) if hasattr(judge, "judge_many") else [judge(*f) for f in batch]
            for i, outcome in zip(indices, results):
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    def _uncovered(self, path: Path, seen_at: float | None, rejection: Rejection) -> Outcome:
        from edge_worker.names import printable
        from edge_worker.process import Outcome, error_key
        from edge_worker.verdict import build_error

        judge = self._judges[id(self.pipeline)]
        now = time.time()
        # A bounded read: the header was small enough to route, the file may not be.
        key = error_key(path, None)
        payload = build_error(
            site=judge.site, station=judge.station, rejection=rejection, image_key=key,
            sop_instance_uid=None, seen_at=now if seen_at is None else seen_at, made_at=now,
            quarantined_as=None,
        )  # fmt: skip
        payload["file_name"] = printable(path.name)
        return Outcome("error", payload, rejection)
