"""The decode budget: predicted allocations refused before decoding, the rest bounded in a
separate, limited decode process; a real daemon under a memory limit survives a memory bomb.

Two real bombs, each a DICOM file of about 1.4 KB whose JPEG 2000 codestream agrees with its
header (the codestream checks pass):

* ``size bomb``: 8192 x 8192 (allowed by ``ingest.max_side``) in one tile; decoding it needs
  about 420 MiB of pixel buffers.  The prediction refuses it before any allocation.
* ``tile bomb``: 4096 x 4096 in 58,081 tiles of 17 x 17; the pixels would fit the budget, but
  OpenJPEG allocates about 590 MB of tile structures from the SIZ marker alone (680 MB peak
  RSS in process).  Only the hard bound of the decode process stops it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Mosquitto, Subscriber
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from edge_worker.errors import ConfigError, Rejection, RejectReason
from edge_worker.ingest import read_radiograph
from edge_worker.ingest.budget import predicted_bytes
from edge_worker.ingest.reader import read_header
from edge_worker.ingest.sandbox import DecodeSandbox
from edge_worker.ingest.types import IngestPolicy
from edge_worker.phantoms.ankle import make_dataset, write_phantom
from edge_worker.service.config import parse
from tests.stations import PhantomStock, Station

BUDGET_MIB = 256


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def j2k_codestream(side: int, tile: int) -> bytes:
    """A JPEG 2000 codestream (ISO/IEC 15444-1 A.5) of ``side``^2 16-bit samples in ``tile``^2
    tiles, with one empty tile-part: SIZ, COD (5 levels), QCD, SOT, SOD, EOC."""
    siz = struct.pack(">HIIIIIIIIH", 0, side, side, 0, 0, tile, tile, 0, 0, 1) + bytes([15, 1, 1])
    cod = bytes([0, 0]) + struct.pack(">H", 1) + bytes([0, 5, 4, 4, 0, 1])
    qcd = bytes([0x40]) + bytes([0x48] * 16)
    sot = _segment(0x90, struct.pack(">HIBB", 0, 0, 0, 1))
    return (b"\xff\x4f" + _segment(0x51, siz) + _segment(0x52, cod) + _segment(0x5C, qcd)
            + sot + b"\xff\x93\xff\xd9")  # fmt: skip


def write_bomb(path: Path, side: int, tile: int, seed: int = 7) -> Path:
    """A DX DICOM file whose header and codestream agree on ``side`` x ``side``."""
    ds, _ = make_dataset(seed, size=256)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = encapsulate([j2k_codestream(side, tile)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "size": write_bomb(folder / "size-bomb.dcm", 8192, 8192, seed=7),
        "tiles": write_bomb(folder / "tile-bomb.dcm", 4096, 17, seed=8),
    }


@pytest.fixture
def sandbox() -> Iterator[DecodeSandbox]:
    box = DecodeSandbox(BUDGET_MIB, 20.0)
    box.start()
    try:
        yield box
    finally:
        box.stop()


def test_bombs_are_small_and_agree_with_their_header(bombs: dict[str, Path]) -> None:
    for path in bombs.values():
        assert path.stat().st_size < 4096
        header = read_header(path)  # the header checks pass: only the budget can refuse it
        assert header.rows == header.columns >= 4096


def test_prediction_refuses_before_any_allocation(bombs: dict[str, Path]) -> None:
    policy = IngestPolicy(decode_memory_mib=BUDGET_MIB)
    tracemalloc.start()
    try:
        with pytest.raises(Rejection) as caught:
            read_radiograph(bombs["size"], policy, max_side=512)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason is RejectReason.DECODE_BUDGET
    assert "decode_memory_mib" in caught.value.detail
    assert peak < 2_000_000  # the decoded 8192^2 image alone would be 128 MiB


def test_prediction_admits_a_3000_square_16_bit_radiograph_at_the_default(tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    write_phantom(path, seed=3, size=256)
    header = read_header(path)
    big = dataclasses.replace(header, rows=3000, columns=3000, transfer_syntax=str(JPEG2000Lossless))
    need = predicted_bytes(big, file_bytes=18_000_000, reduce=4)
    assert need < IngestPolicy().decode_memory_mib << 20
    assert need > 3000 * 3000 * 2  # at least the stored image


def test_sandbox_bounds_a_decode_the_prediction_cannot_see(
    bombs: dict[str, Path], sandbox: DecodeSandbox, tmp_path: Path
) -> None:
    policy = IngestPolicy(decode_memory_mib=BUDGET_MIB)
    with pytest.raises(Rejection) as caught:
        sandbox.read(bombs["tiles"], policy, max_side=512)
    assert caught.value.reason is RejectReason.DECODE_BUDGET
    assert "memory" in caught.value.detail
    # The same child goes on with the next file.
    good = tmp_path / "good.dcm"
    write_phantom(good, seed=4, size=512)
    image = sandbox.read(good, policy, max_side=512)
    assert image.pixels.shape == (512, 410)
    assert sandbox.starts == 1


def test_sandbox_result_equals_the_in_process_read(sandbox: DecodeSandbox, tmp_path: Path) -> None:
    good = tmp_path / "good.dcm"
    write_phantom(good, seed=5, size=512)
    here = read_radiograph(good, IngestPolicy(), max_side=256)
    there = sandbox.read(good, IngestPolicy(), max_side=256)
    assert there.header == here.header and there.pixel_digest == here.pixel_digest
    assert (there.pixels == here.pixels).all()


def test_sandbox_stops_a_slow_decode_and_restarts(sandbox: DecodeSandbox, tmp_path: Path) -> None:
    good = tmp_path / "good.dcm"
    write_phantom(good, seed=6, size=512)
    # A decode that never answers, whatever the machine's speed: the child is stopped (SIGSTOP)
    # before the request, so only the timeout can end the wait.
    pid = sandbox.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    sandbox.timeout_s = 0.5
    with pytest.raises(Rejection) as caught:
        sandbox.read(good, IngestPolicy(), max_side=512)
    assert caught.value.reason is RejectReason.DECODE_BUDGET
    assert "decode_timeout_seconds" in caught.value.detail
    sandbox.timeout_s = 20.0
    assert sandbox.read(good, IngestPolicy(), max_side=512).pixels.shape == (512, 410)
    assert sandbox.starts == 2


def test_sandbox_death_is_a_rejection_and_the_next_file_gets_a_fresh_child(
    sandbox: DecodeSandbox, tmp_path: Path
) -> None:
    good = tmp_path / "good.dcm"
    write_phantom(good, seed=9, size=512)
    pid = sandbox.pid()
    assert pid is not None
    # A child gone while idle is replaced without failing anyone's file.
    os.kill(pid, signal.SIGKILL)
    assert sandbox._proc is not None
    sandbox._proc.wait(10)
    assert sandbox.read(good, IngestPolicy(), max_side=512).pixels.shape == (512, 410)
    assert sandbox.starts == 2 and sandbox.pid() != pid


def test_budget_fields_are_validated() -> None:
    base = 'site = "s"\nstation = "x"\n[ingest]\n'
    assert parse(base + "decode_memory_mib = 512\n").ingest.decode_memory_mib == 512
    for bad in ("decode_memory_mib = 10", "decode_memory_mib = 100000",
                "decode_timeout_seconds = 0", "decode_timeout_seconds = 601.0"):  # fmt: skip
        with pytest.raises(ConfigError, match="ingest.decode_"):
            parse(base + bad + "\n")


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_daemon_under_a_memory_limit_survives_memory_bombs(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], bombs: dict[str, Path]
) -> None:
    stock = PhantomStock(tmp_path / "stock", size=512)
    station = Station(
        tmp_path / "station", mosquitto.url,
        tables={"ingest": {"decode_memory_mib": BUDGET_MIB}, "inference": {"batch_files": 1}},
        # A systemd MemoryMax in spirit: the daemon and its decode process under one limit.
        wrapper=("prlimit", f"--as={6 << 30}"),
    )  # fmt: skip
    try:
        sub = subscriber(mosquitto, f"{station.base}/verdict", f"{station.base}/error")
        station.start()
        for name, path in bombs.items():
            shutil.copyfile(path, station.watch / f".{name}.part")
            os.replace(station.watch / f".{name}.part", station.watch / f"{name}-bomb.dcm")
        errors = sub.wait_for(f"{station.base}/error", 2, timeout=120)
        stock.drop(1, station.watch, "good.dcm")
        sub.wait_for(f"{station.base}/verdict", 1, timeout=120)
        assert station.alive()
        reasons = {json.loads(m.payload)["quarantined_as"]: json.loads(m.payload)["reason"] for m in errors}
        assert sorted(reasons.values()) == ["decode_budget_exceeded"] * 2
        for name in reasons:
            assert (station.quarantine / name).is_file()
        assert station.starts == 1
    finally:
        station.close()
