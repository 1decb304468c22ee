"""JPEG 2000 decoding at reduced resolution through OpenJPEG's C API (ctypes).

Neither pylibjpeg-openjpeg (2.6) nor imagecodecs (2026.3) exposes OpenJPEG's resolution
reduction, yet both wheels ship the library itself: imagecodecs bundles ``libopenjp2``
(built with thread support) in ``imagecodecs.libs/``, and pylibjpeg-openjpeg links it
statically into ``_openjpeg*.so`` with every ``opj_*`` symbol exported.  This module calls
``opj_set_decoded_resolution_factor`` on whichever it finds first (:data:`LIBRARY_CANDIDATES`).

Skipping the r highest wavelet levels skips their code-blocks, which is where almost all of
the decoding time goes: at 1/4 scale a lossless 3000x3000 radiograph decodes in a tenth of
the time.  The stored values keep their meaning (the LL band of the reversible 5/3 wavelet is
a low-pass of the image at the same amplitude), so the grayscale chain applies unchanged.
Sample i of the reduced image is centred on stored pixel 2^r * i (an area resize centres it
on 2^r * i + (2^r - 1) / 2): at most 3.5 stored pixels apart at 1/8, nothing for QC boxes.

Only the API's stable parts are used: ``opj_image_t``/``opj_image_comp_t`` have kept their
layout since OpenJPEG 2.1; the decoder parameters are passed as an opaque buffer.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

#: Codestream signatures (ISO/IEC 15444-1 A.4.1 SOC+SIZ; the JP2 signature box, I.5.1).
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_CODEC_J2K, _CODEC_JP2 = 0, 2  # OPJ_CODEC_FORMAT
#: Oldest OpenJPEG whose threading and resolution factor we rely on.
MIN_VERSION = (2, 3)
#: OpenJPEG's threads decode code-blocks in parallel; more than four buys little here.
MAX_THREADS = 4
_PARAMS_BYTES = 1 << 14  # opj_dparameters_t is about 8.3 KB (two OPJ_PATH_LEN paths)

_Read = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_Skip = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_Seek = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_void_p)
_Message = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)


class _ImageComp(ctypes.Structure):
    _fields_ = [
        ("dx", ctypes.c_uint32),
        ("dy", ctypes.c_uint32),
        ("w", ctypes.c_uint32),
        ("h", ctypes.c_uint32),
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("prec", ctypes.c_uint32),
        ("bpp", ctypes.c_uint32),
        ("sgnd", ctypes.c_uint32),
        ("resno_decoded", ctypes.c_uint32),
        ("factor", ctypes.c_uint32),
        ("data", ctypes.POINTER(ctypes.c_int32)),
        ("alpha", ctypes.c_uint16),
    ]


class _Image(ctypes.Structure):
    _fields_ = [
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("x1", ctypes.c_uint32),
        ("y1", ctypes.c_uint32),
        ("numcomps", ctypes.c_uint32),
        ("color_space", ctypes.c_int),
        ("comps", ctypes.POINTER(_ImageComp)),
        ("icc_profile_buf", ctypes.c_void_p),
        ("icc_profile_len", ctypes.c_uint32),
    ]


class OpenJpegError(RuntimeError):
    """OpenJPEG refused the codestream; the message carries OpenJPEG's own error lines."""


