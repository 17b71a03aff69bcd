"""Grey levels of an ordinary image file (not DICOM) -> :class:`XrayImage`: scaling, checks and metadata.

8-bit images are divided by 255. Deeper images (16-bit PNG/TIFF, 12-bit JPEG) are divided by ``2**b - 1`` where
``b`` is the bit depth of the image's largest value (at least 8): 12-bit data in a 16-bit PNG fills the range
instead of looking black, an 8-bit image up-scaled by 257 reads exactly like the original, and brightness is not
stretched per image. Float or signed data has no nominal range and is scaled to its min-max.
"""

from __future__ import annotations

import numpy as np

from core.imaging.checks import check_content, check_finite, check_not_uniform
from core.imaging.types import ImageMetadata, XrayImage
from core.imaging.window import apply_window

__all__ = ["deep_scale", "finish", "luma"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's "L"
_ROWS_PER_BLOCK = 256


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (H, W, >=3) array as float32, in row blocks so no full-size float RGB copy is made."""
    out = np.empty(rgb.shape[:2], dtype=np.float32)
    for start in range(0, rgb.shape[0], _ROWS_PER_BLOCK):
        block = rgb[start : start + _ROWS_PER_BLOCK, :, :3].astype(np.float32)
        out[start : start + _ROWS_PER_BLOCK] = block @ np.asarray(_LUMA, dtype=np.float32)
    return out


def deep_scale(values: np.ndarray) -> tuple[int, float | None]:
    """(container bits, full-scale value) of integer data deeper than 8 bits; full scale None for signed data."""
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi < 2**16:
        return 16, float(2 ** max(8, hi.bit_length()) - 1)
    return 32, None


def finish(
    raw: np.ndarray,
    *,
    fmt: str,
    mode: str,
    bits: int | None,
    scale: float | None,
    notes: list[str],
    keep_raw: bool,
) -> XrayImage:
    """Window the levels ``raw`` (float32, H x W) to [0, 1], apply the content checks and build the image.

    ``scale`` is the full-scale value (e.g. 255), or None to scale the data's min-max.
    """
    check_finite(raw)
    check_not_uniform(raw)
    if scale is None:
        lo, hi = float(raw.min()), float(raw.max())
        center, width = (lo + hi) / 2.0, hi - lo
    else:
        center, width = scale / 2.0, scale
    pixels = apply_window(raw, center, width, function="LINEAR_EXACT")
    check_content(pixels, notes)
    metadata = ImageMetadata(
        format=fmt,
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        bits_stored=bits,
        photometric=mode,
        warnings=tuple(notes),
    )
    return XrayImage(
        pixels=pixels,
        metadata=metadata,
        raw=raw if keep_raw else None,
        default_window=(center, width),
        window_function="LINEAR_EXACT",
    )
