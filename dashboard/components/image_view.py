"""The radiograph viewer: display-only windowing, a zoomable plotly image, and a non-identifying metadata table.

Re-windowing changes what the clinician sees, never what the model saw: the analysis always runs on the image as
decoded with the file's own window (``core.imaging``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from PIL import Image

from core.imaging import XrayImage, to_uint8

# Displayed images are downsampled to this side: a browser panel is at most ~1000 px wide, and sending a
# 2000 x 2000 DICOM as PNG on every rerun would make the page sluggish.
DISPLAY_MAX_SIDE = 1024

# Technical fields only; the DICOM reader already refuses to copy patient/study/date/institution attributes,
# and this allow-list makes sure nothing else slips into the panel if the metadata grows.
_METADATA_FIELDS: tuple[tuple[str, str], ...] = (
    ("format", "Format"),
    ("modality", "Modality"),
    ("view_position", "View"),
    ("body_part", "Body part"),
    ("size", "Size (W × H)"),
    ("bits_stored", "Bits stored"),
    ("photometric", "Photometric"),
    ("transfer_syntax", "Transfer syntax"),
    ("window", "Window (C / W)"),
    ("inverted", "Inverted on read"),
)


@dataclass(frozen=True)
class WindowRange:
    """Slider bounds and defaults for re-windowing an image (raw units)."""

    low: float
    high: float
    center: float
    width: float
    step: float


def window_range(image: XrayImage) -> WindowRange | None:
    """Bounds for level/width sliders, or ``None`` when the image was decoded without raw values."""
    if image.raw is None:
        return None
    low, high = float(np.min(image.raw)), float(np.max(image.raw))
    span = max(high - low, 1e-6)
    center, width = image.default_window or ((low + high) / 2.0, span)
    # Integer-valued data (nearly all DICOMs) gets integer steps; rescaled float data gets ~1000 steps.
    step = 1.0 if span >= 50 and float(np.asarray(image.raw).ravel()[0]).is_integer() else span / 1000.0
    return WindowRange(low=low, high=high, center=float(center), width=float(width), step=step)


def display_pixels(
    image: XrayImage, center: float | None = None, width: float | None = None, invert: bool = False
) -> np.ndarray:
    """The image as shown: re-windowed if ``center``/``width`` are given (needs raw values), optionally inverted."""
    if center is not None and width is not None and image.raw is not None and width > 0:
        pixels = image.rewindow(center, width)
    else:
        pixels = image.pixels
    return 1.0 - pixels if invert else pixels


def downsample(pixels: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """Shrink a [0, 1] float image so its longer side is at most ``max_side`` (aspect kept); display only."""
    h, w = pixels.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return pixels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = Image.fromarray(np.asarray(pixels, dtype=np.float32), mode="F").resize(size, Image.Resampling.BOX)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def image_figure(pixels: np.ndarray, height: int = 520, title: str | None = None) -> go.Figure:
    """A zoomable, pannable grayscale ([0, 1] float) or RGB (uint8) image; double-click resets the zoom.

    The image travels as one embedded PNG (plotly's ``binary_string``), not as a JSON array of numbers, so a
    1024 px radiograph costs a few hundred kB per render instead of megabytes.
    """
    arr = np.asarray(pixels)
    shown = to_uint8(downsample(arr)) if arr.ndim == 2 else arr
    fig = px.imshow(shown, binary_string=True, binary_format="png", binary_compression_level=1)
    fig.update_traces(hoverinfo="skip", hovertemplate=None)
    fig.update_layout(
        height=height,
        margin=dict(l=0, r=0, t=30 if title else 0, b=0),
        title=dict(text=title) if title else None,
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        dragmode="pan",
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
    )
    return fig


def metadata_table(metadata: Mapping[str, Any]) -> pd.DataFrame:
    """Two-column table (``field``, ``value``) of the allow-listed technical metadata that is present."""
    meta = dict(metadata)
    if "width" in meta and "height" in meta:
        meta["size"] = f"{meta['width']} × {meta['height']}"
    rows = []
    for key, title in _METADATA_FIELDS:
        value = meta.get(key)
        if value is None or value == "":
            continue
        if key == "window":
            value = f"{value[0]:g} / {value[1]:g}"
        elif key == "inverted":
            value = "yes (MONOCHROME1)" if value else "no"
        rows.append({"field": title, "value": str(value)})
    return pd.DataFrame(rows, columns=["field", "value"])


def is_dicom_metadata(metadata: Mapping[str, Any]) -> bool:
    """True when the image came from a DICOM file (window/level controls only make sense there)."""
    return str(metadata.get("format", "")).upper().startswith("DICOM")