def _site_file(module: str, pattern: str) -> list[str]:
    """Files matching ``pattern`` next to the installed ``module`` (not imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return []
    return sorted(glob.glob(str(Path(spec.origin).parent / pattern)))


#: Where libopenjp2 is looked for, in order: the threaded build inside the imagecodecs wheel,
#: then the static copy inside pylibjpeg-openjpeg's extension module.  (name, finder)
LIBRARY_CANDIDATES: tuple[tuple[str, Callable[[], list[str]]], ...] = (
    ("imagecodecs", lambda: _site_file("imagecodecs", "../imagecodecs.libs/libopenjp2*.so*")),
    ("pylibjpeg-openjpeg", lambda: _site_file("_openjpeg", "_openjpeg*.so")),
)


@dataclass(frozen=True)
class Library:
    """A loaded libopenjp2 with the signatures this module uses declared."""

    path: str
    version: str
    threads: bool
    lib: ctypes.CDLL


def _declare(lib: ctypes.CDLL) -> None:
    """Set argtypes/restype for every function called (ctypes defaults to int otherwise)."""
    p, b, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    for name, res, args in (
        ("opj_version", ctypes.c_char_p, []),
        ("opj_has_thread_support", b, []),
        ("opj_create_decompress", p, [b]),
        ("opj_set_default_decoder_parameters", None, [p]),
        ("opj_setup_decoder", b, [p, p]),
        ("opj_codec_set_threads", b, [p, b]),
        ("opj_set_error_handler", b, [p, _Message, p]),
        ("opj_set_warning_handler", b, [p, _Message, p]),
        ("opj_stream_create", p, [ctypes.c_size_t, b]),
        ("opj_stream_set_read_function", None, [p, _Read]),
        ("opj_stream_set_skip_function", None, [p, _Skip]),
        ("opj_stream_set_seek_function", None, [p, _Seek]),
        ("opj_stream_set_user_data_length", None, [p, ctypes.c_uint64]),
        ("opj_read_header", b, [p, p, ctypes.POINTER(ctypes.POINTER(_Image))]),
        ("opj_set_decoded_resolution_factor", b, [p, u32]),
        ("opj_decode", b, [p, p, ctypes.POINTER(_Image)]),
        ("opj_end_decompress", b, [p, p]),
        ("opj_image_destroy", None, [ctypes.POINTER(_Image)]),
        ("opj_stream_destroy", None, [p]),
        ("opj_destroy_codec", None, [p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args


@cache
def library() -> Library | str:
    """The first usable libopenjp2, or a string saying why none is (the availability probe)."""
    tried: list[str] = []
    for name, finder in LIBRARY_CANDIDATES:
        paths = finder()
        if not paths:
            tried.append(f"{name}: not installed")
            continue
        try:
            lib = ctypes.CDLL(paths[0])
            _declare(lib)
            version = (lib.opj_version() or b"0").decode("ascii", "replace")
        except (OSError, AttributeError) as exc:  # no such file, or a symbol missing
            tried.append(f"{name}: {exc}")
            continue
        numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
        if numbers < MIN_VERSION:
            tried.append(f"{name}: OpenJPEG {version} is older than 2.3")
            continue
        return Library(paths[0], version, bool(lib.opj_has_thread_support()), lib)
    return "libopenjp2 not found (" + "; ".join(tried) + ")"


def thread_count() -> int:
    """Threads for one decode: the CPUs this process may use, at most :data:`MAX_THREADS`."""
    return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))


@dataclass(frozen=True)
class Decoded:
    """A decoded component: stored values and the reduction actually applied (2**levels)."""

    pixels: np.ndarray
    factor: int
    precision: int
    signed: bool


def decode(
    data: bytes, rows: int, columns: int, levels: int, lib: Library | None = None
) -> Decoded:
    """Decode a single-component JPEG 2000 codestream, skipping up to ``levels`` resolutions.

    The codestream's size must equal ``rows`` x ``columns`` (checked after the header is read,
    before any image buffer exists).  Fewer levels are skipped when the codestream has fewer
    decompositions.  Returns uint16/int16 (uint8/int8 up to 8 bits) stored values.  Raises
    :class:`OpenJpegError` for anything OpenJPEG refuses, or when no library is available.
    """
    found = lib or library()
    if isinstance(found, str):
        raise OpenJpegError(found)
    opj = found.lib
    if data.startswith(J2K_SOC_SIZ):
        fmt = _CODEC_J2K
    elif data.startswith(JP2_SIGNATURE):
        fmt = _CODEC_JP2
    else:
        raise OpenJpegError(f"not a JPEG 2000 codestream (starts {data[:4].hex()})")
    errors: list[str] = []
    position = 0
    base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0

    # The stream reads from ``data`` in place; the callbacks run on this thread (OpenJPEG's
    # worker threads only decode code-blocks already in memory).
    def read(buffer: int, size: int, _user: int) -> int:
        nonlocal position
        count = min(size, len(data) - position)
        if count <= 0:
            return ctypes.c_size_t(-1).value  # (OPJ_SIZE_T)-1 is OpenJPEG's end of stream
        ctypes.memmove(buffer, base + position, count)
        position += count
        return count

    def skip(count: int, _user: int) -> int:
        nonlocal position
        moved = max(-position, min(count, len(data) - position))
        position += moved
        return moved if moved or count == 0 else -1

    def seek(target: int, _user: int) -> int:
        nonlocal position
        if not 0 <= target <= len(data):
            return 0
        position = target
        return 1

    def on_error(message: bytes, _user: int) -> None:
        errors.append(message.decode("latin-1").strip())

    callbacks = (
        _Read(read),
        _Skip(skip),
        _Seek(seek),
        _Message(on_error),
        _Message(lambda m, u: None),
    )
    codec = stream = None
    image = ctypes.POINTER(_Image)()
    try:
        codec = opj.opj_create_decompress(fmt)
        stream = opj.opj_stream_create(1 << 16, 1)
        if not codec or not stream:
            raise OpenJpegError("OpenJPEG could not create a decoder")
        opj.opj_set_error_handler(codec, callbacks[3], None)
        opj.opj_set_warning_handler(codec, callbacks[4], None)
        params = ctypes.create_string_buffer(_PARAMS_BYTES)
        opj.opj_set_default_decoder_parameters(params)
        opj.opj_stream_set_read_function(stream, callbacks[0])
        opj.opj_stream_set_skip_function(stream, callbacks[1])
        opj.opj_stream_set_seek_function(stream, callbacks[2])
        opj.opj_stream_set_user_data_length(stream, len(data))

        def check(ok: int, what: str) -> None:
            if not ok:
                raise OpenJpegError(f"{what} failed: " + ("; ".join(errors) or "no detail"))

        check(opj.opj_setup_decoder(codec, params), "opj_setup_decoder")
        if found.threads:
            opj.opj_codec_set_threads(codec, thread_count())
        check(opj.opj_read_header(stream, codec, ctypes.byref(image)), "opj_read_header")
        head = image.contents
        width, height = head.x1 - head.x0, head.y1 - head.y0
        if head.numcomps != 1 or (height, width) != (rows, columns):
            raise OpenJpegError(
                f"codestream holds {head.numcomps} component(s) of {height}x{width}, "
                f"the header says 1 of {rows}x{columns}"
            )
        comp = head.comps[0]
        if not 1 <= comp.prec <= 16 or (comp.dx, comp.dy) != (1, 1):
            raise OpenJpegError(f"unsupported precision {comp.prec} or subsampling")
        # opj_set_decoded_resolution_factor refuses a factor >= the number of resolutions.
        applied = max(0, levels)
        while applied > 0 and not opj.opj_set_decoded_resolution_factor(codec, applied):
            applied -= 1
        errors.clear()
        check(opj.opj_decode(codec, stream, image), "opj_decode")
        check(opj.opj_end_decompress(codec, stream), "opj_end_decompress")
        comp = image.contents.comps[0]
        if not comp.data or comp.w == 0 or comp.h == 0:
            raise OpenJpegError("OpenJPEG returned no pixel data")
        values = np.ctypeslib.as_array(comp.data, shape=(comp.h, comp.w))
        kind = ("i" if comp.sgnd else "u") + ("1" if comp.prec <= 8 else "2")
        # astype copies out of OpenJPEG's buffer, which opj_image_destroy frees below.
        return Decoded(values.astype(kind), 1 << applied, int(comp.prec), bool(comp.sgnd))
    finally:
        if image:
            opj.opj_image_destroy(image)
        if stream:
            opj.opj_stream_destroy(stream)
        if codec:
            opj.opj_destroy_codec(codec)
