"""DICOM grey-level display: the VOI (LUT or window) and the polarity plausibility check of a frontal chest.

* **VOI.** A VOI LUT Sequence goes through pydicom's ``apply_voi_lut``; otherwise the first Window Center/Width
  through :func:`core.imaging.window.apply_window` (the function the dashboard re-windows with, so the default view
  is reproduced exactly); otherwise the data's min-max. A header window or VOI LUT whose image would be refused
  by the content rule (:func:`core.imaging.checks.nothing_to_read`: almost all black or white, no contrast, two
  grey levels, not finite) while the data range is readable is replaced by the data range, with a warning.
* **Header contradicted by the pixels.** Some converters rewrite the header to MONOCHROME1 without inverting the
  pixels (the ``Fake_MONOHR1`` test file of torchxrayvision is such a case). For a frontal chest (ViewPosition
  PA/AP, BodyPartExamined a chest term) whose header asks for inversion, the inversion is skipped when the result
  would be clearly impossible anatomy, i.e. lung fields markedly brighter than the mediastinum (see
  :data:`POLARITY_MARGIN`). A header that asks for no inversion is always trusted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.imaging.checks import nothing_to_read
from core.imaging.coded import CHEST_BODY_PARTS, FRONTAL_VIEWS
from core.imaging.dicom_fields import get, number, text
from core.imaging.window import WindowFunction, apply_window

__all__ = ["POLARITY_MARGIN", "apply_voi", "contradicts_inversion"]

# Mean brightness of the lung boxes minus the mediastinum box (see _lung_minus_mediastinum), in [0, 1] units,
# above which a frontal chest is impossible anatomy. Correctly displayed chests are almost always negative: on the
# 1,683 PNGs in shared/data the largest value is 0.17 (a 64 px thumbnail), 0.13 among the 720 images of 224 px or
# more; the mislabelled MONOCHROME1 test file would come out at +0.28. Only ever used to *undo* an inversion the
# header asks for, so a miss falls back to trusting the header.
POLARITY_MARGIN = 0.2

_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def apply_voi(
    raw: np.ndarray, ds: Any, notes: list[str]
) -> tuple[np.ndarray, tuple[float, float] | None, tuple[float, float], WindowFunction]:
    """Return (pixels in [0, 1], window applied or None, default window for re-windowing, window function)."""
    lo, hi = float(raw.min()), float(raw.max())
    minmax = ((lo + hi) / 2.0, hi - lo)

    def data_range(note: str) -> tuple[np.ndarray, None, tuple[float, float], WindowFunction]:
        notes.append(note)
        return apply_window(raw, *minmax, function="LINEAR_EXACT"), None, minmax, "LINEAR_EXACT"

    if get(ds, "VOILUTSequence") is not None:
        from pydicom.pixels import apply_voi_lut

        try:
            lut_out = np.asarray(apply_voi_lut(raw, ds, index=0, prefer_lut=True), dtype=np.float32)
            out_lo, out_hi = float(lut_out.min()), float(lut_out.max())
        except Exception:  # noqa: BLE001 - a broken LUT degrades to windowing, it does not lose the image
            out_lo = out_hi = 0.0
        if out_hi > out_lo and np.isfinite([out_lo, out_hi]).all():
            # The LUT is not a window, so a re-windowing viewer starts from the data range instead.
            # LUT entries are at most 16 bits: float32 holds them and their range exactly.
            lut_out -= np.float32(out_lo)
            lut_out /= np.float32(out_hi - out_lo)
            pixels = lut_out
            if nothing_to_read(pixels) is None or nothing_to_read(_minmax_view(raw, minmax)) is not None:
                return pixels, None, minmax, "LINEAR_EXACT"
            return data_range("VOI LUT in the file leaves almost nothing visible: grey levels scaled to the data "
                              "range instead")
        notes.append("VOI LUT in the file is unusable: grey levels scaled to the data range instead")

    center, width = number(ds, "WindowCenter"), number(ds, "WindowWidth")
    function = (text(ds, "VOILUTFunction") or "LINEAR").upper()
    if function not in _FUNCTIONS:
        function = "LINEAR"
    if center is not None and width is not None and width > 0:
        pixels = apply_window(raw, center, width, function=function)  # type: ignore[arg-type]
        # A header window is trusted unless the image it gives has nothing to read (the content rule of
        # core.imaging.checks) while the data range has something: then the data range, with a warning.
        if nothing_to_read(pixels) is None or nothing_to_read(_minmax_view(raw, minmax)) is not None:
            return pixels, (center, width), (center, width), function  # type: ignore[return-value]
        del pixels
        return data_range("window in the file does not fit the image data: grey levels scaled to the data range")
    if center is not None or width is not None:
        return data_range("window in the file is invalid: grey levels scaled to the data range")
    return apply_window(raw, *minmax, function="LINEAR_EXACT"), None, minmax, "LINEAR_EXACT"


def _minmax_view(raw: np.ndarray, minmax: tuple[float, float]) -> np.ndarray:
    """A small data-range view of ``raw``, enough for :func:`nothing_to_read` (which samples ~512 px a side)."""
    step = max(1, -(-max(raw.shape) // 512))
    return apply_window(raw[::step, ::step], *minmax, function="LINEAR_EXACT")


def _box_mean(image: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    h, w = image.shape
    r0, c0 = int(rows[0] * h), int(cols[0] * w)
    # max(..., start + 1) keeps every box non-empty on tiny images.
    return float(image[r0 : max(int(rows[1] * h), r0 + 1), c0 : max(int(cols[1] * w), c0 + 1)].mean())


def _lung_minus_mediastinum(pixels: np.ndarray) -> float:
    """Mean of two lateral lung boxes minus a central mediastinum box; positive on a wrongly inverted chest."""
    step = max(1, min(pixels.shape) // 256)  # a ~256 px view is plenty for box means and keeps this cheap
    small = pixels[::step, ::step]
    lungs = (_box_mean(small, (0.30, 0.60), (0.15, 0.35)) + _box_mean(small, (0.30, 0.60), (0.65, 0.85))) / 2.0
    return lungs - _box_mean(small, (0.30, 0.70), (0.45, 0.55))


def contradicts_inversion(pixels_before_inversion: np.ndarray, view: str | None, body_part: str | None) -> bool:
    """True if inverting this frontal chest would make its lungs clearly brighter than its mediastinum.

    ``view`` and ``body_part`` are the coded values (:mod:`core.imaging.coded`).
    """
    if view not in FRONTAL_VIEWS or body_part not in CHEST_BODY_PARTS:
        return False
    # After inversion, lungs - mediastinum is exactly the negation of the value before it.
    return -_lung_minus_mediastinum(pixels_before_inversion) > POLARITY_MARGIN
