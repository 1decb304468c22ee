"""The decoder table: for each transfer syntax, the decoders to try, fastest first.

Each decoder is a small object behind :class:`Decoder`: a ``name``, an availability probe
(:meth:`Decoder.missing` says what is not installed) and :meth:`Decoder.decode`, which may
decode at reduced resolution and says by how much.  :data:`DECODERS` is the one explicit
table; nothing is discovered by scanning.  Libraries are imported on first use.

Why this order (2-core AMD EPYC, 3000x3000 16-bit, see BENCHMARKS.md "## Decode"):

* JPEG 2000 / HTJ2K: OpenJPEG through ctypes (:mod:`edge_worker.ingest.openjp2`) decodes
  at 1/2^r scale, skipping the finest wavelet levels: 38 ms at 1/4 against 500 ms at full
  size with two threads and 1,100 ms through pydicom's default plugin.
* JPEG lossless and 12-bit extended: libjpeg-turbo (imagecodecs) 42 ms against 380 ms for
  pylibjpeg-libjpeg, and it decodes the 12-bit Process 4 files that libjpeg refuses.
* JPEG-LS: CharLS (imagecodecs) 123 ms against 800 ms for pylibjpeg-libjpeg.
* 8-bit JPEG baseline: libjpeg-turbo's DCT scaling through OpenCV (1/2, 1/4, 1/8).
* Native and RLE: pydicom (numpy; pylibjpeg-rle) are already fast.

pydicom's own decoder stays last everywhere: if a fast decoder is missing or fails, pydicom's
plugins get the frame, and the final error lists every decoder's failure.  The exception is
a decoder marked ``final`` (CharLS): its failure on the data ends the search.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from edge_worker.ingest import openjp2

#: Largest reduction any decoder is asked for; each clamps it to what its codec can do.
MAX_FACTOR = 32


@dataclass(frozen=True)
class Frame:
    """One frame to decode and what the header says it must become."""

    ds: Dataset
    transfer_syntax: str
    #: The codestream (all fragments of the single frame joined); empty for native data.
    data: bytes
    rows: int
    columns: int
    bits_allocated: int
    #: Reduction wanted (a power of two, 1 = full size); a decoder may apply less.
    factor: int = 1


class Declined(Exception):
    """A decoder does not handle this frame (not a failure: the next one is tried)."""


class Decoder(Protocol):
    """A way to decode frames; see the module docstring for the table."""

    name: str
    #: When this decoder ran and failed, its verdict on the data stands: no fallback.
    final: bool

    def missing(self, transfer_syntax: str) -> str | None:
        """``None`` when usable for ``transfer_syntax``, else what is missing."""

    def decode(self, frame: Frame) -> tuple[np.ndarray, int]:
        """Stored values (2-D) and the reduction applied; raises on failure, or Declined."""


def _levels(factor: int) -> int:
    """Wavelet levels to skip for a power-of-two ``factor``."""
    return max(0, int(math.log2(max(1, factor))))


class OpenJpeg:
    """JPEG 2000 and HTJ2K at reduced resolution through OpenJPEG's C API."""

    name = "openjpeg"
    final = False

    def missing(self, transfer_syntax: str) -> str | None:
        found = openjp2.library()
        return found if isinstance(found, str) else None

    def decode(self, frame: Frame) -> tuple[np.ndarray, int]:
        out = openjp2.decode(frame.data, frame.rows, frame.columns, _levels(frame.factor))
        return out.pixels, out.factor


@cache
def _imagecodecs_probe(codec: str) -> str | None:
    """Why imagecodecs' ``codec`` cannot be used, or None.  Cached: it imports imagecodecs."""
    if importlib.util.find_spec("imagecodecs") is None:
        return "imagecodecs is not installed"
    module: Any = importlib.import_module("imagecodecs")
    if not getattr(getattr(module, codec, None), "available", False):
        return f"imagecodecs {module.__version__} was built without {codec}"
    return None


class Imagecodecs:
    """One of imagecodecs' decode functions; ``skipres`` marks HTJ2K's resolution skipping."""

    def __init__(
        self, codec: str, function: str, skipres: bool = False, final: bool = False
    ) -> None:
        self.codec, self.function, self.skipres, self.final = codec, function, skipres, final
        self.name = f"imagecodecs.{function}"

    def missing(self, transfer_syntax: str) -> str | None:
        return _imagecodecs_probe(self.codec)

    def decode(self, frame: Frame) -> tuple[np.ndarray, int]:
        fn = getattr(importlib.import_module("imagecodecs"), self.function)
        if self.skipres:
            levels = _levels(frame.factor)
            return fn(frame.data, skipres=levels), 1 << levels
        return fn(frame.data), 1


