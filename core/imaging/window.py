"""Grey-level windowing and display conversion, shared by the readers and the dashboard's re-windowing."""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["WindowFunction", "apply_window", "to_uint8"]

WindowFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]


def apply_window(
    pixels_raw: np.ndarray, center: float, width: float, *, function: WindowFunction = "LINEAR"
) -> np.ndarray:
    """Map raw values to [0, 1] with a window (level ``center``, ``width``), as float32.

    ``LINEAR`` and ``LINEAR_EXACT`` both use the exact ramp ``(x - (center - width/2)) / width``: DICOM's LINEAR
    differs by half a stored unit, far below what a display shows, and using one formula lets any positive width
    (including widths below 1 on rescaled float data) work. ``SIGMOID`` follows DICOM PS3.3 C.11.2.1.3.1.
    """
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width!r}")
    x = np.asarray(pixels_raw, dtype=np.float32)
    if function == "SIGMOID":
        # float64 for the exponent: float32 exp overflows to inf (harmless but noisy) on wide dynamic ranges.
        out = (1.0 / (1.0 + np.exp(-4.0 * (x.astype(np.float64) - center) / width))).astype(np.float32)
    elif function in ("LINEAR", "LINEAR_EXACT"):
        # One output array, updated in place: a 50-megapixel image costs one extra float32 copy, not three.
        out = np.subtract(x, np.float32(center - width / 2.0), dtype=np.float32)
        out /= np.float32(width)
    else:
        raise ValueError(f"unknown VOI LUT function {function!r}")
    np.clip(out, 0.0, 1.0, out=out)
    return np.ascontiguousarray(out, dtype=np.float32)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Convert a [0, 1] float image to uint8 (0-255) for display or caching; NaN becomes 0, out-of-range clips."""
    arr = np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))
