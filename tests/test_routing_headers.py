"""Routing on real headers: real DICOM files, and phantoms carrying a site's own descriptions,
through the router, ``edge-worker analyze`` and the real daemon."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Mosquitto, Subscriber

from edge_worker.backends import select
from edge_worker.errors import Rejection, RejectReason
from edge_worker.ingest import read_header
from edge_worker.judging.bodypart import body_part_of
from edge_worker.judging.routing import Router
from edge_worker.packs.pack import bundled_pack_dirs, load_pack
from edge_worker.phantoms.ankle import make_dataset
from edge_worker.pipeline.runner import Pipeline
from tests.packs import pack_as
from tests.stations import Station

ROOT = Path(__file__).resolve().parents[1]
SHARED_DICOM = ROOT.parent / "shared" / "data" / "radiographs" / "dicom"
SCHEMA = ROOT / "edge_worker" / "schema" / "verdict.schema.json"
shared = pytest.mark.skipif(not SHARED_DICOM.is_dir(), reason="../shared/data/radiographs/dicom is absent")


@pytest.fixture(scope="module")
def router() -> Router:
    """The bundled demo (ANKLE) and chest (CHEST) packs, no default pack."""
    cpu = select(["onnxruntime-cpu"])
    chest = next(d for d in bundled_pack_dirs() if d.name == "chest")
    return Router([Pipeline(load_pack(), cpu), Pipeline(load_pack(chest), cpu)])


def _phantom(path: Path, seed: int, **attributes: str | None) -> Path:
    """A small phantom with some header attributes replaced (``None`` deletes one)."""
    ds, _ = make_dataset(seed, view="AP", grade=1, size=512)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _refusal(router: Router, path: Path) -> str:
    with pytest.raises(Rejection) as err:
        router.route_header(read_header(path))
    assert err.value.reason is RejectReason.NO_PACK_FOR_BODY_PART
    return err.value.detail


@shared
@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("highdicom_dx_image.dcm", "BodyPartExamined", "THORAX"),
        ("openrem_DX-Im-Carestream_DRX.dcm", "BodyPartExamined", "CHEST"),
        ("fodicom_CR-MONO1-10-chest.dcm", "BodyPartExamined", "CHEST"),
    ],
)
def test_real_chests_go_to_the_chest_pack(router: Router, name: str, field: str, value: str) -> None:
    pipeline, route = router.route_header(read_header(SHARED_DICOM / name))
    assert pipeline.pack.name == "chest"
    assert route.public() == {"body_part": "CHEST", "field": field, "value": value, "conflict": None}


@shared
@pytest.mark.shared
def test_real_anatomic_region_and_description_each_route_alone(router: Router) -> None:
    # Carestream writes StudyDescription 'XR CHEST' and the region T-D3000 besides CHEST.
    header = read_header(SHARED_DICOM / "openrem_DX-Im-Carestream_DRX.dcm")
    route = body_part_of(dataclasses.replace(header, body_part=""), router.table)
    assert (route.part, route.field, route.value) == ("CHEST", "AnatomicRegionSequence", "T-D3000^SNM3^CHEST")
    route = body_part_of(dataclasses.replace(header, body_part="", anatomic_region=""), router.table)
    assert (route.part, route.field, route.value) == ("CHEST", "StudyDescription", "CHEST")


@shared
@pytest.mark.shared
def test_real_distal_tibia_is_not_taken_for_an_ankle(router: Router) -> None:
    # EXTREMITY + 'Non-ossifying fibroma of distal tibia': a tibia study no pack covers.
    detail = _refusal(router, SHARED_DICOM / "wg04_RG3_UNC.dcm")
    assert detail.startswith("body part TIBIA from StudyDescription 'tibia': no loaded pack covers it")
    assert "BodyPartExamined 'EXTREMITY' (only the generic EXTREMITY)" in detail
    assert "StudyDescription 'Non-ossifying fibroma of distal tibia' (TIBIA)" in detail
    assert "ankle-demo: ANKLE; chest: CHEST" in detail


@shared
@pytest.mark.shared
def test_real_header_without_a_body_part_is_refused_naming_every_field(router: Router) -> None:
    detail = _refusal(router, SHARED_DICOM / "nhsx_nih_cxr14_DX.dcm")
    assert detail.startswith(
        "no body part in the header: no BodyPartExamined, no AnatomicRegionSequence, "
        "StudyDescription 'No Finding' (no known body part), no SeriesDescription, no ProtocolName; "
        "loaded packs cover ankle-demo: ANKLE; chest: CHEST"
    )
    assert "pack.body_part_keywords" in _refusal(router, SHARED_DICOM / "wg04_RG2_J2KI.dcm")


def test_default_pack_takes_an_unreadable_header_and_the_route_says_so(tmp_path: Path, router: Router) -> None:
    path = _phantom(tmp_path / "blank.dcm", 3, BodyPartExamined=None, StudyDescription="Phantom")
    fallback = Router(router.pipelines, default="ankle-demo")
    pipeline, route = fallback.route_header(read_header(path))
    assert pipeline.pack.name == "ankle-demo"
    assert route.public() == {"body_part": "", "field": "", "value": "", "conflict": None}


def test_pack_body_parts_are_canonical_and_a_custom_part_routes_by_itself(tmp_path: Path) -> None:
    packs = []
    for name, parts in (("spine-test", ["L-SPINE"]), ("custom-test", ["PHANTOMLEG"])):
        dest = pack_as(tmp_path / name, name=name, body_parts=parts)
        packs.append(Pipeline(load_pack(dest), select(["onnxruntime-cpu"])))
    router = Router(packs)
    lws = _phantom(tmp_path / "lws.dcm", 5, BodyPartExamined=None, SeriesDescription="LWS seitlich")
    pipeline, route = router.route_header(read_header(lws))
    assert (pipeline.pack.name, route.part, route.value) == ("spine-test", "LSPINE", "LWS")
    custom = _phantom(tmp_path / "custom.dcm", 6, BodyPartExamined="PHANTOMLEG")
    assert router.route_header(read_header(custom))[0].pack.name == "custom-test"


def _analyze(*paths: Path) -> dict[str, dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "edge_worker", "analyze", "--json", *map(str, paths)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {Path(str(r["file"])).name: r for r in map(json.loads, result.stdout.splitlines())}


def test_analyze_routes_german_descriptions_and_reports_the_route(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    rows = _analyze(
        _phantom(tmp_path / "osg.dcm", 11, BodyPartExamined=None, StudyDescription="Röntgen OSG re. 2 Ebenen"),
        _phantom(tmp_path / "clash.dcm", 12, BodyPartExamined="ANKLE", SeriesDescription="Thorax pa"),
        _phantom(tmp_path / "blank.dcm", 13, BodyPartExamined="EXTREMITY", StudyDescription="Phantom"),
    )
    osg, clash, blank = rows["osg.dcm"], rows["clash.dcm"], rows["blank.dcm"]
    assert osg["kind"] == "verdict", osg
    assert osg["pack"]["name"] == "ankle-demo"  # type: ignore[index]
    assert osg["route"] == {"body_part": "ANKLE", "field": "StudyDescription", "value": "OSG", "conflict": None}
    assert clash["kind"] == "verdict", clash
    assert clash["route"] == {
        "body_part": "ANKLE", "field": "BodyPartExamined", "value": "ANKLE",
        "conflict": "BodyPartExamined 'ANKLE' says ANKLE but SeriesDescription 'Thorax' says CHEST",
    }  # fmt: skip
    # Header fields that disagree never give a confident answer: the verdict goes to a person.
    assert clash["decision"] == "review"
    assert "body_part_conflict" in [r["code"] for r in clash["reasons"]]  # type: ignore[union-attr]
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    for row in (osg, clash):
        validator.validate({k: v for k, v in row.items() if k not in ("file", "kind")})
    assert blank["kind"] == "error" and blank["reason"] == "no_pack_for_body_part", blank
    assert "BodyPartExamined 'EXTREMITY' (only the generic EXTREMITY)" in str(blank["detail"])
    assert "StudyDescription 'Phantom' (no known body part)" in str(blank["detail"])


def test_daemon_reads_the_sites_keywords(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber]
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    _phantom(staging / "knoechel.dcm", 21, BodyPartExamined="EXTREMITY", StudyDescription="Knöchel li")
    _phantom(staging / "knie.dcm", 22, BodyPartExamined=None, ProtocolName="Knie ap")
    station = Station(tmp_path / "st", mosquitto.url, site="route", station="xr-03",
                      tables={"pack": {"body_part_keywords": ["KNÖCHEL=ANKLE"]}})  # fmt: skip
    sub = subscriber(mosquitto, "xray/route/xr-03/#")
    try:
        station.start()
        for name in ("knoechel.dcm", "knie.dcm"):
            os.replace(staging / name, station.watch / name)
        verdicts = sub.wait_for(f"{station.base}/verdict", 1, timeout=90)
        errors = sub.wait_for(f"{station.base}/error", 1, timeout=90)
    finally:
        station.close()
    verdict = json.loads(verdicts[0].payload)
    assert verdict["route"] == {"body_part": "ANKLE", "field": "StudyDescription", "value": "Knöchel", "conflict": None}
    error = json.loads(errors[0].payload)
    assert error["reason"] == "no_pack_for_body_part"
    assert error["detail"].startswith("body part KNEE from ProtocolName 'Knie': no loaded pack covers it")
