"""The grayscale chain: stored pixel values -> display-ready float32 in [0, 1], bone bright.

Every step is a pure function ``(array, metadata) -> array`` applied in the order of the
standard's grayscale pipeline (PS3.3 C.11, PS3.4 N.2.1):

    stored_values -> [box_reduce] -> modality_lut -> voi (LUT sequence, else window, else
    percentile) -> polarity (MONOCHROME1 inversion, after VOI) -> float32 [0, 1]

:class:`GrayscaleMeta` holds the few attributes the chain reads; it is built once from a
pydicom dataset (:func:`meta_from_dataset`) or by hand in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

#: Percentiles of the robust window used when a file carries no VOI transform.
DEFAULT_PERCENTILES = (1.0, 99.0)
#: The percentile window looks at no more than about this many pixels (strided subsample).
_PERCENTILE_SAMPLES = 1 << 18


@dataclass(frozen=True)
class Lut:
    """A Modality or VOI LUT (PS3.3 C.11.1.1.1 / C.11.2.1.1): ``data[i]`` maps ``first + i``."""

    first_mapped: int
    bits: int
    data: np.ndarray


@dataclass(frozen=True)
class GrayscaleMeta:
    """The attributes the chain reads, already parsed (first value of multi-valued ones)."""

    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    signed: bool = False
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    modality_lut: Lut | None = None
    voi_lut: Lut | None = None
    window_center: float | None = None
    window_width: float | None = None
    voi_lut_function: str = "LINEAR"
    padding_value: int | None = None
    padding_range_limit: int | None = None


def _first(value: Any) -> Any:
    """The first value of a possibly multi-valued element (C.11.2.1.2: several windows)."""
    if value is None or isinstance(value, (str, bytes, int, float)):
        return value
    try:
        return value[0]
    except (TypeError, IndexError):
        return value


def lut_from_item(item: Any, signed: bool, little_endian: bool = True) -> Lut:
    """Parse one Modality/VOI LUT Sequence item (LUT Descriptor + LUT Data) into a :class:`Lut`.

    Raises ``ValueError`` when the item is unusable (no descriptor or no data).
    """
    desc = [int(v) for v in item.LUTDescriptor]
    if len(desc) != 3:
        raise ValueError(f"LUT Descriptor has {len(desc)} values, expected 3")
    entries, first, bits = desc
    entries = entries or 65536  # C.11.1.1.1: 0 means 2^16 entries
    if signed and first >= 32768:  # C.11.1.1.1: first mapped value is signed for signed pixels
        first -= 65536
    raw = item.LUTData
    if isinstance(raw, (bytes, bytearray)):
        order = "<" if little_endian else ">"
        dtype = np.dtype(np.uint8) if bits <= 8 and len(raw) == entries else np.dtype(f"{order}u2")
        data = np.frombuffer(raw, dtype=dtype)
    else:
        data = np.asarray(raw if isinstance(raw, (list, tuple)) else [raw], dtype=np.int64)
    if data.size == 0:
        raise ValueError("LUT Data is empty")
    return Lut(first_mapped=first, bits=bits, data=data[:entries].astype(np.float64))


def meta_from_dataset(ds: Any) -> GrayscaleMeta:
    """Read :class:`GrayscaleMeta` from a pydicom ``Dataset`` (header only is enough)."""
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    little = bool(getattr(ds, "original_encoding", (True, True))[1] in (True, None))

    def lut(seq_name: str) -> Lut | None:
        seq = ds.get(seq_name)
        if not seq:
            return None
        return lut_from_item(seq[0], signed, little)

    def num(name: str) -> float | None:
        # An unparsable value (DS/IS text in a damaged header) counts as absent: the chain
        # then falls back to the next transform instead of refusing the image.
        try:
            value = _first(ds.get(name))
            number = None if value is None or value == "" else float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        return number if number is not None and np.isfinite(number) else None

    def integer(name: str) -> int | None:
        number = num(name)
        return None if number is None else int(number)

    def voi_lut() -> Lut | None:
        # A damaged VOI LUT falls back to the window (C.11.2.1 offers both); a damaged
        # Modality LUT raises, since the stored values then have no known meaning.
        try:
            return lut("VOILUTSequence")
        except (AttributeError, TypeError, ValueError):
            return None

    slope, intercept = num("RescaleSlope"), num("RescaleIntercept")
    return GrayscaleMeta(
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        signed=signed,
        rescale_slope=1.0 if slope is None or slope == 0.0 else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        modality_lut=lut("ModalityLUTSequence"),
        voi_lut=voi_lut(),
        window_center=num("WindowCenter"),
        window_width=num("WindowWidth"),
        voi_lut_function=str(_first(ds.get("VOILUTFunction")) or "LINEAR").strip().upper(),
        padding_value=integer("PixelPaddingValue"),
        padding_range_limit=integer("PixelPaddingRangeLimit"),
    )


def stored_values(arr: np.ndarray, meta: GrayscaleMeta) -> np.ndarray:
    """Keep only the ``bits_stored`` low bits, sign-extended when signed (PS3.5 8.1.1).

    Bits above High Bit may hold overlay planes (retired C.9.2 usage) or garbage; they are
    not part of the pixel value.
    """
    bits = meta.bits_stored
    if bits <= 0 or bits >= arr.dtype.itemsize * 8 or arr.dtype.kind not in "ui":
        return arr
    if meta.signed:
        shift = arr.dtype.itemsize * 8 - bits
        signed = arr.view(arr.dtype.str.replace("u", "i"))
        return (signed << shift) >> shift
    limit = (1 << bits) - 1
    if int(arr.max(initial=0)) <= limit:
        return arr
    return arr & arr.dtype.type(limit)


def box_reduce(arr: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of stored values: ``ceil(h/f) x ceil(w/f)``.

    What a codec decoding at reduced resolution delivers (the JPEG 2000 LL band is such a
    low-pass of the stored values), for codecs that cannot: the chain after it then runs on
    a sixteenth of the pixels.  Must follow :func:`stored_values` (overlay bits would
    average in).  Pixel Padding regions keep their value; their edges blend by one pixel.
    """
    if factor <= 1:
        return arr
    h, w = arr.shape
    size = (-(-w // factor), -(-h // factor))
    if arr.dtype in (np.uint8, np.uint16, np.int16):  # OpenCV's area resize handles these
        return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    reduced = cv2.resize(arr.astype(np.float64), size, interpolation=cv2.INTER_AREA)
    return np.round(reduced).astype(arr.dtype)


def apply_lut(arr: np.ndarray, lut: Lut) -> np.ndarray:
    """Map values through ``lut``; values outside its range take the first/last entry."""
    index = np.clip(arr.astype(np.int64) - lut.first_mapped, 0, lut.data.size - 1)
    return lut.data[index]


def modality_lut(arr: np.ndarray, meta: GrayscaleMeta) -> np.ndarray:
    """Stored values -> modality output (float64): Modality LUT Sequence, else rescale.

    PS3.3 C.11.1: the LUT and Rescale Slope/Intercept are alternatives; the LUT wins.
    """
    if meta.modality_lut is not None:
        return apply_lut(arr, meta.modality_lut)
    out = arr.astype(np.float64)
    if meta.rescale_slope != 1.0:
        out *= meta.rescale_slope
    if meta.rescale_intercept != 0.0:
        out += meta.rescale_intercept
    return out


def lut_output_max(lut: Lut) -> float:
    """The value that a VOI LUT's output maps to white.

    C.11.2.1.1 says ``2**bits - 1``; some vendors declare 16 bits and fill 12 (DCMTK's
    ``CIF_CheckLutBitDepth`` handles the same quirk), so the depth actually used wins.
    """
    declared = lut.bits if 0 < lut.bits <= 16 else 16
    used = max(int(lut.data.max(initial=0)), 1).bit_length()
    bits = used if used > declared or used <= declared - 4 else declared
    return float((1 << bits) - 1)


def voi_lut(arr: np.ndarray, lut: Lut) -> np.ndarray:
    """Modality output -> [0, 1] through a VOI LUT Sequence item (C.11.2.1.1)."""
    return np.clip(apply_lut(arr, lut) / lut_output_max(lut), 0.0, 1.0)


def window(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Modality output -> [0, 1] through a window (PS3.3 C.11.2.1.2 and C.11.2.1.3).

    ``function`` is the VOI LUT Function: LINEAR (the default, with its half-pixel offsets),
    LINEAR_EXACT or SIGMOID.  Raises ``ValueError`` for a width the function does not allow
    (LINEAR needs >= 1, the others > 0).
    """
    function = function.upper()
    x = arr.astype(np.float64, copy=False)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0 for SIGMOID")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0 for LINEAR_EXACT")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise ValueError(f"window width {width} must be >= 1 for LINEAR")
    if width == 1:  # C.11.2.1.2.1: a unit window is a threshold at c - 0.5
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def padding_mask(stored: np.ndarray, meta: GrayscaleMeta) -> np.ndarray | None:
    """True where a stored value is Pixel Padding (C.7.5.1.1.2), or ``None`` without padding.

    With a Pixel Padding Range Limit, every value between it and the Pixel Padding Value
    (inclusive, either order) is padding.
    """
    if meta.padding_value is None:
        return None
    lo, hi = meta.padding_value, meta.padding_value
    if meta.padding_range_limit is not None:
        lo, hi = sorted((meta.padding_value, meta.padding_range_limit))
    return (stored >= lo) & (stored <= hi) if lo != hi else stored == lo


def border_runs(arr: np.ndarray) -> np.ndarray:
    """True on runs of the exact minimum or maximum value that touch the image border.

    These are collimator blades, shutters and burnt-out frames: large, flat and at the
    extremes, they would otherwise pull a percentile window onto themselves.  A run starts at
    an edge and continues along its row (or column) while the value stays saturated.
    """
    lo, hi = arr.min(), arr.max()
    sat = (arr == lo) | (arr == hi)
    mask = np.logical_and.accumulate(sat, axis=1)
    mask |= np.logical_and.accumulate(sat[:, ::-1], axis=1)[:, ::-1]
    mask |= np.logical_and.accumulate(sat, axis=0)
    mask |= np.logical_and.accumulate(sat[::-1, :], axis=0)[::-1, :]
    return mask


def percentile_bounds(
    values: np.ndarray,
    exclude: np.ndarray | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> tuple[float, float] | None:
    """The two percentiles of ``values`` where ``exclude`` is False; ``None`` if flat.

    When fewer than 1 % of the values remain after exclusion, all of them are used.
    """
    keep = values[~exclude] if exclude is not None else values.ravel()
    if keep.size < max(1, 0.01 * values.size):
        keep = values.ravel()
    lo, hi = (float(v) for v in np.percentile(keep, percentiles))
    if not hi > lo:
        lo, hi = float(keep.min()), float(keep.max())
    return (lo, hi) if hi > lo else None


def linear(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo`` -> 0 and ``hi`` -> 1, clipped."""
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def percentile_window(
    arr: np.ndarray,
    exclude: np.ndarray | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Modality output -> [0, 1] by a linear window between two percentiles of ``arr``.

    ``exclude`` (True = ignore) removes padding and border runs from the statistics only.
    A flat image maps to 0.
    """
    bounds = percentile_bounds(arr, exclude, percentiles)
    if bounds is None:
        return np.zeros(arr.shape, dtype=np.float64)
    return linear(arr.astype(np.float64, copy=False), *bounds)


def has_voi(meta: GrayscaleMeta) -> bool:
    """True when the file's own VOI (a LUT, or a window of allowed width) will be used."""
    if meta.voi_lut is not None:
        return True
    if meta.window_center is None or meta.window_width is None:
        return False
    if meta.voi_lut_function in ("LINEAR_EXACT", "SIGMOID"):
        return meta.window_width > 0
    return meta.window_width >= 1  # C.11.2.1.2.1: LINEAR needs a width of at least 1


def voi(arr: np.ndarray, meta: GrayscaleMeta, bounds: tuple[float, float] | None) -> np.ndarray:
    """Modality output -> [0, 1]: VOI LUT Sequence, else window, else ``bounds``.

    C.11.2.1 allows either a VOI LUT or a window; the LUT is preferred because CR/DX vendors
    encode their non-linear tone curve there.  ``bounds`` is the fallback window, usually
    from :func:`percentile_bounds` over the whole image; ``None`` means a flat image -> 0.
    """
    if meta.voi_lut is not None:
        return voi_lut(arr, meta.voi_lut)
    if has_voi(meta):
        assert meta.window_center is not None and meta.window_width is not None
        return window(arr, meta.window_center, meta.window_width, meta.voi_lut_function)
    if bounds is None:
        return np.zeros(arr.shape, dtype=np.float64)
    return linear(arr.astype(np.float64, copy=False), *bounds)


def polarity(arr: np.ndarray, meta: GrayscaleMeta) -> np.ndarray:
    """Invert MONOCHROME1 so that high means bright; VOI output must come in (PS3.3 C.7.6.3.1.2).

    Inverting before VOI would turn the window upside down (cornerstone3D#2215).
    """
    return 1.0 - arr if meta.photometric == "MONOCHROME1" else arr


def to_unit_float32(arr: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and return a contiguous float32 array."""
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)


def fallback_bounds(
    stored: np.ndarray,
    meta: GrayscaleMeta,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> tuple[float, float] | None:
    """The percentile window (in modality units) for an image without its own VOI.

    Statistics come from a strided subsample of about 2^18 pixels, without padding values
    and without saturated border runs (collimation, shutters).
    """
    step = max(1, int(np.sqrt(stored.size / _PERCENTILE_SAMPLES)))
    sample = stored[::step, ::step]
    exclude = border_runs(sample)
    pad = padding_mask(sample, meta)
    if pad is not None:
        exclude |= pad
    return percentile_bounds(modality_lut(sample, meta), exclude, percentiles)


def _chain(
    values: np.ndarray, meta: GrayscaleMeta, bounds: tuple[float, float] | None
) -> np.ndarray:
    """Stored values (already masked) -> display values, padding black (C.7.5.1.1.2)."""
    out = polarity(voi(modality_lut(values, meta), meta, bounds), meta)
    pad = padding_mask(values, meta)
    return np.where(pad, 0.0, out) if pad is not None else out


def normalise(pixels: np.ndarray, meta: GrayscaleMeta, reduce: int = 1) -> np.ndarray:
    """The whole chain: decoded stored pixels -> 2-D float32 in [0, 1], bone bright.

    ``reduce`` > 1 averages blocks of that many pixels a side first (:func:`box_reduce`).
    Every step is element-wise once the fallback window is known, so for 8/16-bit input the
    chain runs over each possible stored value once and the image is mapped through that
    table: the same result as the element-wise chain, several times faster.
    """
    stored = box_reduce(stored_values(pixels, meta), reduce)
    bounds = None if has_voi(meta) else fallback_bounds(stored, meta)
    if stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2:
        unsigned = stored.view(f"u{stored.dtype.itemsize}")
        size = (
            int(unsigned.max(initial=0)) + 1
            if stored.dtype.kind == "u"
            else 1 << (8 * stored.dtype.itemsize)
        )
        codes = np.arange(size, dtype=unsigned.dtype).view(stored.dtype)
        table = to_unit_float32(_chain(codes, meta, bounds))
        return table[unsigned]
    return to_unit_float32(_chain(stored, meta, bounds))
