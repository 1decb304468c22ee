"""Augmentations that break the chest set's shortcuts, and the rotation renderer.

The set's README warns that AP is confounded with acquisition: every AP image is a bedside CR
exposure with burned-in German text ("Bettaufnahme", "liegend"), tubes, lines and ECG leads,
tilted cassettes with black borders, and (found here) the same 419 x 512 size, while PA images
are erect studies, many with a flat DX look.  Each function below removes one of those cues
by putting it on BOTH classes or taking it away from both:

* :func:`text_overlay`: burned-in words (including those German ones) and L/R markers;
* :func:`wires`: bright thin curves and lead buttons, like lines and ECG leads;
* :func:`erase_border`: blanked bands and corner blocks where text and markers sit;
* :func:`reframe`: random crops with independent height/width (the aspect ratio survives the
  square resize as a distortion), black padding and small tilts (tilted-cassette borders);
* :func:`detector_look`: gamma, contrast, CLAHE, edge enhancement, flat "DX" processing,
  blur and noise;
* :func:`match_histogram`: every training image takes the grey-level distribution of a random
  training image of a random class (or a random Beta).  A first recipe without it read the
  histogram alone: matching the validation AP images to the PA images' histogram turned all
  38 into PA (``shortcuts.py``, ``look_as_*``); imposing a look 70 % of the time, partly,
  was not enough either.

All functions take and return 2-D float32 images in [0, 1] and draw every random number from
the ``rng`` they are given, so a seeded stream is reproducible.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.data import photometric

#: Words seen burned into the AP images (README), plus generic annotation vocabulary.
WORDS = ("Bettaufnahme", "liegend", "sitzend", "stehend", "AP", "PA", "L", "R", "ITS",
         "Thorax", "p.a.", "a.p.", "CR", "DX", "mAs", "kV", "Station", "12:04", "2020")  # fmt: skip
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
          cv2.FONT_HERSHEY_COMPLEX)  # fmt: skip
_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.:/-"))


def _word(rng: np.random.Generator) -> str:
    if rng.random() < 0.6:
        return str(WORDS[int(rng.integers(len(WORDS)))])
    return "".join(rng.choice(_ALPHABET, size=int(rng.integers(2, 10))))


def text_overlay(rng: np.random.Generator, img: np.ndarray, n_max: int = 4) -> np.ndarray:
    """Draw 1..``n_max`` words or markers, mostly near the edges, bright or dark."""
    img = img.copy()
    h, w = img.shape
    for _ in range(int(rng.integers(1, n_max + 1))):
        text = _word(rng)
        font = _FONTS[int(rng.integers(len(_FONTS)))]
        scale = float(rng.uniform(0.3, 1.2)) * max(h, w) / 512.0
        thick = int(rng.integers(1, 3))
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
        edge = rng.random() < 0.8
        band = 0.15 if edge else 0.9
        x = int(rng.uniform(0, max(1, w - tw)))
        y = int(rng.uniform(th, max(th + 1, band * h)))
        if edge and rng.random() < 0.5:
            y = h - 1 - int(rng.uniform(0, max(1, band * h - th)))
        value = float(rng.uniform(0.75, 1.0)) if rng.random() < 0.8 else float(rng.uniform(0, 0.2))
        if rng.random() < 0.3:  # a marker plate: a filled box behind the text
            pad = max(2, th // 3)
            plate = 1.0 - value if rng.random() < 0.5 else float(rng.uniform(0.3, 0.6))
            cv2.rectangle(img, (x - pad, y - th - pad), (x + tw + pad, y + pad), plate, -1)
        # OpenCV draws text on 8-bit images only: draw a coverage mask and blend it in.
        mask = np.zeros((h, w), dtype=np.uint8)
        cv2.putText(mask, text, (x, y), font, scale, 255, thick, cv2.LINE_AA)
        alpha = mask.astype(np.float32) / np.float32(255.0)
        img = img * (1.0 - alpha) + np.float32(value) * alpha
    return img.astype(np.float32)


def wires(rng: np.random.Generator, img: np.ndarray, n_max: int = 5) -> np.ndarray:
    """Bright thin curves (tubes, lines, leads) and small round lead buttons."""
    img = img.copy()
    h, w = img.shape
    for _ in range(int(rng.integers(1, n_max + 1))):
        ctrl = rng.uniform([-0.1 * w, -0.1 * h], [1.1 * w, 1.1 * h], size=(4, 2))
        t = np.linspace(0.0, 1.0, 60)[:, None]
        curve = ((1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1]
                 + 3 * (1 - t) * t**2 * ctrl[2] + t**3 * ctrl[3])  # fmt: skip
        value = float(rng.uniform(0.6, 1.0))
        cv2.polylines(img, [np.round(curve).astype(np.int32)], False, value,
                      int(rng.integers(1, 3)), cv2.LINE_AA)  # fmt: skip
    for _ in range(int(rng.integers(0, 4))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        radius = int(rng.integers(3, 9))
        cv2.circle(img, centre, radius, float(rng.uniform(0.7, 1.0)), int(rng.integers(1, 3)))
    return img


def erase_border(rng: np.random.Generator, img: np.ndarray, max_frac: float = 0.15) -> np.ndarray:
    """Blank bands along random sides and blocks in random corners (black, grey or white)."""
    img = img.copy()
    h, w = img.shape
    fill = float(rng.choice([0.0, float(rng.uniform(0.0, 1.0)), 1.0], p=[0.6, 0.3, 0.1]))
    for side in range(4):
        if rng.random() < 0.4:
            d = int(rng.uniform(0.03, max_frac) * (h if side < 2 else w))
            if side == 0:
                img[:d] = fill
            elif side == 1:
                img[h - d :] = fill
            elif side == 2:
                img[:, :d] = fill
            else:
                img[:, w - d :] = fill
    for _ in range(int(rng.integers(0, 3))):
        bh, bw = int(rng.uniform(0.05, 0.2) * h), int(rng.uniform(0.05, 0.25) * w)
        y0 = 0 if rng.random() < 0.5 else h - bh
        x0 = 0 if rng.random() < 0.5 else w - bw
        img[y0 : y0 + bh, x0 : x0 + bw] = fill
    return img


def reframe(rng: np.random.Generator, img: np.ndarray, min_crop: float = 0.75,
            max_tilt: float = 8.0) -> np.ndarray:  # fmt: skip
    """Crop height and width independently, pad with black bands, tilt a little."""
    h, w = img.shape
    ch, cw = int(h * rng.uniform(min_crop, 1.0)), int(w * rng.uniform(min_crop, 1.0))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = img[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.3:
        pads = [int(rng.uniform(0, 0.08) * s) for s in (ch, ch, cw, cw)]
        out = cv2.copyMakeBorder(
            np.ascontiguousarray(out),
            pads[0],
            pads[1],
            pads[2],
            pads[3],
            cv2.BORDER_CONSTANT,
            value=0.0,
        )
    if rng.random() < 0.5:
        oh, ow = out.shape
        matrix = cv2.getRotationMatrix2D(
            ((ow - 1) / 2, (oh - 1) / 2), float(rng.uniform(-max_tilt, max_tilt)), 1.0
        )
        out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (ow, oh), borderValue=0.0)
    return np.ascontiguousarray(out, dtype=np.float32)


def detector_look(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """The ankle recipe's photometric jitter plus CR edge enhancement, CLAHE and flat DX."""
    img = photometric(rng, img)
    if rng.random() < 0.25:
        blur = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(2.0, 6.0)))
        img = img + np.float32(rng.uniform(0.3, 1.2)) * (img - blur)  # unsharp, CR-style
    if rng.random() < 0.2:
        clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(1.5, 3.0)), tileGridSize=(8, 8))
        img = clahe.apply((np.clip(img, 0, 1) * 255).astype(np.uint8)).astype(np.float32) / 255
    if rng.random() < 0.25:  # flat, low-contrast processing
        mean = np.float32(img.mean())
        img = mean + (img - mean) * np.float32(rng.uniform(0.45, 0.8))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def cdf(img: np.ndarray, bins: int = 256) -> np.ndarray:
    """The cumulative grey-level distribution of an image in [0, 1], ``(bins,)``."""
    hist = np.histogram(img, bins, (0.0, 1.0))[0].astype(np.float64)
    total = np.cumsum(hist)
    return total / max(total[-1], 1.0)


