"""Send each image to the pack for its body part, never to a wrong pack.

A pack declares the body parts it judges (``body_parts`` in its manifest).  The body part of
an image is read from its header by :mod:`edge_worker.judging.bodypart` (BodyPartExamined through the
site's synonyms, then the anatomic region code and keywords in the descriptions).  An image
no pack covers is refused with ``no_pack_for_body_part``, naming every field looked at,
unless a default pack is configured: a chest must never come back with an ankle pack's
verdict.  Every verdict says in its ``route`` object which field decided, and any conflict.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_worker.errors import ConfigError, Rejection, RejectReason
from edge_worker.ingest.types import Header, IngestPolicy
from edge_worker.judging.bodypart import (
    KeywordTable,
    Route,
    body_part_of,
    keyword_table,
    parse_synonyms,
    route_fields,
)
from edge_worker.judging.decision import Reason, add_reason
from edge_worker.pipeline.runner import Pipeline

__all__ = ["RoutedJudge", "Router", "parse_synonyms"]  # parse_synonyms lives in bodypart

if TYPE_CHECKING:
    from edge_worker.judging.process import Outcome, Reader


class Router:
    """The loaded pipelines, indexed by the body parts their packs cover.

    ``synonyms`` map whole BodyPartExamined values onto parts (``parse_synonyms``);
    ``keywords`` are the site's own WORD -> PART keywords (``bodypart.parse_keywords``), read
    in every field on top of the built-in table.  A pack's body parts are canonicalised
    (``L-SPINE`` is ``LSPINE``), and a part the table does not know is a keyword for itself.
    """

    def __init__(
        self,
        pipelines: list[Pipeline],
        synonyms: dict[str, str] | None = None,
        default: str = "",
        keywords: dict[str, str] | None = None,
    ) -> None:
        if not pipelines:
            raise ConfigError("no model pack loaded")
        self.pipelines = pipelines
        self.synonyms = dict(synonyms or {})
        base = keyword_table()
        own = {part: part for p in pipelines for part in p.pack.body_parts if base.canonical(part) == part}
        self.table: KeywordTable = keyword_table({**own, **(keywords or {})}, self.synonyms)
        self._by_part: dict[str, Pipeline] = {}
        for pipeline in pipelines:
            for part in (self.table.canonical(b) for b in pipeline.pack.body_parts):
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
        """``"ankle-demo: ANKLE; chest: CHEST"``, for messages."""
        return "; ".join(f"{p.pack.name}: {', '.join(p.pack.body_parts) or '-'}" for p in self.pipelines)

    def route(self, body_part: str) -> Pipeline:
        """The pipeline for a BodyPartExamined value alone; a :class:`Rejection` if none covers it."""
        return self._pipeline_for(route_fields([("BodyPartExamined", body_part or "")], self.table))

    def route_header(self, header: Header) -> tuple[Pipeline, Route]:
        """The pipeline for ``header`` and the :class:`Route` that chose it; a :class:`Rejection`
        (``no_pack_for_body_part``, naming every field looked at) when no pack covers it."""
        route = body_part_of(header, self.table)
        return self._pipeline_for(route), route

    def _pipeline_for(self, route: Route) -> Pipeline:
        pipeline = self._by_part.get(route.part)
        if pipeline is not None:
            return pipeline
        if self.default is not None:
            return self.default
        hint = "add a word to pack.body_part_keywords or pack.synonyms, or set pack.default"
        if not route.part:
            raise Rejection(
                RejectReason.NO_PACK_FOR_BODY_PART,
                f"no body part in the header: {route.looked_at}; loaded packs cover {self.coverage()}; {hint}",
            )
        conflict = f"; {route.conflict}" if route.conflict else ""
        raise Rejection(
            RejectReason.NO_PACK_FOR_BODY_PART,
            f"body part {route.part} from {route.field} {route.value!r}: no loaded pack covers it "
            f"({self.coverage()}){conflict}; looked at {route.looked_at}; {hint}",
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
        read: Reader | None = None,
        *,
        heatmap_overlay_size: int | None = None,
        derived_folder: Path | None = None,
    ) -> None:
        """``read``: how each Judge reads files (default :func:`read_radiograph`, in process);
        ``heatmap_overlay_size``, ``derived_folder``: as :class:`Judge` takes them."""
        from edge_worker.judging.process import Judge

        self.router = router
        self.policy = policy
        self._judges = {
            id(p): Judge(p, site, station, policy, thumbnail_size, read,
                         heatmap_overlay_size=heatmap_overlay_size, derived_folder=derived_folder)
            for p in router.pipelines
        }
        self.pipeline = router.pipelines[0]

    def _judge_for(self, path: Path) -> tuple[Any, Route | None]:
        from edge_worker.ingest import read_header

        primary = self._judges[id(self.pipeline)]
        try:
            header = read_header(path, self.policy)
        except Rejection:
            return primary, None  # it reads the file again and reports the same typed rejection
        pipeline, route = self.router.route_header(header)
        return self._judges[id(pipeline)], route

    def __call__(self, path: Path, seen_at: float | None = None) -> Outcome:
        """Judge one file with the pack for its body part."""
        return self.judge_many([(path, seen_at)])[0]

    def judge_many(self, files: Sequence[tuple[Path, float | None]]) -> list[Outcome]:
        """Judge several files, each pack's share in one batch; outcomes in input order.

        Each verdict gets a ``route`` object: the body part, the header field that decided it,
        the text that matched, and the conflict when another field named another part.
        """
        outcomes: list[Outcome | None] = [None] * len(files)
        routes: dict[int, Route] = {}
        groups: dict[int, list[int]] = {}
        for i, (path, seen_at) in enumerate(files):
            try:
                judge, route = self._judge_for(path)
            except Rejection as rejection:
                outcomes[i] = self._uncovered(path, seen_at, rejection)
                continue
            if route is not None:
                routes[i] = route
            groups.setdefault(id(judge), []).append(i)
        by_id = {id(j): j for j in self._judges.values()}
        for judge_id, indices in groups.items():
            judge = by_id[judge_id]
            batch = [files[i] for i in indices]
            results = judge.judge_many(batch) if hasattr(judge, "judge_many") else [judge(*f) for f in batch]
            for i, outcome in zip(indices, results):
                if outcome.kind == "verdict" and i in routes:
                    self._add_route(outcome.payload, routes[i])
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    @staticmethod
    def _add_route(payload: dict[str, Any], route: Route) -> None:
        """The verdict's ``route``; header fields that name different parts send it to review."""
        payload["route"] = route.public()
        if route.conflict:
            add_reason(payload, Reason("body_part_conflict", (
                f"The header names different body parts ({route.conflict}); the image was judged "
                f"as {route.part}: check the examination and the header before relying on it."
            )))  # fmt: skip

    def _uncovered(self, path: Path, seen_at: float | None, rejection: Rejection) -> Outcome:
        from edge_worker.judging.process import Outcome, error_key
        from edge_worker.names import printable
        from edge_worker.publish.verdict import build_error

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
