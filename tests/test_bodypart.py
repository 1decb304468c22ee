"""The body part read from a header as real sites fill it: defined terms, codes, keywords."""

from __future__ import annotations

import dataclasses

import pytest

from edge_worker.errors import ConfigError
from edge_worker.ingest.types import Header
from edge_worker.judging.bodypart import (
    BUILTIN,
    GENERIC,
    PARTS,
    body_part_of,
    fold,
    keyword_table,
    parse_keywords,
    route_fields,
)
from edge_worker.service.config import parse

BLANK = Header(
    sop_instance_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.1", study_instance_uid="1.2",
    series_instance_uid="1.2.4", modality="CR", body_part="", view_position="", laterality="",
    rows=512, columns=512, bits_stored=12, photometric="MONOCHROME2", transfer_syntax="1.2.840.10008.1.2.1",
    pixel_spacing_mm=None, manufacturer="",
)  # fmt: skip


def _study(text: str) -> tuple[str, str]:
    route = route_fields([("StudyDescription", text)])
    return route.part, route.value


@pytest.mark.parametrize(
    ("text", "part", "matched"),
    [
        ("OSG li", "ANKLE", "OSG"),
        ("Thorax pa", "CHEST", "Thorax"),
        ("LWS 2 Ebenen", "LSPINE", "LWS"),
        ("Knie", "KNEE", "Knie"),
        ("Sprunggelenk re. ap/seitl.", "ANKLE", "Sprunggelenk"),
        ("Malleolengabel", "ANKLE", "Malleolengabel"),
        ("RÖ THORAX", "CHEST", "THORAX"),
        ("XR CHEST", "CHEST", "CHEST"),
        ("Lungen-Übersicht", "CHEST", "Lungen"),
        ("Lendenwirbelsäule", "LSPINE", "Lendenwirbelsäule"),
        ("LENDENWIRBELSAEULE", "LSPINE", "LENDENWIRBELSAEULE"),
        ("L-SPINE", "LSPINE", "L-SPINE"),
        ("Lumbar spine", "LSPINE", "Lumbar spine"),
        ("Hüfte links", "HIP", "Hüfte"),
        ("HUEFTE", "HIP", "HUEFTE"),
        ("Hufte", "HIP", "Hufte"),
        ("Handgelenk dp", "WRIST", "Handgelenk"),  # one token: not HAND
        ("HAND", "HAND", "HAND"),
        ("Fuß", "FOOT", "Fuß"),
        ("Fussgelenk", "ANKLE", "Fussgelenk"),  # the longer keyword wins over FUSS*
        ("Kniescheibe", "PATELLA", "Kniescheibe"),
    ],
)
def test_keywords_english_and_german(text: str, part: str, matched: str) -> None:
    assert _study(text) == (part, matched)


@pytest.mark.parametrize("text", ["Osgood-Schlatter", "HANDLING", "HIPPOCAMPUS", "CHESTNUT", "No Finding", "Bauchlage"])
def test_keywords_match_whole_words_only(text: str) -> None:
    assert _study(text) == ("", "")


def test_fold_spells_umlauts_both_ways_and_drops_accents() -> None:
    assert fold("Hüfte") == fold("HUEFTE") == "HUEFTE"
    assert fold("Fuß") == "FUSS" and fold("Épaule") == "EPAULE"
    assert fold("Hu\u0308fte") == "HUEFTE"  # decomposed (NFD) input


def test_generic_word_alone_decides_nothing_and_says_so() -> None:
    route = route_fields([("BodyPartExamined", "EXTREMITY")])
    assert route.part == "" and route.field == ""
    assert "only the generic EXTREMITY" in route.looked_at
    assert route_fields([("StudyDescription", "lower limb")]).part == ""


def test_generic_word_lets_the_next_field_decide() -> None:
    header = dataclasses.replace(BLANK, body_part="EXTREMITY", study_description="Sprunggelenk ap")
    route = body_part_of(header)
    assert (route.part, route.field, route.value, route.conflict) == ("ANKLE", "StudyDescription", "Sprunggelenk", None)
    assert route.public() == {"body_part": "ANKLE", "field": "StudyDescription", "value": "Sprunggelenk", "conflict": None}


def test_two_fields_naming_two_parts_route_by_the_first_and_record_the_conflict() -> None:
    header = dataclasses.replace(BLANK, body_part="CHEST", study_description="ANKLE")
    route = body_part_of(header)
    assert (route.part, route.field, route.value) == ("CHEST", "BodyPartExamined", "CHEST")
    assert route.conflict == "BodyPartExamined 'CHEST' says CHEST but StudyDescription 'ANKLE' says ANKLE"


def test_agreeing_fields_are_no_conflict() -> None:
    # highdicom's DX example: BodyPartExamined THORAX, SeriesDescription CHEST, ProtocolName RT.
    header = dataclasses.replace(BLANK, body_part="THORAX", series_description="CHEST", protocol_name="RT")
    route = body_part_of(header)
    assert (route.part, route.field, route.conflict) == ("CHEST", "BodyPartExamined", None)


