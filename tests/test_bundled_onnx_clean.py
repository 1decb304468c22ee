"""Every ONNX file the repository ships carries its graph and nothing of the machine that
exported it: torch's exporter records each node's source stack trace (file paths of the
exporting machine's Python installation) unless :func:`export.onnx.strip_build_metadata`
removes it, and every exporter here calls it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([*(ROOT / "models" / "packs").rglob("*.onnx"),
                *(ROOT / "tests" / "data").rglob("*.onnx")])  # fmt: skip


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_shipped_onnx_file_names_no_path_of_its_build_machine(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    data = path.read_bytes()
    for marker in (b"site-packages", b"/root/", b"/home/", b"torch/nn/modules"):
        assert marker not in data, f"{path.name} carries {marker!r}"
    model = onnx.load_from_string(data)
    graphs = [model.graph, *model.functions]
    assert not any(node.metadata_props or node.doc_string for g in graphs for node in g.node)


def test_the_stripper_removes_what_the_exporter_records(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from export.onnx import strip_build_metadata

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
    path = tmp_path / "tiny.onnx"
    program = torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), dynamo=True, verbose=False)
    assert program is not None
    program.save(str(path))
    assert b"torch/nn/modules" in path.read_bytes()  # what the exporter leaves
    strip_build_metadata(path)
    assert b"torch/nn/modules" not in path.read_bytes()
