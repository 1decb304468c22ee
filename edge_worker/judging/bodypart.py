"""Which body part a radiograph shows, read from its header the way real sites fill it.

Many modalities leave BodyPartExamined (0018,0015) empty or write local words (``EXTREMITY``,
``OSG``, ``L-SPINE``); the part is then in the free-text descriptions.  :func:`body_part_of`
reads the fields in a fixed order and the first one that names exactly one part decides:

1. BodyPartExamined: the site's exact synonyms, then the keyword table.
2. Anatomic Region Sequence (0008,2218): its SNOMED code (:data:`CODES`), else its meaning.
3. StudyDescription, SeriesDescription, ProtocolName: keywords.

The coded fields come first because the modality writes them from its protocol; the free
texts follow in the order a RIS usually fills them.  Keywords match whole tokens, case- and
accent-insensitively, German umlauts also spelt ae/oe/ue or with the dots dropped; a keyword
ending in ``*`` matches the start of a token (German compounds, and CS values cut at 16
characters: ``LENDENWIRBELSAEU``).  Generic words (:data:`GENERIC`) never decide.  When a
later field names another part, the route keeps the first decisive field and says so in
``Route.conflict``: the verdict should then go to a person, not to a guess.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_worker.errors import ConfigError

if TYPE_CHECKING:
    from edge_worker.ingest.types import Header

#: Canonical part (DICOM PS3.16 Annex L defined term) -> keywords that name it, English and
#: German as modalities and RIS write them.  KNÖCHEL is left out on purpose: it also means a
#: knuckle (Fingerknöchel); a site that uses it for the ankle adds it in its config.
PARTS: dict[str, tuple[str, ...]] = {
    "ANKLE": ("ANKLE", "ANKLES", "ANKLE JOINT", "TALOCRURAL", "MALLEOL*", "SPRUNGGELENK*",
              "OSG", "USG", "FUSSGELENK*"),
    "CHEST": ("CHEST", "THORAX*", "CXR", "LUNG", "LUNGS", "LUNGE", "LUNGEN", "BRUSTKORB"),
    "LSPINE": ("LSPINE", "L SPINE", "LUMBAR", "LUMBAR SPINE", "LWS", "LENDENWIRBEL*"),
    "TSPINE": ("TSPINE", "T SPINE", "THORACIC SPINE", "BWS", "BRUSTWIRBEL*"),
    "CSPINE": ("CSPINE", "C SPINE", "CERVICAL SPINE", "HWS", "HALSWIRBEL*"),
    "SPINE": ("SPINE", "WHOLE SPINE", "WIRBELSÄULE", "GESAMTE WIRBELSÄULE"),
    "SACRUM": ("SACRUM", "KREUZBEIN"),
    "COCCYX": ("COCCYX", "STEISSBEIN"),
    "KNEE": ("KNEE", "KNEES", "KNEE JOINT", "KNIE*"),
    "PATELLA": ("PATELLA", "KNIESCHEIBE"),
    "HIP": ("HIP", "HIPS", "HIP JOINT", "FEMORAL HEAD", "HÜFT*"),
    "PELVIS": ("PELVIS", "PELVIC", "BECKEN*"),
    "FEMUR": ("FEMUR", "THIGH", "OBERSCHENKEL*"),
    "LEG": ("LEG", "LOWER LEG", "UNTERSCHENKEL*"),
    "TIBIA": ("TIBIA", "SCHIENBEIN"),
    "FIBULA": ("FIBULA", "WADENBEIN"),
    "FOOT": ("FOOT", "FEET", "FUSS*", "FÜSSE", "VORFUSS", "MITTELFUSS"),
    "TOE": ("TOE", "TOES", "ZEHE", "ZEHEN", "GROSSZEHE"),
    "HAND": ("HAND", "HANDS", "HÄNDE", "MITTELHAND"),
    "WRIST": ("WRIST", "HANDGELENK*", "SCAPHOID", "KAHNBEIN*"),
    "FINGER": ("FINGER", "FINGERS", "THUMB", "DAUMEN"),
    "FOREARM": ("FOREARM", "UNTERARM*"),
    "ELBOW": ("ELBOW", "ELLENBOGEN*", "ELLBOGEN*"),
    "HUMERUS": ("HUMERUS", "OBERARM*"),
    "SHOULDER": ("SHOULDER", "SCHULTER*"),
    "CLAVICLE": ("CLAVICLE", "CLAVICULA", "KLAVIKULA", "SCHLÜSSELBEIN"),
    "RIB": ("RIB", "RIBS", "RIPPE", "RIPPEN"),
    "STERNUM": ("STERNUM", "BRUSTBEIN"),
    "SKULL": ("SKULL", "CRANIUM", "SCHÄDEL*"),
    "HEAD": ("HEAD", "KOPF"),
    "NECK": ("NECK", "HALS"),
    "JAW": ("JAW", "MANDIBLE", "UNTERKIEFER", "KIEFER"),
    "ABDOMEN": ("ABDOMEN", "ABDOMINAL"),
    "BREAST": ("BREAST", "MAMMA"),
}
#: Words that say "some bone or limb" without saying which: they never decide a route.
GENERIC: tuple[str, ...] = (
    "EXTREMITY", "EXTREMITIES", "LIMB", "LOWER LIMB", "UPPER LIMB", "LOWER EXTREMITY",
    "UPPER EXTREMITY", "SKELETON", "SKELETAL", "BONE", "BONES", "JOINT", "EXTREMITÄT*",
    "UNTERE EXTREMITÄT", "OBERE EXTREMITÄT", "SKELETT", "KNOCHEN", "GELENK", "BEIN",
)  # fmt: skip
#: A part named alongside a narrower one in the same header yields to it (LUMBAR SPINE).
BROADER: dict[str, str] = {"LSPINE": "SPINE", "TSPINE": "SPINE", "CSPINE": "SPINE",
                           "SACRUM": "SPINE", "COCCYX": "SPINE", "TIBIA": "LEG", "FIBULA": "LEG"}
#: Anatomic Region Sequence codes: SNOMED RT (SRT/SNM3) and SNOMED CT (SCT) as in PS3.16 CID 4031.
CODES: dict[str, str] = {
    "T-15750": "ANKLE", "70258002": "ANKLE",
    "T-D3000": "CHEST", "43799004": "CHEST", "51185008": "CHEST",
    "T-11503": "LSPINE", "122496007": "LSPINE",
    "T-11502": "TSPINE", "122495006": "TSPINE",
    "T-11501": "CSPINE", "122494005": "CSPINE",
    "T-15720": "KNEE", "49076000": "KNEE", "T-D9200": "KNEE", "72696002": "KNEE",
    "T-15710": "HIP", "24136001": "HIP", "29836001": "HIP",
    "T-D6000": "PELVIS", "12921003": "PELVIS", "816092008": "PELVIS",
    "T-D9400": "LEG", "30021000": "LEG",
    "T-D9700": "FOOT", "56459004": "FOOT",
    "T-D8700": "HAND", "85562004": "HAND",
    "T-15460": "WRIST", "74670003": "WRIST",
    "T-15430": "ELBOW", "16953009": "ELBOW",
    "T-D2220": "SHOULDER", "16982005": "SHOULDER",
    "T-11100": "SKULL", "89546000": "SKULL",
    "T-D4000": "ABDOMEN", "818981001": "ABDOMEN", "113345001": "ABDOMEN",
    "T-04000": "BREAST", "76752008": "BREAST",
}  # fmt: skip
#: The header fields read, in order, as (DICOM keyword, Header attribute).
FIELDS: tuple[tuple[str, str], ...] = (
    ("BodyPartExamined", "body_part"),
    ("AnatomicRegionSequence", "anatomic_region"),
    ("StudyDescription", "study_description"),
    ("SeriesDescription", "series_description"),
    ("ProtocolName", "protocol_name"),
)
_GENERIC = ""  # the part a generic word "names"
_TOKEN = re.compile(r"[^\W\d_]+|\d+")


@dataclass(frozen=True)
class Route:
    """The body part chosen for an image and why.

    ``part`` is the canonical part ("" when no field named one), ``field`` the DICOM keyword
    of the deciding field and ``value`` the text in it that matched, as written.  ``conflict``
    says which other field named a different part (``None`` when none did).  ``looked_at``
    lists every field read and what it gave, for a rejection's detail.
    """

    part: str
    field: str
    value: str
    conflict: str | None = None
    looked_at: str = ""

    def public(self) -> dict[str, str | None]:
        """The verdict's ``route`` object: ``body_part``, ``field``, ``value``, ``conflict``."""
        return {"body_part": self.part, "field": self.field, "value": self.value, "conflict": self.conflict}


