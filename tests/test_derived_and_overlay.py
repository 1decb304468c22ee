"""Paper 004's extras in the worker: a ``derive`` stage written as a DICOM Secondary Capture,
heatmap overlays over the whole stored image, research-only stages, and heatmaps refused on
classifiers without features.

Real parts: hand-written ONNX networks (``tests/tiny_packs.py``) in real ONNX Runtime
sessions, packs through the worker's loader, phantom DICOM files through the ingest, the
Secondary Capture read back with pydicom, the verdict checked against its JSON Schema.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import dcmread

from edge_worker.backends import select
from edge_worker.errors import PackError
from edge_worker.ingest.types import IngestPolicy
from edge_worker.judging.overlay import PREFIX, stored_frame_map
from edge_worker.judging.process import Judge
from edge_worker.packs.pack import load_pack
from edge_worker.phantoms.chest import make_dataset
from edge_worker.pipeline.preprocess import resize, turn_upright
from edge_worker.pipeline.runner import Pipeline
from edge_worker.pipeline.tasks.derive import DerivedResult
from edge_worker.publish.secondary_capture import SECONDARY_CAPTURE
from edge_worker.publish.verdict import RESEARCH_NOTICE
from tests.tiny_packs import CAM, DERIVE, FLAGS, VIEW, network, write_tiny_pack

pytest.importorskip("onnx")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "edge_worker" / "schema" / "verdict.schema.json").read_text())


def _judge(root: Path, **options: object) -> Judge:
    pipeline = Pipeline(load_pack(root), select(["onnxruntime-cpu"]))
    return Judge(pipeline, "site", "xr-1", IngestPolicy(), **options)  # type: ignore[arg-type]


def _chest(tmp_path: Path, seed: int = 3, size: int = 64) -> Path:
    ds, _ = make_dataset(seed, size=size)
    path = tmp_path / f"chest_{seed}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _drawn(tmp_path: Path, pixels: np.ndarray) -> Path:
    """A phantom DICOM file whose stored pixels are ``pixels`` (uint16, any shape)."""
    ds, _ = make_dataset(40, size=64)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path = tmp_path / "drawn.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _png(url: str) -> np.ndarray:
    assert url.startswith(PREFIX)
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(url[len(PREFIX):]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert picture is not None
    return picture


# -- derive: the task, the Secondary Capture, the verdict -------------------------------------


def test_a_derive_stage_gives_its_image_at_the_shape_it_read(tmp_path: Path) -> None:
    pipeline = Pipeline(load_pack(write_tiny_pack(tmp_path / "p", [VIEW, DERIVE])), select(["onnxruntime-cpu"]))
    image = np.random.default_rng(1).uniform(0, 1, (48, 80)).astype(np.float32)
    j = pipeline.judge(image)
    result = j.results["derive"]
    assert isinstance(result, DerivedResult) and result.description == "half brightness (test)"
    assert result.training_data == "synthetic-test" and result.image.shape == (48, 80)
    # The network halves its 32 x 32 input; the worker resizes it back to the image it read.
    want = resize(0.5 * resize(image, 32, 32), 48, 80)
    np.testing.assert_allclose(result.image, want, atol=1e-5)
    assert j.decision == "not_judged"  # a derived image never decides anything


def test_the_derived_image_is_a_secondary_capture_in_the_source_study(tmp_path: Path) -> None:
    root = write_tiny_pack(tmp_path / "p", [VIEW, DERIVE])
    source_path = _chest(tmp_path)
    source = dcmread(source_path)
    folder = tmp_path / "derived"
    outcome = _judge(root, derived_folder=folder)(source_path)
    assert outcome.kind == "verdict"
    jsonschema.validate(outcome.payload, SCHEMA)
    (entry,) = outcome.payload["derived"]
    assert entry["stage"] == "derive" and entry["error"] is None and entry["training_data"] == "synthetic-test"
    sc = dcmread(folder / entry["file"])
    assert sc.SOPClassUID == SECONDARY_CAPTURE and sc.file_meta.MediaStorageSOPClassUID == SECONDARY_CAPTURE
    # Same study and patient, new series and instance, named in the verdict.
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.AccessionNumber == source.AccessionNumber
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.SOPInstanceUID != source.SOPInstanceUID
    assert (entry["sop_instance_uid"], entry["series_instance_uid"]) == (sc.SOPInstanceUID, sc.SeriesInstanceUID)
    # It points back at the source, says how it was made and that it is synthetic-trained.
    for seq in (sc.ReferencedImageSequence, sc.SourceImageSequence):
        assert len(seq) == 1 and seq[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert seq[0].ReferencedSOPClassUID == source.SOPClassUID
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert "half brightness (test)" in sc.DerivationDescription and "derive" in sc.DerivationDescription
    assert "synthetic-trained, not for diagnosis" in sc.ImageComments.lower()
    assert sc.SeriesDescription == "half brightness (test)"
    # Its pixels: half the working image, 8 bits, the source's shape.
    assert sc.pixel_array.shape == (source.Rows, source.Columns) and sc.BitsStored == 8
    working = source.pixel_array / 65535.0
    want = resize(0.5 * resize(working.astype(np.float32), 32, 32), source.Rows, source.Columns)
    assert np.abs(sc.pixel_array / 255.0 - want).max() < 2.5 / 255.0
    # Judged again by the same pack: the same object, rewritten, not a twin.
    again = _judge(root, derived_folder=folder)(source_path)
    assert again.payload["derived"][0]["sop_instance_uid"] == sc.SOPInstanceUID
    assert len(list(folder.glob("*.dcm"))) == 1


def test_without_a_derived_folder_nothing_is_written_and_a_failed_write_is_a_value(tmp_path: Path) -> None:
    root = write_tiny_pack(tmp_path / "p", [VIEW, DERIVE])
    source_path = _chest(tmp_path)
    assert "derived" not in _judge(root)(source_path).payload
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    outcome = _judge(root, derived_folder=blocked / "sub")(source_path)
    assert outcome.kind == "verdict"
    (entry,) = outcome.payload["derived"]
    assert entry["file"] is None and entry["error"].startswith(("FileExistsError", "NotADirectoryError"))
    jsonschema.validate(outcome.payload, SCHEMA)


def test_without_a_derived_folder_the_derive_stage_does_not_run(tmp_path: Path) -> None:
    root = write_tiny_pack(tmp_path / "p", [VIEW, DERIVE])
    source_path = _chest(tmp_path)
    without, with_folder = _judge(root), _judge(root, derived_folder=tmp_path / "derived")
    assert without.skip_tasks == {"derive"} and with_folder.skip_tasks == frozenset()
    skipped, ran = without(source_path).payload, with_folder(source_path).payload
    # The stage's own clock only where it ran; the rest of the verdict is the same.
    assert "derive" not in skipped["timings_ms"] and "derive" in ran["timings_ms"]
    assert "derived" not in skipped and len(ran["derived"]) == 1
    assert (skipped["decision"], skipped["view"]) == (ran["decision"], ran["view"])
    # Only a task that never decides may be left out.
    pipeline = Pipeline(load_pack(root), select(["onnxruntime-cpu"]))
    image = np.zeros((40, 40), np.float32)
    assert "derive" not in pipeline.judge(image, None, {"derive"}).results
    with pytest.raises(ValueError, match="cannot be skipped"):
        pipeline.judge(image, None, {"classify"})


def test_malformed_derive_stages_are_refused_at_load(tmp_path: Path) -> None:
    two = dict(DERIVE, outputs={"soft_tissue": "(N, 1, 32, 32)", "bone": "(N, 1, 32, 32)"})
    with pytest.raises(PackError, match="exactly one output image"):
        load_pack(write_tiny_pack(tmp_path / "a", [VIEW, two]))
    long = dict(DERIVE, description="x" * 65)
    with pytest.raises(PackError, match="64 characters"):
        load_pack(write_tiny_pack(tmp_path / "b", [VIEW, long]))
    bare = {k: v for k, v in DERIVE.items() if k != "description"}
    with pytest.raises(PackError, match="description"):
        load_pack(write_tiny_pack(tmp_path / "c", [VIEW, bare]))


# -- heatmap overlays -------------------------------------------------------------------------


def test_heatmap_overlay_covers_the_whole_stored_image_and_is_off_by_default(tmp_path: Path) -> None:
    root = write_tiny_pack(tmp_path / "p", [VIEW, FLAGS, CAM])
    # 96 x 128 stored pixels, a bright block in the upper right (x 64..128, y 8..56): a quarter
    # of the image, so that the flags classifier finds it present.
    pixels = np.zeros((96, 128), np.uint16)
    pixels[8:56, 64:128] = 65535
    path = _drawn(tmp_path, pixels)
    plain = _judge(root)(path)
    assert plain.kind == "verdict" and "overlay" not in plain.payload["heatmaps"]["bright_spot"]
    outcome = _judge(root, heatmap_overlay_size=64)(path)
    jsonschema.validate(outcome.payload, SCHEMA)
    heat = outcome.payload["heatmaps"]["bright_spot"]
    assert heat["stage"] == "cam" and heat["research_only"] is False
    overlay = _png(heat["overlay"])
    assert overlay.shape == (48, 64)  # the stored aspect ratio, longer side 64
    assert overlay.max() == 255
    ys, xs = np.nonzero(overlay > 128)
    # The bright block at half scale: x 32..64, y 4..28.
    assert 44 <= xs.mean() <= 52 and 12 <= ys.mean() <= 20
    assert xs.min() >= 30 and ys.min() >= 2 and ys.max() <= 30
    assert "heatmap_overlay" in outcome.payload["timings_ms"]


def test_an_overlay_made_on_the_upright_image_is_turned_back_to_the_stored_frame() -> None:
    working = np.zeros((60, 80), np.float32)
    working[5:15, 60:75] = 1.0  # upper right in the stored frame
    upright, turn = turn_upright(working, 30.0)
    # A "CAM" that is exactly what the classifier saw of the block, at its 32 x 32 input.
    cam_map = resize(upright, 32, 32)
    back = stored_frame_map(cam_map, (60, 80), turn, read_upright=True)
    ys, xs = np.nonzero(back > 0.5)
    assert 60 <= xs.mean() <= 75 and 5 <= ys.mean() <= 15
    # Read on the working image, nothing is turned.
    same = stored_frame_map(resize(working, 32, 32), (60, 80), turn, read_upright=False)
    ys, xs = np.nonzero(same > 0.5)
    assert 60 <= xs.mean() <= 75 and 5 <= ys.mean() <= 15


def test_a_heatmap_on_a_classifier_without_features_is_refused_at_load_and_by_check(tmp_path: Path) -> None:
    on_view = dict(CAM, reads={"classifier": "view"})
    root = write_tiny_pack(tmp_path / "p", [VIEW, on_view])
    with pytest.raises(PackError, match="does not output 'features'"):
        load_pack(root)
    done = subprocess.run(
        [sys.executable, "-m", "edge_worker.cli", "check", "--pack", str(root), "--skip-broker",
         "--backend", "onnxruntime-cpu"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode != 0
    assert "does not output 'features'" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


# -- research-only stages ---------------------------------------------------------------------


def test_research_only_stages_are_labelled_in_the_verdict_and_never_decide(tmp_path: Path) -> None:
    flags = dict(FLAGS, research_only=True)
    cam = dict(CAM, research_only=True)
    sure = network("view_b", "classify", labels=["A", "B"], outputs={"logits": "(N, 2)"},
                   thresholds={"min_confidence": 0.9999}, research_only=True)  # fmt: skip
    root = write_tiny_pack(tmp_path / "p", [VIEW, flags, cam, sure])
    ordinary = write_tiny_pack(tmp_path / "o", [VIEW, FLAGS, CAM, {**sure, "research_only": False}])
    pixels = np.zeros((64, 64), np.uint16)
    pixels[32:, 28:] = 65535
    path = _drawn(tmp_path, pixels)
    payload = _judge(root)(path).payload
    plain = _judge(ordinary)(path).payload
    assert "research" not in plain and plain["flags"]["flags"]["present"] == ["bright_spot", "dark_field"]
    jsonschema.validate(payload, SCHEMA)
    research = payload["research"]
    assert research["flags"]["present"] == ["bright_spot", "dark_field"]
    assert research["flags"]["research_only"] is True and research["flags"]["notice"] == RESEARCH_NOTICE
    assert "not a diagnosis" in RESEARCH_NOTICE
    assert research["view_b"]["label"] == "A" and research["view_b"]["notice"] == RESEARCH_NOTICE
    assert "flags" not in payload  # not published as an ordinary finding
    assert all(h["research_only"] is True for h in payload["heatmaps"].values())
    # Found present (label_flagged) and below min_confidence (classify_uncertain) as ordinary
    # stages; as research stages neither reaches the decision.
    plain_codes = [r["code"] for r in plain["reasons"]]
    assert {"label_flagged", "classify_uncertain"} <= set(plain_codes)
    codes = [r["code"] for r in payload["reasons"]]
    assert codes == [c for c in plain_codes if c not in ("label_flagged", "classify_uncertain")]
    assert "quality_not_judged" in codes


def test_the_view_stage_cannot_be_research_only(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="view stage"):
        load_pack(write_tiny_pack(tmp_path / "p", [dict(VIEW, research_only=True)]))
    with pytest.raises(PackError, match="research_only: must be true or false"):
        load_pack(write_tiny_pack(tmp_path / "q", [VIEW, dict(FLAGS, research_only="yes")]))


# -- configuration ----------------------------------------------------------------------------


def test_overlay_and_derived_folder_settings(tmp_path: Path) -> None:
    from edge_worker.service.config import ConfigError, parse

    default = parse("")
    assert default.verdict.heatmap_overlay is False and default.derived.folder == ""
    on = parse(f'[verdict]\nheatmap_overlay = true\nheatmap_overlay_size = 96\n'
               f'[derived]\nfolder = "{tmp_path / "derived"}"\n')  # fmt: skip
    assert on.verdict.heatmap_overlay and on.verdict.heatmap_overlay_size == 96
    assert on.derived.folder == str(tmp_path / "derived")
    with pytest.raises(ConfigError, match="heatmap_overlay_size"):
        parse("[verdict]\nheatmap_overlay_size = 8\n")
    with pytest.raises(ConfigError, match="derived.folder: must not be the watch folder or inside it"):
        parse(f'[watch]\nfolder = "{tmp_path}"\n[derived]\nfolder = "{tmp_path / "sc"}"\n')