def match_histogram(img: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``img`` remapped so that its grey-level distribution follows the ``reference`` CDF."""
    levels = np.linspace(0.0, 1.0, len(reference))
    lut = np.interp(cdf(img, len(reference)), reference, levels).astype(np.float32)
    index = np.clip((img * (len(reference) - 1)).round().astype(np.int64), 0, len(reference) - 1)
    return lut[index]


def random_look(rng: np.random.Generator, looks: np.ndarray) -> np.ndarray:
    """A CDF to impose: 80 % one row of ``looks``, 20 % a random Beta distribution's.

    Pass ``looks`` with as many rows per class (``train.BatchStream`` balances them), so that
    the imposed look is independent of the label.
    """
    if rng.random() < 0.8:
        return looks[int(rng.integers(len(looks)))]
    a, b = rng.uniform(0.7, 4.0, size=2)
    samples = rng.beta(a, b, size=4096)
    return cdf(samples)


def view_augment(rng: np.random.Generator, img: np.ndarray,
                 looks: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The view stage's training augmentation: every shortcut breaker, each at random.

    ``looks`` is a ``(K, bins)`` stack of grey-level CDFs drawn independently of the image's
    label (:func:`random_look`); the image always takes one of them, so that its histogram
    says nothing about its class.
    """
    img = reframe(rng, img.astype(np.float32))
    if looks is not None and len(looks):
        img = match_histogram(img, random_look(rng, looks))
    if rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
    if rng.random() < 0.5:
        img = wires(rng, img)
    if rng.random() < 0.6:
        img = text_overlay(rng, img)
    if rng.random() < 0.5:
        img = erase_border(rng, img)
    return detector_look(rng, img)


def rotate(img: np.ndarray, angle_deg: float, mode: str = "same", fill: float = 0.0) -> np.ndarray:
    """Rotate the anatomy counter-clockwise by ``angle_deg`` as displayed.

    This is the label convention of the pack contract: ``cv2.getRotationMatrix2D(centre,
    +angle, 1)`` on the upright image.  ``mode``: ``"same"`` keeps the canvas (corners cut,
    ``fill`` outside); ``"expand"`` grows the canvas to hold the whole image; ``"quarter"``
    turns exactly by ``np.rot90`` (``angle_deg`` must be a multiple of 90).
    """
    img = np.ascontiguousarray(img, dtype=np.float32)
    if mode == "quarter":
        turns = round(angle_deg / 90.0)
        if abs(turns * 90.0 - angle_deg) > 1e-6:
            raise ValueError(f"quarter mode needs a multiple of 90 deg, got {angle_deg}")
        return np.ascontiguousarray(np.rot90(img, turns % 4))
    h, w = img.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle_deg), 1.0)
    size = (w, h)
    if mode == "expand":
        cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
        nw, nh = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
        matrix[0, 2] += (nw - w) / 2.0
        matrix[1, 2] += (nh - h) / 2.0
        size = (nw, nh)
    elif mode != "same":
        raise ValueError(f"mode must be same, expand or quarter, got {mode!r}")
    return cv2.warpAffine(img, matrix, size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))  # fmt: skip