def test_a_broad_part_yields_to_a_narrower_one() -> None:
    route = body_part_of(dataclasses.replace(BLANK, body_part="SPINE", series_description="LWS stehend"))
    assert (route.part, route.field, route.value, route.conflict) == ("LSPINE", "SeriesDescription", "LWS", None)
    assert route_fields([("StudyDescription", "Lumbar spine"), ("SeriesDescription", "spine")]).conflict is None


def test_a_field_naming_two_parts_is_skipped_not_guessed() -> None:
    assert route_fields([("StudyDescription", "Thorax und Abdomen")]).part == ""
    route = route_fields([("StudyDescription", "Thorax und Abdomen"), ("SeriesDescription", "Thorax pa")])
    assert (route.part, route.field, route.conflict) == ("CHEST", "SeriesDescription", None)


def test_anatomic_region_code_then_its_meaning() -> None:
    for region in ("T-15750^SRT^Ankle joint", "70258002^SCT^Ankle joint", "999^99LOCAL^Ankle joint"):
        route = body_part_of(dataclasses.replace(BLANK, anatomic_region=region))
        assert (route.part, route.field, route.value) == ("ANKLE", "AnatomicRegionSequence", region)
    # Coded beats free text: the code is read before the descriptions.
    route = body_part_of(dataclasses.replace(BLANK, anatomic_region="T-D3000^SNM3^CHEST", study_description="Knie"))
    assert (route.part, route.field) == ("CHEST", "AnatomicRegionSequence")
    assert route.conflict is not None and "StudyDescription 'Knie' says KNEE" in route.conflict


def test_nothing_usable_lists_every_field_looked_at() -> None:
    route = body_part_of(dataclasses.replace(BLANK, study_description="No Finding"))
    assert route.part == ""
    assert route.looked_at == (
        "no BodyPartExamined, no AnatomicRegionSequence, StudyDescription 'No Finding' (no known body part), "
        "no SeriesDescription, no ProtocolName"
    )


def test_site_keywords_extend_the_table() -> None:
    header = dataclasses.replace(BLANK, body_part="EXTREMITY", study_description="Knöchel re")
    assert body_part_of(header).part == ""  # KNÖCHEL is not built in (it is also a knuckle)
    table = keyword_table(parse_keywords(["KNÖCHEL=ANKLE", "SPRUNGG*=ANKLE", "RUECKEN=L-SPINE"]))
    for text in ("Knöchel re", "KNOECHEL RE", "Knochel re", "SPRUNGG. LI"):
        assert body_part_of(dataclasses.replace(header, study_description=text), table).part == "ANKLE", text
    assert route_fields([("ProtocolName", "Rücken")], table).part == "LSPINE"  # target canonicalised
    assert route_fields([("StudyDescription", "OSG li")], table).part == "ANKLE"  # built-ins stay


def test_a_site_keyword_wins_over_a_built_in_one() -> None:
    # Where USG means ultrasonography, not the lower ankle joint.
    table = keyword_table(parse_keywords(["USG=ABDOMEN"]))
    assert route_fields([("StudyDescription", "USG")]).part == "ANKLE"
    assert route_fields([("StudyDescription", "USG")], table).part == "ABDOMEN"


def test_synonyms_match_whole_body_part_values() -> None:
    table = keyword_table(synonyms={"SG": "ANKLE"})
    route = route_fields([("BodyPartExamined", "SG")], table)
    assert (route.part, route.field, route.value) == ("ANKLE", "BodyPartExamined", "SG")
    assert route_fields([("StudyDescription", "SG")], table).part == ""  # only BodyPartExamined


def test_keywords_config_is_checked_early() -> None:
    config = parse('[pack]\nbody_part_keywords = ["KNÖCHEL=ANKLE", "OSG*=ANKLE"]\n')
    assert config.pack.body_part_keywords == ("KNÖCHEL=ANKLE", "OSG*=ANKLE")
    with pytest.raises(ConfigError, match=r"pack.body_part_keywords: 'KNOECHEL' is not WORD=PART"):
        parse('[pack]\nbody_part_keywords = ["KNOECHEL"]\n')
    with pytest.raises(ConfigError, match=r"pack.body_part_keywords: '=ANKLE'"):
        parse('[pack]\nbody_part_keywords = ["=ANKLE"]\n')
    with pytest.raises(ConfigError, match="pack.synonyms: 'THORAX' is not ALIAS=PART"):
        parse('[pack]\nsynonyms = ["THORAX"]\n')


def test_built_in_table_names_each_keyword_once() -> None:
    seen: dict[tuple[tuple[str, ...], bool], str] = {}
    for kw in BUILTIN.keywords:
        other = seen.setdefault((kw.tokens, kw.prefix), kw.part)
        assert other == kw.part, (kw.tokens, other, kw.part)
    assert all(fold(part) == part for part in PARTS) and GENERIC