def fold(text: str) -> str:
    """``text`` upper-cased with umlauts as AE/OE/UE, ß as SS and other accents dropped."""
    text = unicodedata.normalize("NFC", text).upper()
    text = text.replace("Ä", "AE").replace("Ö", "OE").replace("Ü", "UE")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _spellings(keyword: str) -> set[str]:
    """A keyword's folded spellings: KNÖCHEL is KNOECHEL and, typed without dots, KNOCHEL."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", keyword.upper()) if not unicodedata.combining(c))
    return {fold(keyword), plain}


@dataclass(frozen=True)
class _Keyword:
    tokens: tuple[str, ...]
    prefix: bool
    part: str  # _GENERIC for a generic word


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    weight: int  # characters of the keyword: HANDGELENK beats HAND*
    part: str
    text: str


@dataclass(frozen=True)
class _Reading:
    """What one field gave: the parts it names, each with the text that named it."""

    field: str
    text: str
    parts: dict[str, str]
    generic: tuple[str, ...] = ()

    def describe(self) -> str:
        if not self.text:
            return f"no {self.field}"
        if self.parts:
            said = " and ".join(self.parts)
        elif self.generic:
            said = f"only the generic {', '.join(self.generic)}"
        else:
            said = "no known body part"
        return f"{self.field} {self.text!r} ({said})"


def _covers(outer: _Match, inner: _Match) -> bool:
    """``outer`` is a longer (or same-span, longer-keyword) specific match around ``inner``."""
    if outer.part == _GENERIC or not (outer.start <= inner.start and inner.end <= outer.end):
        return False
    return (outer.end - outer.start, outer.weight) > (inner.end - inner.start, inner.weight)


def _compile(keyword: str, part: str) -> list[_Keyword]:
    word = keyword.strip()
    prefix = word.endswith("*")
    return [
        _Keyword(tuple(_TOKEN.findall(spelling)), prefix, part)
        for spelling in _spellings(word.rstrip("*"))
        if _TOKEN.findall(spelling)
    ]


class KeywordTable:
    """The built-in keywords plus a site's own; build it once with :func:`keyword_table`.

    ``synonyms`` map whole BodyPartExamined values onto canonical parts.
    """

    def __init__(self, keywords: Iterable[_Keyword], synonyms: Mapping[str, str] | None = None) -> None:
        self.keywords = tuple(keywords)
        self.synonyms = dict(synonyms or {})
        # Indexed by first token: each header token is then looked up, not every keyword tried.
        self._by_first: dict[str, list[_Keyword]] = {}
        self._prefixes: list[_Keyword] = []
        for kw in self.keywords:
            if kw.prefix and len(kw.tokens) == 1:
                self._prefixes.append(kw)
            else:
                self._by_first.setdefault(kw.tokens[0], []).append(kw)

    def canonical(self, value: str) -> str:
        """The part a whole value names exactly (``L-SPINE`` -> ``LSPINE``), else the value."""
        tokens = tuple(fold(t) for t in _TOKEN.findall(value))
        for kw in self.keywords:
            if kw.tokens == tokens and kw.part:
                return kw.part
        return value.strip().upper()

    def read(self, name: str, text: str) -> _Reading:
        """The parts one field's text names (narrowest keyword per span, generic words aside)."""
        text = unicodedata.normalize("NFC", text.strip())
        spans = [(m.start(), m.end(), fold(m.group())) for m in _TOKEN.finditer(text)]
        tokens = [t for _, _, t in spans]
        matches = []
        for i, token in enumerate(tokens):
            candidates = self._by_first.get(token, []) + [k for k in self._prefixes if token.startswith(k.tokens[0])]
            for kw in candidates:
                n = len(kw.tokens)
                if i + n > len(tokens) or list(kw.tokens[1:-1]) != tokens[i + 1 : i + n - 1]:
                    continue
                last = tokens[i + n - 1]
                if last == kw.tokens[-1] or kw.prefix and last.startswith(kw.tokens[-1]):
                    weight = sum(len(t) for t in kw.tokens)
                    said = text[spans[i][0] : spans[i + n - 1][1]]
                    matches.append(_Match(i, i + n, weight, kw.part, said))
        kept = [m for m in matches if not any(_covers(o, m) for o in matches)]
        parts: dict[str, str] = {}
        for m in sorted(kept, key=lambda m: m.start):
            parts.setdefault(m.part, m.text)
        parts.pop(_GENERIC, None)
        generic = tuple(m.text for m in kept if m.part == _GENERIC)
        for narrow, broad in BROADER.items():
            if narrow in parts:
                parts.pop(broad, None)
        return _Reading(name, text, parts, generic)