def orientation_example(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, float]:
    """An upright image turned by a random angle over the full circle, and that angle.

    A mirror image of an upright chest is still upright (the flip comes before the turn), so
    flips keep the label and stop the network from keying on the heart's side.  The turn is
    rendered three ways (same canvas, grown canvas, exact quarter turn plus a small residue)
    because an image can arrive rotated by any of them.
    """
    img = reframe(rng, img.astype(np.float32), min_crop=0.8, max_tilt=0.0)
    if rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
    if rng.random() < 0.3:
        img = text_overlay(rng, img)
    if rng.random() < 0.3:
        img = erase_border(rng, img)
    img = detector_look(rng, img)
    angle = float(rng.uniform(0.0, 360.0))
    choice = rng.random()
    fill = 0.0 if rng.random() < 0.85 else float(rng.uniform(0.0, 1.0))
    if choice < 0.4:
        out = rotate(img, angle, "same", fill)
    elif choice < 0.7:
        out = rotate(img, angle, "expand", fill)
    else:
        turns = int(rng.integers(4))
        residue = float(rng.uniform(-10.0, 10.0)) if rng.random() < 0.5 else 0.0
        out = rotate(rotate(img, 90.0 * turns, "quarter"), residue, "same", fill)
        angle = (90.0 * turns + residue) % 360.0
    return out, angle % 360.0
