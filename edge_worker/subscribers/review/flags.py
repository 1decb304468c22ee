"""The fixed list of flags a reviewer can set on an image, and the check of a flag list.

A flag is a pair ``(scheme, code)``:

* ``("DCM", "<code value>")``: a code of DICOM PS3.16 CID 7011 "Rejected for Quality Reasons"
  (the reasons a Key Object Selection "Rejected for Quality Reasons" note, IHE IOCM, may give),
  listed in :data:`CID_7011` with the standard's code meanings;
* ``("PACK", "<code>")``: one of the pack's own codes, a verdict reason code
  (``edge_worker/schema/verdict.schema.json``, e.g. ``rule_failed``) or the code of a rule or
  flagged label the verdict names (``reasons[].rule``, ``rules[].code``).

MIQA (paper 002) lets a tier-two reviewer mark an image bad only with at least one artifact
flag; :func:`validate_flags` is where a list is checked before the store keeps it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from edge_worker.subscribers.review.errors import InvalidFlags

Flag = tuple[str, str]

DCM = "DCM"
PACK = "PACK"


@dataclass(frozen=True)
class Code:
    """One coded flag: scheme designator, code value, code meaning (as the standard words it)."""

    scheme: str
    value: str
    meaning: str

    @property
    def flag(self) -> Flag:
        return (self.scheme, self.value)


#: DICOM PS3.16 CID 7011 "Rejected for Quality Reasons" (scheme DCM), in the standard's order.
#: Code values and meanings as in the standard (cross-checked against pydicom 3's
#: ``sr/_cid_dict.py`` and dcm4che's ``RejectedForQualityReasons``).
CID_7011: tuple[Code, ...] = (
    Code(DCM, "111207", "Image artifact(s)"),
    Code(DCM, "111208", "Grid artifact(s)"),
    Code(DCM, "111209", "Positioning"),
    Code(DCM, "111210", "Motion blur"),
    Code(DCM, "111211", "Under exposed"),
    Code(DCM, "111212", "Over exposed"),
    Code(DCM, "111213", "No image"),
    Code(DCM, "111214", "Detector artifact(s)"),
    Code(DCM, "111215", "Artifact(s) other than grid or detector artifact"),
    Code(DCM, "111216", "Mechanical failure"),
    Code(DCM, "111217", "Electrical failure"),
    Code(DCM, "111218", "Software failure"),
    Code(DCM, "111219", "Inappropriate image processing"),
    Code(DCM, "111220", "Other failure"),
    Code(DCM, "111221", "Unknown failure"),
    Code(DCM, "113026", "Double exposure"),
)
_DCM_BY_VALUE = {c.value: c for c in CID_7011}

# A pack's rule and label codes are its own (docs/model-pack.md): short, printable, no spaces.
_PACK_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
MAX_FLAGS = 32


def verdict_reason_codes() -> frozenset[str]:
    """Every reason code a verdict may carry, read from the verdict schema shipped with the package."""
    text = resources.files("edge_worker.schema").joinpath("verdict.schema.json").read_text("utf-8")
    schema = json.loads(text)
    codes = schema["properties"]["reasons"]["items"]["properties"]["code"]["enum"]
    return frozenset(codes)


def pack_codes_of(payload: Mapping[str, Any]) -> frozenset[str]:
    """The pack's own codes a verdict payload names: its reason codes, rule and label codes."""
    codes: set[str] = set()
    for reason in payload.get("reasons") or ():
        if isinstance(reason, Mapping):
            for key in ("code", "rule"):
                if isinstance(reason.get(key), str):
                    codes.add(reason[key])
    for rule in payload.get("rules") or ():
        if isinstance(rule, Mapping) and isinstance(rule.get("code"), str):
            codes.add(rule["code"])
    for stage in (payload.get("flags") or {}).values():
        if isinstance(stage, Mapping):
            codes.update(x for x in stage.get("present") or () if isinstance(x, str))
    return frozenset(codes)


def meaning(flag: Flag) -> str:
    """A flag in words: the CID 7011 code meaning, or ``pack: <code>``."""
    scheme, value = flag
    if scheme == DCM and value in _DCM_BY_VALUE:
        return _DCM_BY_VALUE[value].meaning
    return f"pack: {value}"


def validate_flags(flags: Iterable[Any], pack_codes: Collection[str] | None = None) -> tuple[Flag, ...]:
    """Check a flag list; return it as sorted, de-duplicated ``(scheme, code)`` tuples.

    ``flags``: pairs (lists from JSON are accepted).  A ``DCM`` flag must be a CID 7011 code
    value; a ``PACK`` flag a well-formed code that, when ``pack_codes`` is given, is one of them
    or a verdict reason code.  Raises :class:`InvalidFlags` naming every bad entry.
    """
    allowed = None if pack_codes is None else set(pack_codes) | verdict_reason_codes()
    good: set[Flag] = set()
    bad: list[str] = []
    for item in flags:
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not all(isinstance(x, str) for x in item):
            bad.append(f"{item!r}: not a (scheme, code) pair")
            continue
        scheme, value = item[0], item[1]
        if scheme == DCM:
            if value not in _DCM_BY_VALUE:
                bad.append(f"{scheme}:{value}: not a code of CID 7011")
                continue
        elif scheme == PACK:
            if not _PACK_CODE.match(value):
                bad.append(f"{scheme}:{value!r}: not a pack code")
                continue
            if allowed is not None and value not in allowed:
                bad.append(f"{scheme}:{value}: the verdict names no such reason, rule or label")
                continue
        else:
            bad.append(f"{scheme}:{value}: unknown scheme (DCM or PACK)")
            continue
        good.add((scheme, value))
    if len(good) > MAX_FLAGS:
        bad.append(f"{len(good)} flags: at most {MAX_FLAGS}")
    if bad:
        raise InvalidFlags(bad)
    return tuple(sorted(good))
