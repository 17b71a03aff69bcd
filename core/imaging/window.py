"""Grey-level windowing and display conversion, shared by the readers and the dashboard's re-windowing."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

__all__ = ["WindowFunction", "apply_window", "to_uint8"]

WindowFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
_ROWS_PER_BLOCK = 256


def apply_window(
    pixels_raw: np.ndarray, center: float, width: float, *, function: WindowFunction = "LINEAR"
) -> np.ndarray:
    """Map raw values to [0, 1] with a window (level ``center``, ``width``), as float32.

    Any finite window gives finite grey levels: in float32 when float32 holds the window, else (and for SIGMOID)
    in float64 row blocks. A non-finite or non-positive window is a programming error (``ValueError``): readers
    validate header windows first.

    ``LINEAR`` and ``LINEAR_EXACT`` both use the exact ramp ``(x - (center - width/2)) / width``: DICOM's LINEAR
    differs by half a stored unit, far below what a display shows, and using one formula lets any positive width
    (including widths below 1 on rescaled float data) work. ``SIGMOID`` follows DICOM PS3.3 C.11.2.1.3.1.
    """
    if not (width > 0 and math.isfinite(width) and math.isfinite(center)):
        raise ValueError(f"window width must be positive and the window finite, got {center!r}, {width!r}")
    x = np.asarray(pixels_raw)
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise ValueError(f"unknown VOI LUT function {function!r}")
    low = float(center) - float(width) / 2.0
    with np.errstate(over="ignore", under="ignore"):
        low32, width32 = np.float32(low), np.float32(width)
    if function != "SIGMOID" and np.isfinite(low32) and np.isfinite(width32) and width32 > 0:
        # float32 holds the window itself, so the ramp cannot give NaN: a value far outside it overflows to +/-inf
        # at worst, which the clip maps to 0 or 1. One output array, updated in place (one float32 copy at 50 MP).
        with np.errstate(over="ignore"):
            out = np.subtract(x, low32, dtype=np.float32)
            out /= width32
        np.clip(out, 0.0, 1.0, out=out)
        return np.ascontiguousarray(out, dtype=np.float32)
    # A window float32 cannot hold (a width of 1e39 would make every pixel inf/inf = NaN), or the sigmoid's
    # exponent: float64, in row blocks so the float64 cost stays small, written out as float32.
    flat = x.reshape(x.shape[0] if x.ndim else 1, -1)
    out = np.empty(flat.shape, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):
        for start in range(0, flat.shape[0], _ROWS_PER_BLOCK):
            block = flat[start : start + _ROWS_PER_BLOCK].astype(np.float64)
            if function == "SIGMOID":
                block = 1.0 / (1.0 + np.exp(-4.0 * (block - float(center)) / float(width)))
            else:
                block -= low
                block /= float(width)
            np.clip(block, 0.0, 1.0, out=block)
            out[start : start + _ROWS_PER_BLOCK] = block
    return np.ascontiguousarray(out.reshape(x.shape))


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Convert a [0, 1] float image to uint8 (0-255) for display or caching; NaN becomes 0, out-of-range clips."""
    arr = np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))