def parse_synonyms(pairs: Iterable[str]) -> dict[str, str]:
    """``["THORAX=CHEST", ...]`` as ``{"THORAX": "CHEST"}``; :class:`ConfigError` if malformed."""
    table: dict[str, str] = {}
    for pair in pairs:
        alias, sep, part = pair.partition("=")
        if not sep or not alias.strip() or not part.strip():
            raise ConfigError(f"pack.synonyms: {pair!r} is not ALIAS=PART")
        table[alias.strip().upper()] = part.strip().upper()
    return table


def parse_keywords(pairs: Iterable[str], key: str = "pack.body_part_keywords") -> dict[str, str]:
    """``["KNÖCHEL=ANKLE", "OSG*=ANKLE"]`` as ``{"KNÖCHEL": "ANKLE", ...}``; :class:`ConfigError`
    naming ``key`` if a pair is not WORD=PART or its word has no letter or digit."""
    table: dict[str, str] = {}
    for pair in pairs:
        word, sep, part = pair.partition("=")
        if not sep or not _TOKEN.findall(word) or not _TOKEN.findall(part):
            raise ConfigError(f"{key}: {pair!r} is not WORD=PART (e.g. \"KNÖCHEL=ANKLE\")")
        table[word.strip().upper()] = part.strip().upper()
    return table


