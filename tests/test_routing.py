"""Routing by body part: each image goes to the pack for its body part, never a wrong one."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_worker.backends import select
from edge_worker.errors import ConfigError, Rejection, RejectReason
from edge_worker.judging.routing import Router, parse_synonyms
from edge_worker.packs.pack import load_pack
from edge_worker.pipeline.runner import Pipeline
from tests.packs import pack_as


def _pack_as(tmp_path: Path, name: str, parts: list[str]) -> Path:
    """The demo pack's files under another name and body parts (a stand-in second pack)."""
    return pack_as(tmp_path / name, name=name, body_parts=parts)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, Pipeline]:
    tmp = tmp_path_factory.mktemp("packs")
    cpu = select(["onnxruntime-cpu"])
    ankle = Pipeline(load_pack(), cpu)
    chest = Pipeline(load_pack(_pack_as(tmp, "chest-test", ["CHEST"])), cpu)
    return ankle, chest


def test_synonyms_parse_and_refuse_garbage() -> None:
    assert parse_synonyms(["thorax = chest", "CXR=CHEST"]) == {"THORAX": "CHEST", "CXR": "CHEST"}
    with pytest.raises(ConfigError, match="ALIAS=PART"):
        parse_synonyms(["THORAX"])


def test_each_body_part_goes_to_its_pack(pipelines: tuple[Pipeline, Pipeline]) -> None:
    ankle, chest = pipelines
    router = Router([ankle, chest], parse_synonyms(["THORAX=CHEST"]))
    assert router.route("ANKLE") is ankle
    assert router.route(" chest ") is chest
    assert router.route("THORAX") is chest


def test_uncovered_body_part_is_refused_not_judged(pipelines: tuple[Pipeline, Pipeline]) -> None:
    ankle, chest = pipelines
    router = Router([ankle, chest])
    for part, shown in (("HIP", "'HIP'"), ("", "no BodyPartExamined")):
        with pytest.raises(Rejection) as err:
            router.route(part)
        assert err.value.reason is RejectReason.NO_PACK_FOR_BODY_PART
        assert shown in err.value.detail and "ankle-demo: ANKLE" in err.value.detail


def test_default_pack_takes_the_rest(pipelines: tuple[Pipeline, Pipeline]) -> None:
    ankle, chest = pipelines
    assert Router([ankle, chest], default="ankle-demo").route("HIP") is ankle
    with pytest.raises(ConfigError, match="no loaded pack is named 'knee'"):
        Router([ankle, chest], default="knee")


def test_two_packs_for_one_body_part_are_refused(pipelines: tuple[Pipeline, Pipeline]) -> None:
    ankle, _ = pipelines
    with pytest.raises(ConfigError, match="both cover body part ANKLE"):
        Router([ankle, ankle])