class OpenCvJpeg:
    """8-bit JPEG decoded at 1/2, 1/4 or 1/8 scale by libjpeg-turbo's DCT scaling (OpenCV)."""

    name = "opencv-reduced"
    final = False

    def missing(self, transfer_syntax: str) -> str | None:
        return None if importlib.util.find_spec("cv2") else "opencv-python-headless"

    def decode(self, frame: Frame) -> tuple[np.ndarray, int]:
        factor = min(frame.factor, 8)
        if factor < 2 or frame.bits_allocated != 8:
            raise Declined  # full size, or more than 8 bits: OpenCV would return 8-bit
        import cv2

        flags = {
            2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
            4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
        }[factor] | cv2.IMREAD_IGNORE_ORIENTATION
        arr = cv2.imdecode(np.frombuffer(frame.data, dtype=np.uint8), flags)
        if arr is None:
            raise ValueError("OpenCV could not decode the JPEG frame")
        return arr, factor


class Pydicom:
    """pydicom's decoder for the syntax; ``plugin`` "" lets it try every installed plugin."""

    final = False

    def __init__(self, plugin: str = "") -> None:
        self.plugin = plugin
        self.name = f"pydicom/{plugin}" if plugin else "pydicom"

    def missing(self, transfer_syntax: str) -> str | None:
        decoder = get_decoder(UID(transfer_syntax))
        if self.plugin:
            if self.plugin in decoder.available_plugins:
                return None
            reasons = decoder.missing_dependencies
            return next((r for r in reasons if r.startswith(self.plugin)), self.plugin)
        if decoder.is_available:
            return None
        return "; ".join(decoder.missing_dependencies) or "no plugin installed"

    def decode(self, frame: Frame) -> tuple[np.ndarray, int]:
        arr, _ = get_decoder(UID(frame.transfer_syntax)).as_array(
            frame.ds, index=0, raw=True, decoding_plugin=self.plugin
        )
        return arr, 1


_OPENJPEG = OpenJpeg()
_JPEG8 = Imagecodecs("JPEG8", "jpeg8_decode")
# CharLS is strict and complete (all of T.87); when it finds a stream broken, pydicom's
# fallback (pylibjpeg-libjpeg) would spend seconds decoding the damage into an image.
_JPEGLS = Imagecodecs("JPEGLS", "jpegls_decode", final=True)
_PYDICOM = Pydicom()
#: Transfer syntax -> decoders, tried in order.  A syntax absent here is not supported.
DECODERS: dict[str, tuple[Decoder, ...]] = {
    ImplicitVRLittleEndian: (_PYDICOM,),
    ExplicitVRLittleEndian: (_PYDICOM,),
    ExplicitVRBigEndian: (_PYDICOM,),
    DeflatedExplicitVRLittleEndian: (_PYDICOM,),
    # pydicom tries its own (slow, pure numpy) RLE decoder before pylibjpeg-rle by default.
    RLELossless: (Pydicom("pylibjpeg"), _PYDICOM),
    JPEGBaseline8Bit: (OpenCvJpeg(), _JPEG8, _PYDICOM),
    JPEGExtended12Bit: (OpenCvJpeg(), _JPEG8, _PYDICOM),
    JPEGLossless: (_JPEG8, _PYDICOM),
    JPEGLosslessSV1: (_JPEG8, _PYDICOM),
    JPEGLSLossless: (_JPEGLS, _PYDICOM),  # pydicom only where imagecodecs is missing
    JPEGLSNearLossless: (_JPEGLS, _PYDICOM),
    # imagecodecs.jpeg2k_decode is left out: it is the same OpenJPEG, without reduction.
    JPEG2000Lossless: (_OPENJPEG, _PYDICOM),
    JPEG2000: (_OPENJPEG, _PYDICOM),
    HTJ2KLossless: (_OPENJPEG, Imagecodecs("HTJ2K", "htj2k_decode", skipres=True), _PYDICOM),
    HTJ2KLosslessRPCL: (_OPENJPEG, Imagecodecs("HTJ2K", "htj2k_decode", skipres=True), _PYDICOM),
    HTJ2K: (_OPENJPEG, Imagecodecs("HTJ2K", "htj2k_decode", skipres=True), _PYDICOM),
}
NATIVE = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)
