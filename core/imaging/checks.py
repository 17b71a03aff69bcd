"""The rules that keep garbage from being scored: invalid values, impossible shapes, images with nothing to read.

Every reader applies them, in this order, so a file is judged the same whatever its format:

1. **Values**: a pixel value that is not a finite number (NaN, +/-inf) is refused (:func:`check_finite`).
2. **Shape**, from the header, before decoding (:func:`check_geometry`): refused when the shorter side is under
   :data:`MIN_SIDE` pixels (the input of HiCXR's models; a smaller image is upsampled blur) or the longer side is
   more than :data:`MAX_ASPECT` times the shorter (a chest film is about 1:1.2; the real data in shared/data goes up
   to 1:3.2).
3. **Content**, on the grey levels as displayed (after window and inversion; :func:`check_content`), measured on a
   sample of at most ~512 x 512 pixels:

   * refused: a value that is not finite (a window or rescale out of range); a single grey level; *two grey
     levels only* (a 1-bit file, a mask or line art: a radiograph has continuous grey levels); *almost no
     contrast* (the 1st to 99th percentile span less than
     :data:`MIN_CONTRAST` of the grey scale); *almost all black or white* (at least :data:`MAX_CLIPPED` of the
     pixels within 2% of black, or of white); *noise* (neighbouring pixels uncorrelated: mean horizontal and
     vertical lag-1 correlation below :data:`MIN_NEIGHBOUR_CORRELATION`; radiographs are smooth);
   * analysed with a warning: more than :data:`WARN_CLIPPED` of the pixels within 2% of black (or of white).

4. **Transparency** (:func:`check_alpha`): a fully transparent image is refused; any transparent pixel gives a
   warning, since transparency is ignored rather than composited.

Thresholds were set against the 7,000 real radiographs in shared/data (NIH, COVID-19 collection, Shenzhen,
Kermany, the DICOMs): smallest contrast span 0.24, smallest neighbour correlation 0.86, largest black share 0.66,
largest white share 0.27, largest aspect ratio 3.2, smallest side 64.
"""

from __future__ import annotations

import numpy as np

from core.imaging.errors import BlankImageError, CorruptImageError, DegenerateImageError, ImageError

__all__ = [
    "MAX_ASPECT",
    "MAX_CLIPPED",
    "MIN_CONTRAST",
    "MIN_NEIGHBOUR_CORRELATION",
    "MIN_SIDE",
    "WARN_CLIPPED",
    "check_alpha",
    "check_content",
    "check_finite",
    "check_geometry",
    "check_not_uniform",
    "nothing_to_read",
]

MIN_SIDE = 64
MAX_ASPECT = 4.0
MIN_CONTRAST = 0.05
MAX_CLIPPED = 0.95
WARN_CLIPPED = 0.5
MIN_NEIGHBOUR_CORRELATION = 0.5
_NEAR = 0.02  # "within 2% of black / white"
_SAMPLE_SIDE = 512