def keyword_table(extra: Mapping[str, str] | None = None, synonyms: Mapping[str, str] | None = None) -> KeywordTable:
    """The built-in table extended by a site's ``extra`` keywords (WORD -> PART, which win over
    a built-in keyword spelt the same) and its exact BodyPartExamined ``synonyms``."""
    base = KeywordTable(tuple(
        kw for part, words in [*PARTS.items(), (_GENERIC, GENERIC)] for word in words for kw in _compile(word, part)
    ))  # fmt: skip
    site = [kw for word, part in (extra or {}).items() for kw in _compile(word, base.canonical(part))]
    taken = {(kw.tokens, kw.prefix) for kw in site}
    keywords = (*site, *(kw for kw in base.keywords if (kw.tokens, kw.prefix) not in taken))
    exact = {alias.strip().upper(): base.canonical(part) for alias, part in (synonyms or {}).items()}
    return KeywordTable(keywords, exact)


BUILTIN = keyword_table()


def route_fields(fields: Iterable[tuple[str, str]], table: KeywordTable = BUILTIN) -> Route:
    """The :class:`Route` for ``(DICOM keyword, text)`` pairs read in order (see the module)."""
    readings = []
    for name, text in fields:
        raw = text.strip()
        if name == "BodyPartExamined" and raw.upper() in table.synonyms:
            readings.append(_Reading(name, raw, {table.synonyms[raw.upper()]: raw}))
        elif name == "AnatomicRegionSequence" and raw:
            code, _, rest = raw.partition("^")
            meaning = rest.partition("^")[2]
            if code in CODES:
                readings.append(_Reading(name, raw, {CODES[code]: raw}))
            else:
                found = table.read(name, meaning)
                readings.append(_Reading(name, raw, {p: raw for p in found.parts}, found.generic))
        else:
            readings.append(table.read(name, raw))
    looked_at = ", ".join(r.describe() for r in readings)
    decisive = [r for r in readings if len(r.parts) == 1]
    if not decisive:
        return Route("", "", "", None, looked_at)
    chosen = decisive[0]
    part = next(iter(chosen.parts))
    # A broad first answer (SPINE) gives way to a later field's narrower one (LWS).
    narrower = [r for r in decisive[1:] if BROADER.get(next(iter(r.parts))) == part]
    if narrower:
        chosen = narrower[0]
        part = next(iter(chosen.parts))
    value = chosen.parts[part]
    others = [
        f"{r.field} {', '.join(repr(v) for v in r.parts.values())} says {' or '.join(r.parts)}"
        for r in readings
        if r.parts and part not in r.parts and BROADER.get(part) not in r.parts
    ]
    conflict = f"{chosen.field} {value!r} says {part} but " + "; ".join(others) if others else None
    return Route(part, chosen.field, value, conflict, looked_at)


def body_part_of(header: Header, table: KeywordTable = BUILTIN) -> Route:
    """The :class:`Route` of a header: its body part, the field that decided it, any conflict."""
    return route_fields(((name, str(getattr(header, attr) or "")) for name, attr in FIELDS), table)
