"""Every task of format version 2, run through the pack loader and real ONNX Runtime sessions.

The networks are hand-written (tests/tiny_packs.py), so each answer is known: what the task
makes of it, the reasons it gives and what the verdict shows are checked as values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_worker.backends import select
from edge_worker.errors import PackError
from edge_worker.judging.decision import codes
from edge_worker.packs.pack import load_pack, seal_manifest
from edge_worker.pipeline.runner import Judgement, Pipeline
from edge_worker.pipeline.tasks.classify import FlagsResult
from edge_worker.pipeline.tasks.heatmap import HeatmapResult
from edge_worker.pipeline.tasks.segment import SegmentResult
from edge_worker.publish.verdict import stage_findings
from tests.tiny_packs import CAM, FLAGS, ROI, SCORE, SEG, VIEW, network, square, write_tiny_pack

pytest.importorskip("onnx")


def _judge(root: Path, image: np.ndarray) -> Judgement:
    return Pipeline(load_pack(root), select(["onnxruntime-cpu"])).judge(image)


def test_a_view_only_pack_is_never_ok(tmp_path: Path) -> None:
    j = _judge(write_tiny_pack(tmp_path / "p", [VIEW]), square(0, 0, 1, 1))
    assert j.view.label == "A" and j.view.confidence == pytest.approx(1 / (1 + np.exp(-5)), abs=1e-6)
    assert j.decision == "not_judged" and codes(j.reasons) == ["quality_not_judged"]


def test_multi_label_flags_and_their_heatmap(tmp_path: Path) -> None:
    root = write_tiny_pack(tmp_path / "p", [VIEW, FLAGS, CAM])
    # A white square in the lower right of a black field: both labels are present.
    image = square(14, 16, 30, 32, value=1.0, back=0.0)
    j = _judge(root, image)
    flags = j.results["flags"]
    assert isinstance(flags, FlagsResult) and flags.present == ("bright_spot", "dark_field")
    # logit = 4 * mean(relu(x)) - 1: the square is 256 of 1024 pixels at x = 2.
    assert flags.probabilities["bright_spot"] == pytest.approx(1 / (1 + np.exp(-(4 * 2 * 256 / 1024 - 1))), abs=1e-5)
    assert codes(j.reasons) == ["label_flagged", "label_flagged", "quality_not_judged"]
    assert [r.rule for r in j.reasons[:2]] == ["bright_spot", "dark_field"]
    assert j.decision == "review"
    heat = j.results["cam"]
    assert isinstance(heat, HeatmapResult) and set(heat.maps) == {"bright_spot", "dark_field"}
    bright = heat.summaries["bright_spot"]
    assert 14 / 32 <= bright["peak_x"] <= 30 / 32 and 16 / 32 <= bright["peak_y"] <= 32 / 32
    assert bright["area_fraction"] == pytest.approx(256 / 1024, abs=0.03)
    findings = stage_findings(j)
    assert findings["flags"]["flags"]["present"] == ["bright_spot", "dark_field"]
    assert set(findings["heatmaps"]) == {"bright_spot", "dark_field"}


def test_a_grey_image_raises_no_flag_and_no_heatmap(tmp_path: Path) -> None:
    j = _judge(write_tiny_pack(tmp_path / "p", [VIEW, FLAGS, CAM]), square(0, 0, 1, 1, 0.5, 0.5))
    assert j.results["flags"].present == () and j.results["cam"].maps == {}
    assert "label_flagged" not in codes(j.reasons)


def test_softmax_segmentation_names_its_structures(tmp_path: Path) -> None:
    image = square(4, 4, 12, 20, value=1.0, back=0.0)  # white 8 x 16 block on black
    j = _judge(write_tiny_pack(tmp_path / "p", [VIEW, SEG]), image)
    seg = j.results["seg"]
    assert isinstance(seg, SegmentResult) and set(seg.masks) == {"bright", "dark"}
    assert seg.measures["bright"]["area_fraction"] == pytest.approx(128 / 1024)
    assert seg.measures["bright"]["cx"] == pytest.approx(8 / 32) and seg.measures["bright"]["cy"] == pytest.approx(12 / 32)
    assert seg.measures["dark"]["area_fraction"] == pytest.approx(1 - 128 / 1024)
    assert seg.scale == (256 / 32, 256 / 32) and seg.box is None


def test_box_crop_and_score(tmp_path: Path) -> None:
    root = write_tiny_pack(tmp_path / "p", [VIEW, ROI, SCORE], judged_by=["score"])
    j = _judge(root, square(8, 8, 24, 16, value=1.0, back=0.0))
    assert j.roi is not None and j.roi.box is not None
    box = j.roi.box
    assert (box.cx, box.cy) == pytest.approx((128, 96), abs=1) and sorted((box.width, box.height)) == pytest.approx([64, 128], abs=1)
    # The crop of the white box reads x = 2 but at its rim (the box encloses whole mask
    # pixels): score 1 + 0.5 * mean(x), a little under 2.
    assert j.quality is not None and 1.8 < j.quality.score <= 2.0 and j.quality.grade == 2
    assert j.decision == "ok" and codes(j.reasons) == ["quality_criteria_partly_met"]
    # Nothing bright: no box, so nothing to score, and a person looks.
    none = _judge(root, square(0, 0, 1, 1, 0.0, 0.0))
    assert none.quality is None and none.decision == "review" and codes(none.reasons) == ["roi_not_found"]


def test_when_runs_a_stage_only_for_its_labels(tmp_path: Path) -> None:
    only_b = network("seg", "segment", classes=["background", "bright", "dark"], activation="softmax",
                     outputs={"mask": "(N, 3, 32, 32)"}, when={"view": ["B"]})  # fmt: skip
    j = _judge(write_tiny_pack(tmp_path / "p", [VIEW, only_b]), square(0, 0, 1, 1))
    assert "seg" not in j.results and j.view.label == "A"
    only_a = dict(only_b, when={"view": "A"})
    j = _judge(write_tiny_pack(tmp_path / "q", [VIEW, only_a]), square(0, 0, 1, 1))
    assert "seg" in j.results


RULES = {
    "name": "rules", "task": "rules", "reads": {"segments": "seg"},
    "rules": [
        {"code": "bright_inside", "measure": "inside_field", "segments": ["bright"], "min": 1,
         "sentence": "The bright block is cut by the field edge: recentre.", "criterion": "test 1",
         "on_fail": "retake"},
        {"code": "bright_upright", "measure": "axis_angle", "segments": ["bright"], "max": 10,
         "sentence": "The bright block is tilted: straighten it.", "criterion": "test 2",
         "on_fail": "review"},
    ],
}  # fmt: skip


def test_rules_over_a_segmentation_decide_with_their_sentences(tmp_path: Path) -> None:
    root = write_tiny_pack(tmp_path / "p", [VIEW, SEG, RULES], judged_by=["rules"])
    upright = _judge(root, square(4, 4, 12, 20, value=1.0, back=0.0))
    assert upright.decision == "ok" and codes(upright.reasons) == ["rules_passed"]
    outcomes = {o.code: o for o in upright.results["rules"].outcomes}
    assert outcomes["bright_inside"].value == 1.0 and outcomes["bright_upright"].value == pytest.approx(0.0, abs=1.0)
    # Cut by the left edge: the retake rule fails, and its sentence is what the radiographer reads.
    cut = _judge(root, square(0, 4, 8, 20, value=1.0, back=0.0))
    assert cut.decision == "retake" and codes(cut.reasons) == ["rule_failed"]
    assert cut.reasons[0].rule == "bright_inside" and cut.reasons[0].text.startswith("The bright block is cut")
    # Lying down: the review rule fails (90 deg from the vertical).
    lying = _judge(root, square(4, 4, 20, 12, value=1.0, back=0.0))
    assert lying.decision == "review" and codes(lying.reasons) == ["rule_flagged"]
    assert {o.code: o.value for o in lying.results["rules"].outcomes}["bright_upright"] == pytest.approx(90.0, abs=1.0)
    # Nothing bright: absent from the field (a measured fail) and an axis that cannot be measured.
    empty = _judge(root, square(0, 0, 1, 1, value=0.0, back=0.0))
    assert codes(empty.reasons) == ["rule_failed", "rule_not_measurable"] and empty.decision == "review"
    rows = stage_findings(empty)["rules"]
    assert [(r["code"], r["status"], r["stage"]) for r in rows] == [
        ("bright_inside", "fail", "rules"), ("bright_upright", "not_measurable", "rules")]  # fmt: skip


def test_malformed_rules_are_refused_at_load(tmp_path: Path) -> None:
    bad_segment = json.loads(json.dumps(RULES))
    bad_segment["rules"][0]["segments"] = ["femur"]
    _refused(tmp_path, [VIEW, SEG, bad_segment], r"stage 'rules'.*bright_inside.*femur")
    bad_measure = json.loads(json.dumps(RULES))
    bad_measure["rules"][1]["measure"] = "beauty"
    _refused(tmp_path, [VIEW, SEG, bad_measure], r"stage 'rules'.*bright_upright.*beauty")
    _refused(tmp_path, [VIEW, dict(RULES, reads={"segments": "seg"}), SEG],
             r"stage 'rules': reads.segments: reads 'seg', which no earlier stage makes")  # fmt: skip
    _refused(tmp_path, [VIEW, SEG, dict(RULES, rules=[])], r"stage 'rules': rules: must be a non-empty list")


def _refused(tmp_path: Path, stages: list[dict[str, Any]], match: str, **manifest: Any) -> None:
    root = write_tiny_pack(tmp_path / f"r{len(list(tmp_path.iterdir()))}", stages, **manifest)
    with pytest.raises(PackError, match=match):
        load_pack(root)


def test_refusals_name_the_stage_and_the_field(tmp_path: Path) -> None:
    _refused(tmp_path, [VIEW, dict(SEG, task="fracture")], r"stage 'seg': task: unknown task 'fracture'")
    _refused(tmp_path, [VIEW, dict(SEG, colour="red")], r"stage 'seg': unknown key\(s\) \['colour'\]")
    # A stage reading a result no earlier stage makes: a later one, itself (a cycle), or none.
    _refused(tmp_path, [VIEW, SCORE, ROI], r"stage 'score': reads.crop: reads 'roi', which no earlier stage makes")
    _refused(tmp_path, [VIEW, dict(SCORE, reads={"crop": "score"})], r"stage 'score': reads.crop: reads 'score'")
    _refused(tmp_path, [VIEW, dict(CAM, reads={"classifier": "nowhere"})], r"stage 'cam': reads.classifier")
    _refused(tmp_path, [VIEW, SEG, dict(SCORE, reads={"crop": "seg"})], r"stage 'score': reads.crop: stage 'seg' has no box")
    _refused(tmp_path, [VIEW, dict(SEG, box="nothing")], r"stage 'seg': box: names 'nothing'")
    _refused(tmp_path, [VIEW, dict(SEG, when={"view": ["C"]})], r"stage 'seg': when.view: \['C'\] are not labels")
    _refused(tmp_path, [VIEW, FLAGS, dict(SEG, when={"flags": ["bright_spot"]})],
             r"stage 'seg': when: 'flags' is not an earlier single-label classify stage")  # fmt: skip
    no_features = dict(FLAGS, outputs={"logits": "(N, 2)"})
    _refused(tmp_path, [VIEW, no_features, CAM], r"stage 'cam': reads.classifier: stage 'flags' does not output 'features'")
    _refused(tmp_path, [VIEW, dict(SEG, reads={"image": "sideways"})], r"stage 'seg': reads.image")
    _refused(tmp_path, [VIEW, SEG, dict(SEG)], r"stage 'seg': name: used by an earlier stage")
    _refused(tmp_path, [VIEW, SEG], r"decision.judged_by: 'seg' is not a regress or rules stage",
             decision={"judged_by": ["seg"]})  # fmt: skip
    _refused(tmp_path, [FLAGS], r"view_stage: 'view' is not a single-label classify stage")


def test_a_changed_network_file_is_refused_for_every_task(tmp_path: Path) -> None:
    root = write_tiny_pack(tmp_path / "p", [VIEW, FLAGS, CAM])
    (root / "cam.npz").write_bytes(b"not the head")
    with pytest.raises(PackError, match=r"stage 'cam': sha256 mismatch for cam\.npz"):
        load_pack(root)


def test_a_version_one_manifest_is_read_through_the_adapter(tmp_path: Path) -> None:
    """The same networks under a version-1 manifest: the same stages, in version 1's order.

    On the ankle pack 1.1 (kept under tests/data/packs): version 1 has no heatmap stage and no
    padded input, which the built 2.x has."""
    v1_networks = Path(__file__).parent / "data" / "packs" / "ankle-demo-1.1"
    v2 = json.loads((v1_networks / "manifest.json").read_text())
    root = tmp_path / "v1"
    root.mkdir()
    for stage in v2["stages"]:
        (root / stage["file"]).write_bytes((v1_networks / stage["file"]).read_bytes())
    task_v1 = {"classify": "view", "segment": "roi", "regress": "quality", "orientation": "orientation"}
    v1_stages = []
    # Orientation listed last, as the version-1 ankle pack had it: version 1 ran it first anyway.
    for stage in v2["stages"][1:] + v2["stages"][:1]:
        view = (stage.get("when") or {}).get("view", [None])[0]
        keep = {k: v for k, v in stage.items()
                if k not in ("task", "when", "reads", "classes", "activation", "box", "range",
                             "retake_grade", "multi_label")}  # fmt: skip
        v1_stages.append(dict(keep, task=task_v1[stage["task"]], applies_to_view=view))
    body = {k: v for k, v in v2.items() if k not in ("stages", "decision", "view_stage")}
    (root / "manifest.json").write_text(json.dumps(dict(body, schema="edge-worker/model-pack@1", stages=v1_stages)))
    seal_manifest(root)
    old, new = load_pack(root), load_pack(v1_networks)
    assert old.schema == "edge-worker/model-pack@1"
    assert [(s.name, s.task, s.role, s.when, s.reads) for s in old.stages] == \
        [(s.name, s.task, s.role, s.when, s.reads) for s in new.stages]  # fmt: skip
    assert old.judged_by == new.judged_by == ("quality_ap", "quality_lat")
