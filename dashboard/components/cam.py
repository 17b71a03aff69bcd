"""Grad-CAM views: the overlay of one label's map on the radiograph, and the labels worth a gallery tile.

The maps themselves come with the ``Analysis`` (computed by the inference engine); this module only draws them on a
display-sized copy of the image. Two kinds of picture, never confused: a label's Grad-CAM (evidence that raises
it) is a heat map in a colour-blind-safe colour map (:func:`core.explain.overlay`); where a label's Grad-CAM is
empty, its *relative* map (where it is least unlikely, not evidence for it) is drawn as dashed contour lines
(:func:`core.explain.contour_overlay`) and captioned as such.
"""

from __future__ import annotations

import numpy as np

from core.analysis import Analysis
from core.explain import (
    COLORMAPS,
    DEFAULT_COLORMAP,
    contour_overlay,
    dashed_contours,
    overlay,
    upsample,
)
from dashboard.components.image_view import downsample

__all__ = ["COLORMAPS", "DEFAULT_COLORMAP", "cam_caption", "cam_layer", "cam_map", "cam_overlay", "gallery_labels",
           "shows_relative_map"]

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


def cam_layer(
    analysis: Analysis,
    label: str,
    shape: tuple[int, int],
    *,
    colormap: str = DEFAULT_COLORMAP,
    opacity: float = 0.45,
    threshold: float = 0.2,
) -> np.ndarray:
    """The map of ``label`` alone, as an RGBA uint8 layer of ``shape`` (h, w) to lay over the displayed image: a
    heat map (alpha ``opacity`` where the map is at least ``threshold``) or, for a relative map, dashed contours
    on a transparent ground. The viewer draws it over the image as windowed, inverted and zoomed there."""
    import matplotlib

    if label not in analysis.labels:
        raise KeyError(f"unknown label {label!r}")
    if shows_relative_map(analysis, label):
        # Contours cost more as the canvas grows: 320 px is sharp enough once stretched.
        scale = min(1.0, 320 / max(shape))
        small = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
        return dashed_contours(upsample(cam_map(analysis, label), small))
    heat = upsample(cam_map(analysis, label), shape)
    # A 256-entry colour table indexed by the map: the same colours as the colour map, at a fraction of its cost.
    table = np.rint(matplotlib.colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.uint8)
    rgba = np.empty((*shape, 4), dtype=np.uint8)
    rgba[..., :3] = table[np.rint(heat * 255.0).astype(np.intp)]
    # Alpha rises over 0.04 of map value above the threshold: a soft edge, not a staircase once stretched.
    ramp = np.clip((heat - np.float32(threshold)) / np.float32(0.04), 0.0, 1.0)
    rgba[..., 3] = np.rint(ramp * np.float32(opacity * 255.0)).astype(np.uint8)
    return rgba


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
