"""A bounded display copy of a radiograph for viewers: the file's own values at 16 bits, and window presets.

A viewer that re-windows must see the values before the window (a DICOM's 10–16 stored bits), not the 8-bit image
the model saw, or window/level has nothing to reveal. :func:`display_image` keeps them, downsampled to at most
``max_side`` pixels a side and stored as ``uint16`` levels (exact for integer data spanning up to 65,536
values), so a 2,128 x 2,000 DICOM becomes about 2 MB however large its float copy. Display only: the analysis
always runs on the image as decoded with the file's own window (``core.imaging``).

Presets. A projection radiograph has no Hounsfield units, so CT's lung/mediastinum/bone windows do not carry over;
here each preset is set from this image's own histogram (its central 70%, where the chest is), in display
polarity (bright = more attenuation): ``lung`` spans the darkest 1–60% of those pixels (lungs dark, mediastinum
white), ``mediastinum`` the 45–99.5% (soft tissue behind the heart, lungs black), ``bone`` the 65–99.9% (the
brightest structures); ``file`` is the
file's own window (DICOM VOI window or LUT range; the full range of a PNG/JPEG), ``full`` the whole stored range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from core.imaging import XrayImage

#: Longest side of the display copy: a viewer pane is at most about 1,000 CSS pixels wide.
DISPLAY_MAX_SIDE = 1024
_LEVELS = 65535.0

#: Preset name -> (low, high) percentiles of the image in display polarity; ``file`` and ``full`` are special.
PRESET_PERCENTILES: dict[str, tuple[float, float]] = {
    "lung": (1.0, 60.0),
    "mediastinum": (45.0, 99.5),
    "bone": (65.0, 99.9),
}
PRESET_TITLES: dict[str, str] = {
    "file": "File's own", "lung": "Lung", "mediastinum": "Mediastinum", "bone": "Bone", "full": "Full range",
}


@dataclass(frozen=True)
class DisplayImage:
    """A radiograph as a viewer needs it.

    Attributes:
        levels: ``(h, w)`` uint16, the file's values (DICOM: after the modality LUT) as ``raw_low + level *
            scale``; at most :data:`DISPLAY_MAX_SIDE` a side.
        raw_low: The smallest value in the file.
        raw_high: The largest value in the file.
        inverted: True for MONOCHROME1 (a higher value is darker): windowing then inverts, as the reader did.
        sigmoid: True when the file asks for DICOM's SIGMOID VOI function rather than a linear ramp.
        presets: Name -> (centre, width) in the file's units, in :data:`PRESET_TITLES` order.
        source_size: ``(width, height)`` of the decoded image.
        integer: True when the file's values are integers (the readout then shows no decimals).
        scale: File units per level: 1 for integer data spanning at most 65,536 values (kept exactly), else the
            span over 65,535.
    """

    levels: np.ndarray
    raw_low: float
    raw_high: float
    inverted: bool
    sigmoid: bool
    presets: dict[str, tuple[float, float]] = field(default_factory=dict)
    source_size: tuple[int, int] = (0, 0)
    integer: bool = True
    scale: float = 1.0

    @property
    def nbytes(self) -> int:
        """Bytes held (the pixel levels; the rest is a few numbers)."""
        return int(self.levels.nbytes)

    def raw(self) -> np.ndarray:
        """The levels back in the file's units (float32)."""
        return self.levels.astype(np.float32) * np.float32(self.scale) + np.float32(self.raw_low)

    def window(self, center: float, width: float) -> np.ndarray:
        """The display copy windowed like :meth:`core.imaging.XrayImage.rewindow`: float32 in [0, 1], inverted
        for MONOCHROME1."""
        if not width > 0:
            raise ValueError(f"window width must be positive, got {width!r}")
        x = self.raw()
        if self.sigmoid:
            out = (1.0 / (1.0 + np.exp(-4.0 * (x.astype(np.float64) - center) / width))).astype(np.float32)
        else:
            out = np.clip((x - np.float32(center - width / 2.0)) / np.float32(width), 0.0, 1.0)
        return (1.0 - out) if self.inverted else out


def display_image(image: XrayImage, max_side: int = DISPLAY_MAX_SIDE) -> DisplayImage:
    """The bounded display copy of a decoded image (read with ``keep_raw=True``; else its 8-bit-like pixels)."""
    if image.raw is not None:
        values = np.asarray(image.raw, dtype=np.float32)
        window = image.default_window
        inverted = bool(image.metadata.inverted)
        sigmoid = image.window_function == "SIGMOID"
    else:  # no raw values: the windowed pixels are all there is (0..1)
        values = np.asarray(image.pixels, dtype=np.float32)
        window, inverted, sigmoid = (0.5, 1.0), False, False
    h, w = values.shape
    low, high = float(values.min()), float(values.max())
    integer = bool(np.all(values.ravel()[:4096] == np.round(values.ravel()[:4096])))
    small = _shrink(values, max_side)
    span = max(high - low, 1e-6)
    scale = 1.0 if integer and span <= _LEVELS else span / _LEVELS
    levels = np.rint((small - np.float32(low)) / np.float32(scale)).clip(0, _LEVELS).astype(np.uint16)
    presets = _presets(small, low, high, window, inverted)
    return DisplayImage(levels=levels, raw_low=low, raw_high=high, inverted=inverted, sigmoid=sigmoid,
                        presets=presets, source_size=(w, h), integer=integer, scale=scale)


def _shrink(values: np.ndarray, max_side: int) -> np.ndarray:
    h, w = values.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return values
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Box filter: every source pixel counts once, so the shrunk copy keeps the file's value distribution.
    return np.asarray(Image.fromarray(values, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)


def _presets(values: np.ndarray, low: float, high: float, window: tuple[float, float] | None,
             inverted: bool) -> dict[str, tuple[float, float]]:
    # Percentiles of the central 70% of the film (the chest; collimation borders and labels sit at the edges), in
    # display polarity: for MONOCHROME1 the darkest display pixels are the highest values.
    h, w = values.shape
    centre = values[int(0.15 * h):max(int(0.85 * h), int(0.15 * h) + 1), int(0.15 * w):max(int(0.85 * w),
                                                                                              int(0.15 * w) + 1)]
    sample = centre[:: max(1, centre.shape[0] // 256), :: max(1, centre.shape[1] // 256)].ravel()
    out: dict[str, tuple[float, float]] = {}
    out["file"] = (float(window[0]), float(window[1])) if window else ((low + high) / 2.0, high - low)
    for name, (p_lo, p_hi) in PRESET_PERCENTILES.items():
        if inverted:
            a, b = np.percentile(sample, [100.0 - p_hi, 100.0 - p_lo])
        else:
            a, b = np.percentile(sample, [p_lo, p_hi])
        width = max(float(b - a), (high - low) / 1000.0, 1e-6)
        out[name] = ((float(a) + float(b)) / 2.0, width)
    out["full"] = ((low + high) / 2.0, max(high - low, 1e-6))
    return {name: out[name] for name in PRESET_TITLES}
