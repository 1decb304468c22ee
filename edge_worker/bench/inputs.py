"""Benchmark inputs: realistic radiograph files, written once into a cache, and unique copies.

Base files are phantoms (:mod:`edge_worker.phantoms.ankle`) at ``size`` rows (columns are 0.8 of it:
3000 x 2400 at the default, a 43 x 35 cm detector at 0.14 mm), DX, alternating AP/LAT,
grades 1-3, bits stored 14, 15 and 16, both photometric interpretations.  Each is written
uncompressed (Explicit VR Little Endian) and as JPEG 2000 lossless encoded by pydicom's
pylibjpeg plugin (OpenJPEG), as a modality would send them.

A benchmark needs many distinct files (the worker's journal and the verdict id are keyed by
the SOP Instance UID), but encoding 200 JPEG 2000 files would take minutes.  A copy with a
fresh SOP Instance UID is made by replacing the UID's bytes (same length) in the file: the
pixel data, and so the decoding work, stay those of the base file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Encodings the benchmark knows, by the name used in reports.
ENCODINGS = ("uncompressed", "jpeg2000")
#: Recipe version of the cached files: bump to regenerate every cache.
RECIPE = "bench-inputs@1"
_COUNTER_DIGITS = 8


@dataclass(frozen=True)
class BaseFile:
    """A cached base radiograph: its bytes and the UID that copies replace."""

    path: Path
    data: bytes
    uid: bytes

    def copy_to(self, dest: Path, serial: int) -> str:
        """Write a copy with a new SOP Instance UID numbered ``serial``; returns the UID.

        The file is written and closed at ``dest`` (a close-write event for a watcher).
        """
        uid = unique_uid(self.uid, serial)
        with open(dest, "wb") as handle:
            handle.write(self.data.replace(self.uid, uid))
        return uid.decode("ascii")


def unique_uid(base: bytes, serial: int) -> bytes:
    """``base`` with its last digits replaced by ``serial``: same length, still a valid UID.

    The phantom UIDs end in a component of about 38 digits, so the replaced digits never
    become the start of a component (a leading zero would be invalid, PS3.5 9.1).
    """
    head = base.rstrip(b"\x00 ")
    tail = head[-_COUNTER_DIGITS:]
    if not tail.isdigit() or b"." in head[-_COUNTER_DIGITS - 1 :]:
        raise ValueError(f"UID {head!r} does not end in a long numeric component")
    return head[:-_COUNTER_DIGITS] + f"{serial % 10**_COUNTER_DIGITS:0{_COUNTER_DIGITS}d}".encode()


def _write_base(path: Path, index: int, size: int, encoding: str) -> None:
    """Write base phantom ``index`` at ``size`` rows in ``encoding`` (atomically)."""
    from pydicom.uid import JPEG2000Lossless

    from edge_worker.phantoms.ankle import make_dataset

    ds, _ = make_dataset(
        4242 + index,
        view=("AP", "LAT")[index % 2],
        grade=1 + index % 3,
        modality="DX",
        photometric=("MONOCHROME2", "MONOCHROME1")[(index // 2) % 2],
        bits_stored=(14, 15, 16)[index % 3],
        size=size,
        index=index + 1,
    )
    if encoding == "jpeg2000":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    elif encoding != "uncompressed":
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    partial = path.with_name(f".{path.name}.tmp")
    ds.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)


def base_files(cache: Path, encoding: str, count: int, size: int) -> list[BaseFile]:
    """``count`` base files of ``size`` rows in ``encoding``, made on first use in ``cache``."""
    import pydicom

    folder = cache / "inputs" / f"{RECIPE}-{size}" / encoding
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        path = folder / f"base_{index:02d}.dcm"
        if not path.is_file():
            _write_base(path, index, size, encoding)
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID).encode("ascii")
        files.append(BaseFile(path, path.read_bytes(), uid))
    return files


def describe(files: list[BaseFile]) -> dict[str, object]:
    """What a report says about the inputs: size, bits, transfer syntax, file sizes."""
    import pydicom

    heads = [pydicom.dcmread(f.path, stop_before_pixels=True) for f in files]
    return {
        "count": len(files),
        "rows": int(heads[0].Rows),
        "columns": int(heads[0].Columns),
        "bits_stored": sorted({int(h.BitsStored) for h in heads}),
        "transfer_syntax": str(heads[0].file_meta.TransferSyntaxUID.name),
        "mean_file_mb": round(sum(len(f.data) for f in files) / len(files) / 1e6, 2),
    }
