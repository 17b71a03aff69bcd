"""Grad-CAM views: the overlay of one label's map on the radiograph, and the labels worth a gallery tile.

The maps themselves come with the ``Analysis`` (computed by the inference engine); this module only draws them on a
display-sized copy of the image. Two kinds of picture, never confused: a label's Grad-CAM (evidence that raises
it) is a heat map in a colour-blind-safe colour map (:func:`core.explain.overlay`); where a label's Grad-CAM is
empty, its *relative* map (where it is least unlikely, not evidence for it) is drawn as dashed contour lines
(:func:`core.explain.contour_overlay`) and captioned as such.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np

from core.analysis import Analysis
from core.explain import (
    COLORMAPS,
    DEFAULT_COLORMAP,
    contour_overlay,
    contour_paths,
    overlay,
    upsample,
)
from dashboard.components.image_view import downsample

__all__ = ["COLORMAPS", "DEFAULT_COLORMAP", "MapLayer", "cam_caption", "cam_map", "cam_overlay", "colormap_tables",
           "gallery_labels", "map_layer", "shows_relative_map"]

# Overlays are blended at display size: a gallery of 21 full-resolution DICOM overlays would take seconds.
OVERLAY_MAX_SIDE = 768


def cam_overlay(
    analysis: Analysis,
    label: str,
    *,
    colormap: str = DEFAULT_COLORMAP,
    opacity: float = 0.4,
    threshold: float = 0.0,
    base: np.ndarray | None = None,
    max_side: int = OVERLAY_MAX_SIDE,
) -> np.ndarray:
    """RGB uint8 picture of ``label``'s map on the image: a heat map of its Grad-CAM, or dashed contours of its
    relative map when the Grad-CAM is empty (see the module docstring).

    Args:
        analysis: Supplies the CAM and (unless ``base`` is given) the decoded image.
        label: Which output's map to draw; ``KeyError`` names it if unknown.
        colormap: A matplotlib colormap name (see :data:`COLORMAPS`).
        opacity: Blend weight of the heat map, 0 (image only) to 1.
        threshold: CAM values below it are left transparent.
        base: The displayed image (e.g. re-windowed) to draw on, instead of the analysed one.
        max_side: Longest side of the output.
    """
    if label not in analysis.labels:
        raise KeyError(f"unknown label {label!r}")
    image = downsample(np.asarray(base if base is not None else analysis.image, dtype=np.float32), max_side)
    if shows_relative_map(analysis, label):
        return contour_overlay(image, cam_map(analysis, label))
    return overlay(image, cam_map(analysis, label), colormap=colormap, opacity=opacity, threshold=threshold)


@dataclass(frozen=True)
class MapLayer:
    """One label's map as the viewer draws it over the windowed, zoomed image, made once per label: the colours,
    opacity and threshold are applied in the browser, so changing them costs the server nothing.

    ``kind`` is ``"heat"`` (a Grad-CAM: ``png`` is the smoothed map as an 8-bit grey PNG, 0 to 255 for 0 to 1,
    coloured through a colour map's table, transparent below the threshold) or ``"relative"`` (a relative map:
    ``paths`` are its dashed iso-lines, each ``[k, x0, y0, x1, y1, ...]`` with ``k`` the level's rank and pixel
    centres of the ``width`` x ``height`` map grid at integers).
    """

    kind: str
    width: int
    height: int
    png: bytes = b""
    paths: tuple[tuple[float, ...], ...] = ()


#: The longest side of a heat layer (the map is an 8 x 8 or 4 x 4 grid, smoothly upsampled: 256 px stretched by the
#: browser looks the same as full size) and of the grid a relative map's lines are traced on.
HEAT_SIDE, CONTOUR_SIDE = 256, 160


def map_layer(analysis: Analysis, label: str, image_shape: tuple[int, int]) -> MapLayer:
    """``label``'s map for the viewer (see :class:`MapLayer`), on a grid with the aspect of ``image_shape``."""
    from PIL import Image

    if label not in analysis.labels:
        raise KeyError(f"unknown label {label!r}")
    cam = cam_map(analysis, label)
    if shows_relative_map(analysis, label):
        h, w = _grid(image_shape, CONTOUR_SIDE)
        paths = tuple((float(k), *np.round(points, 1).ravel().tolist())
                      for k, points in contour_paths(upsample(cam, (h, w))))
        return MapLayer("relative", w, h, paths=paths)
    h, w = _grid(image_shape, HEAT_SIDE)
    grey = np.rint(upsample(cam, (h, w)) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG", compress_level=1)
    return MapLayer("heat", w, h, png=buffer.getvalue())


def _grid(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    h, w = shape
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


@functools.cache
def colormap_tables() -> bytes:
    """The 256-entry RGB tables of :data:`COLORMAPS`, one after the other (768 bytes each), for the browser to
    colour a heat layer exactly as :func:`core.explain.overlay` does."""
    import matplotlib

    return b"".join(np.rint(matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0)
                    .astype(np.uint8).tobytes() for name in COLORMAPS)


def cam_caption(analysis: Analysis, label: str) -> str:
    """What the picture of ``label`` is, in words: Grad-CAM evidence, a relative map, or nothing to draw."""
    i = analysis.index(label)
    grid = "x".join(str(n) for n in analysis.cams.shape[-2:])
    source = (analysis.cam_labels or analysis.labels)[i]
    of = f" (the map of {source}, which sets this probability)" if source != label else ""
    if analysis.cams[i].any():
        return f"Grad-CAM{of}: regions that raise {label} (heat; {grid} grid, smoothed). An attention cue, " \
               "not a localisation."
    if shows_relative_map(analysis, label):
        return (f"No region raises {label}, so there is no Grad-CAM evidence. Dashed contours: the relative map "
                f"(where {label} is least unlikely){of}. Not evidence for the label.")
    return f"No region raises {label}: nothing to draw."


def shows_relative_map(analysis: Analysis, label: str) -> bool:
    """True when ``label``'s Grad-CAM is empty and the relative (ReLU-free) CAM is drawn instead."""
    i = analysis.index(label)
    return not analysis.cams[i].any() and analysis.relative_cams is not None


def cam_map(analysis: Analysis, label: str) -> np.ndarray:
    """The map drawn for ``label``: its Grad-CAM, or the relative CAM where Grad-CAM has no positive region.

    Grad-CAM keeps only regions that raise a label; for a label the model finds unlikely everywhere that leaves an
    empty map, so the relative map (min-max of the class activation) shows where it is least unlikely instead.
    """
    i = analysis.index(label)
    return analysis.relative_cams[i] if shows_relative_map(analysis, label) else analysis.cams[i]


def gallery_labels(analysis: Analysis, min_probability: float, limit: int | None = None) -> list[str]:
    """Learnt labels whose MC mean is at least ``min_probability``, most probable first (at most ``limit``)."""
    order = np.argsort(-np.asarray(analysis.mc_mean, dtype=float), kind="stable")
    chosen = [analysis.labels[i] for i in order
              if float(analysis.mc_mean[i]) >= min_probability and analysis.learnt(analysis.labels[i])]
    return chosen[:limit] if limit is not None else chosen