def check_finite(values: np.ndarray, what: str = "The image") -> None:
    """Refuse values that are not finite numbers (float data only; integers always are)."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.floating):
        return
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise CorruptImageError(
            f"{what} contains {bad} pixel value(s) that are not numbers (infinite or NaN), so it cannot be read "
            "reliably: the file is damaged or was exported wrongly. Export the X-ray again."
        )


def check_geometry(width: int, height: int) -> None:
    """Refuse an image too small or too elongated to be a chest radiograph (from its declared size)."""
    short, long = min(width, height), max(width, height)
    if short <= 0:
        raise BlankImageError(f"The image has no pixels ({width} x {height}). Upload the X-ray image itself.")
    if short < MIN_SIDE:
        raise DegenerateImageError(
            f"The image is only {width} x {height} pixels: a side shorter than {MIN_SIDE} pixels (the size the "
            "models read) cannot show a chest X-ray. Upload the full-size image."
        )
    if long > MAX_ASPECT * short:
        raise DegenerateImageError(
            f"The image is {width} x {height} pixels, {long / short:.1f} times longer than wide (more than "
            f"{MAX_ASPECT:.0f}:1); a chest X-ray is close to square. It may be a strip, a cropped edge or a "
            "montage: upload the single, uncropped radiograph."
        )


def check_not_uniform(values: np.ndarray) -> None:
    """Refuse an image with a single value (finite values assumed: call :func:`check_finite` first)."""
    if values.size == 0 or not float(values.max()) > float(values.min()):
        raise BlankImageError(
            "The image is completely uniform (a single grey level): there is no X-ray to read. "
            "Check that the right image was exported."
        )


def _sample(pixels: np.ndarray) -> np.ndarray:
    step = max(1, -(-max(pixels.shape) // _SAMPLE_SIDE))
    return np.asarray(pixels[::step, ::step], dtype=np.float64)


def _neighbour_correlation(sample: np.ndarray) -> float:
    """Mean of the horizontal and vertical lag-1 correlations (about the image mean: no slice copies)."""
    centred = sample - sample.mean()

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        denominator = float(np.sqrt(np.einsum("ij,ij->", a, a) * np.einsum("ij,ij->", b, b)))
        return float(np.einsum("ij,ij->", a, b)) / denominator if denominator > 0 else 1.0

    return (corr(centred[:, :-1], centred[:, 1:]) + corr(centred[:-1], centred[1:])) / 2.0


def _black_white(sample: np.ndarray) -> tuple[float, float]:
    return float(np.mean(sample <= _NEAR)), float(np.mean(sample >= 1.0 - _NEAR))


def nothing_to_read(pixels: np.ndarray) -> str | None:
    """Why these displayed grey levels show nothing to read, or None (see :func:`_verdict`)."""
    verdict = _verdict(pixels)
    return None if verdict is None else verdict[1]


def _verdict(pixels: np.ndarray) -> tuple[type[ImageError], str] | None:
    """Why these displayed grey levels (in [0, 1]) show nothing to read, or None: non-finite values, two grey
    levels only, almost all black or white, or almost no contrast (the refusals of :func:`check_content`, noise
    aside). Readers also use it to judge a header's window or VOI LUT before trusting it."""
    sample = _sample(pixels)
    lo, hi = float(sample.min()), float(sample.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return CorruptImageError, (
            "The image's grey levels could not be computed (they are not finite numbers), so it cannot be read "
            "reliably: the file's pixel, rescale or window values are out of range. Export the X-ray again."
        )
    if hi > lo and not np.count_nonzero((sample != lo) & (sample != hi)):
        return DegenerateImageError, (
            "The image has only two grey levels (black and white): it is a mask, line art or a thresholded "
            "image, not a radiograph. Upload the X-ray itself."
        )
    black, white = _black_white(sample)
    for share, tone, cause in ((black, "black", "under-exposed or windowed too dark"),
                               (white, "white", "over-exposed, saturated or windowed too bright")):
        if share >= MAX_CLIPPED:
            return DegenerateImageError, (
                f"The image is almost entirely {tone} ({share:.0%} of its pixels): there is no X-ray to read. "
                f"It may be {cause}; check the export settings and upload the radiograph again."
            )
    low, high = np.percentile(sample, [1.0, 99.0])
    if high - low < MIN_CONTRAST:
        return DegenerateImageError, (
            f"The image has almost no contrast (98% of its pixels lie within {high - low:.1%} of the grey scale): "
            "there is no X-ray to read. Check that the right image was exported, with a usable window."
        )
    return None


def check_content(pixels: np.ndarray, notes: list[str]) -> None:
    """Refuse an image with nothing to read, or append a warning to ``notes`` (displayed pixels in [0, 1])."""
    verdict = _verdict(pixels)
    if verdict is not None:
        raise verdict[0](verdict[1])
    sample = _sample(pixels)
    if _neighbour_correlation(sample) < MIN_NEIGHBOUR_CORRELATION:
        raise DegenerateImageError(
            "The image looks like random noise, not a radiograph (neighbouring pixels are unrelated). "
            "Check that the right file was exported."
        )
    for share, tone in zip(_black_white(sample), ("black", "white"), strict=True):
        if share > WARN_CLIPPED:
            notes.append(f"{share:.0%} of the image is {tone}: check exposure and window before reading the result")


def check_alpha(visible: bool, transparent_share: float, notes: list[str]) -> None:
    """Refuse a fully transparent image (no visible pixel); note that transparency was ignored when there is some.

    Args:
        visible: Whether any pixel has a non-zero alpha.
        transparent_share: Fraction of pixels that are not fully opaque.
        notes: Warnings of the image, appended to.
    """
    if not visible:
        raise DegenerateImageError(
            "The image is fully transparent (its alpha channel hides every pixel): a viewer shows nothing. "
            "Export the X-ray without transparency."
        )
    if transparent_share > 0:
        share = "under 1%" if transparent_share < 0.01 else f"{transparent_share:.0%}"
        notes.append(f"transparency ignored: {share} of the pixels are not fully opaque")
