"""The review-copy message: a reduced copy of the image a verdict was about, for human review.

Published QoS 1, not retained, on ``<prefix>/<site>/<station>/review-copy`` through the same
durable outbox as verdicts, after the verdict.  Documented in ``docs/review-copy.md`` and
``edge_worker/schema/review-copy.schema.json``.  The image is the source as stored (display
polarity, after the grayscale chain, *not* turned upright), so the verdict's ROI box in stored
pixels maps onto it by ``* scale``.

Both faces use this module: the worker builds the payload (:func:`build_review_copy`), the
review dashboard checks it (:func:`parse_review_copy`).  Checking decodes nothing: whether the
bytes are an image of the stated size is the receiver's check (it has the decoder at hand).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

REVIEW_COPY_SCHEMA = "xray-qc/review-copy@1"
MEDIA_TYPES = {"image/png": "png", "image/jpeg": "jpg"}
MIN_SIDE, MAX_SIDE = 256, 2048
#: An upper bound on one copy's encoded bytes: a 2048-pixel 8-bit PNG of pure noise is 4 MiB.
MAX_IMAGE_BYTES = 6 * 1024 * 1024
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_FIELDS = frozenset({"schema", "verdict_id", "station", "site", "media_type", "width", "height",
                     "scale", "sha256", "data"})  # fmt: skip


class InvalidReviewCopy(ValueError):
    """A payload that is not a valid review copy; the message says which field and why."""


@dataclass(frozen=True)
class ParsedReviewCopy:
    """A checked review-copy payload with its image bytes decoded from base64."""

    verdict_id: str
    site: str
    station: str
    media_type: str
    width: int
    height: int
    scale: float
    sha256: str
    data: bytes


def build_review_copy(*, verdict_id: str, site: str, station: str, media_type: str, width: int,
                      height: int, scale: float, data: bytes) -> dict[str, Any]:  # fmt: skip
    """The JSON-ready payload for one encoded copy (``scale``: copy pixels per stored pixel)."""
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"media type {media_type!r} is not one of {sorted(MEDIA_TYPES)}")
    return {
        "schema": REVIEW_COPY_SCHEMA,
        "verdict_id": verdict_id,
        "station": station,
        "site": site,
        "media_type": media_type,
        "width": int(width),
        "height": int(height),
        "scale": float(round(scale, 6)),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": base64.b64encode(data).decode("ascii"),
    }


def _int_field(doc: dict[str, Any], name: str, low: int, high: int) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidReviewCopy(f"{name}: {value!r} is not an integer in {low}..{high}")
    return value


def parse_review_copy(payload: bytes | str) -> ParsedReviewCopy:
    """Check a received payload: JSON, schema, fields, sizes and the sha256 of the image bytes.

    Raises :class:`InvalidReviewCopy` naming the first problem.
    """
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4096:
        raise InvalidReviewCopy(f"payload of {len(payload)} bytes is over the limit")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidReviewCopy(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidReviewCopy("not a JSON object")
    if doc.get("schema") != REVIEW_COPY_SCHEMA:
        raise InvalidReviewCopy(f"schema {doc.get('schema')!r} is not {REVIEW_COPY_SCHEMA}")
    missing, extra = _FIELDS - doc.keys(), doc.keys() - _FIELDS
    if missing or extra:
        raise InvalidReviewCopy(f"fields missing {sorted(missing)}, unknown {sorted(extra)}")
    vid = doc["verdict_id"]
    if not isinstance(vid, str) or not _UUID.match(vid):
        raise InvalidReviewCopy(f"verdict_id {vid!r} is not a lower-case UUID")
    for name in ("site", "station"):
        if not isinstance(doc[name], str) or not doc[name] or len(doc[name]) > 200:
            raise InvalidReviewCopy(
                f"{name}: {doc[name]!r} is not a non-empty string of at most 200"
            )
    if doc["media_type"] not in MEDIA_TYPES:
        raise InvalidReviewCopy(
            f"media_type {doc['media_type']!r} is not one of {sorted(MEDIA_TYPES)}"
        )
    width = _int_field(doc, "width", 1, MAX_SIDE)
    height = _int_field(doc, "height", 1, MAX_SIDE)
    scale = doc["scale"]
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not 0.0 < scale <= 1.0:
        raise InvalidReviewCopy(f"scale {scale!r} is not in (0, 1]: a copy is never enlarged")
    digest = doc["sha256"]
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise InvalidReviewCopy("sha256 is not 64 lower-case hex digits")
    if not isinstance(doc["data"], str):
        raise InvalidReviewCopy("data is not a base64 string")
    try:
        data = base64.b64decode(doc["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidReviewCopy(f"data is not base64: {exc}") from None
    if not data or len(data) > MAX_IMAGE_BYTES:
        raise InvalidReviewCopy(f"image of {len(data)} bytes is outside 1..{MAX_IMAGE_BYTES}")
    if hashlib.sha256(data).hexdigest() != digest:
        raise InvalidReviewCopy("sha256 does not match the image bytes")
    return ParsedReviewCopy(vid, doc["site"], doc["station"], doc["media_type"], width, height,
                            float(scale), digest, data)  # fmt: skip
