"""Send each image to the pack for its body part, never to a wrong pack.

A pack declares the body parts it judges (``body_parts`` in its manifest).  An image's DICOM
BodyPartExamined (PS3.3 C.7.3.1, defined terms such as ``CHEST``, ``ANKLE``; sites also use
local words) is upper-cased, mapped through the configured synonyms, and looked up.  An image
no pack covers is refused with ``no_pack_for_body_part`` unless a default pack is configured:
a chest must never come back with an ankle pack's verdict.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_worker.errors import ConfigError, Rejection, RejectReason
from edge_worker.pipeline.runner import Pipeline


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
