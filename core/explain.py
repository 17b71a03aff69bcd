"""Visual explanations: heat-map overlays, contours and contact sheets of the model's maps.

The maps come from :mod:`core.inference` (one-pass CAMs for every label, equal to Grad-CAM at the post-ReLU layer
up to scale; ``tests/gradcam_reference.py`` checks them against pytorch-grad-cam). This module renders them.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from core.analysis import Analysis

#: Perceptually uniform, colour-blind-safe maps only (no jet/rainbow: their bright bands invent edges).
COLORMAPS: tuple[str, ...] = ("inferno", "magma", "viridis", "cividis")
DEFAULT_COLORMAP = "inferno"
#: Levels and colour of the dashed contours that draw a *relative* map (a different kind of picture than evidence).
RELATIVE_LEVELS = (0.5, 0.75, 0.9)
RELATIVE_COLOR = (0.0, 0.85, 0.95)
#: Dash and gap of those lines, in line widths (matplotlib's dashed style).
DASH_ON, DASH_OFF = 3.7, 1.6


def upsample(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Smooth bicubic resize (half-pixel centres) of a ``(h, w)`` map to ``shape``; float32, clipped to [0, 1].

    Bicubic rather than bilinear: a coarse map (8 x 8) upsampled bilinearly shows its grid as ridges.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {cam.shape}")
    if cam.shape == tuple(shape):
        return np.clip(cam, 0.0, 1.0)
    t = torch.from_numpy(np.ascontiguousarray(cam))[None, None]
    mode = "bicubic" if min(cam.shape) >= 2 else "bilinear"
    return F.interpolate(t, size=tuple(shape), mode=mode, align_corners=False)[0, 0].clamp_(0, 1).numpy()


def overlay(
    image: np.ndarray,
    cam: np.ndarray,
    colormap: str = DEFAULT_COLORMAP,
    opacity: float = 0.4,
    threshold: float = 0.0,
) -> np.ndarray:
    """Blend a heat map over a grayscale image (the picture of *evidence*: a Grad-CAM).

    Args:
        image: ``(H, W)`` grayscale in [0, 1].
        cam: ``(h, w)`` map in [0, 1] (any resolution; upsampled bilinearly to ``(H, W)``).
        colormap: A matplotlib colormap name (e.g. one of :data:`COLORMAPS`).
        opacity: Weight of the heat map where it is shown, in [0, 1].
        threshold: Map values below it are left transparent (the plain image shows through).

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D grayscale array, got shape {image.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}; try one of {', '.join(COLORMAPS)}") from None
    heat = upsample(cam, image.shape)
    colour = cmap(heat)[..., :3].astype(np.float32)
    gray = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=2)
    alpha = np.where(heat >= threshold, np.float32(opacity), np.float32(0.0))[..., None]
    return np.rint((1.0 - alpha) * gray * 255.0 + alpha * colour * 255.0).astype(np.uint8)


def dashed_contours(heat: np.ndarray, levels: Sequence[float] = RELATIVE_LEVELS,
                    color: tuple[float, float, float] = RELATIVE_COLOR, supersample: int = 2) -> np.ndarray:
    """Dashed iso-lines of a map, alone on a transparent ground: the picture of a *relative* map.

    Lines follow ``levels`` (higher levels thicker: 1.4, 3.1 and 4.7 px, dashes 3.7 and gaps 1.6 line widths, as
    matplotlib draws a dashed contour at 100 dpi). Traced with scikit-image's marching squares and drawn by PIL on
    a ``supersample`` times larger canvas, then reduced, so the lines are smooth; a few milliseconds for a 320 px
    map, against about 80 ms for a matplotlib figure, which matters on each click in the viewer.

    Args:
        heat: ``(H, W)`` map in [0, 1] at the size of the picture.
        levels: Map values the lines follow.
        color: RGB in [0, 1].
        supersample: Drawing scale before the reduction (anti-aliasing).

    Returns:
        ``(H, W, 4)`` uint8 RGBA, transparent where no line passes.
    """
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {heat.shape}")
    h, w = heat.shape
    s = max(1, int(supersample))
    canvas = Image.new("RGBA", (w * s, h * s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    rgba = (*(int(round(c * 255)) for c in color), 255)
    for k, path in contour_paths(heat, levels):
        width = relative_line_width(k) * s
        for run in _dashes(path * s + (s - 1) / 2.0, on=DASH_ON * width, off=DASH_OFF * width):
            draw.line(run.ravel().tolist(), fill=rgba, width=max(1, round(width)))
    if s > 1:
        canvas = canvas.resize((w, h), Image.Resampling.BOX)
    return np.asarray(canvas, dtype=np.uint8)


def relative_line_width(k: int) -> float:
    """Width in pixels of the dashed line of the ``k``-th (sorted) level: matplotlib's 1, 2.2, 3.4 points at
    100 dpi. The dashboard's viewer draws the same lines in the browser with these widths and :data:`DASH_ON` /
    :data:`DASH_OFF`."""
    return (1.0 + 1.2 * k) * 100.0 / 72.0


def warm() -> None:
    """Import scikit-image's marching squares ahead of the first relative map (its lazy loader costs about 30 ms
    once per process; the dashboard calls this from its background warm-up thread)."""
    import skimage.measure  # noqa: F401 - imported for its side effect only


def contour_paths(heat: np.ndarray, levels: Sequence[float] = RELATIVE_LEVELS) -> list[tuple[int, np.ndarray]]:
    """The iso-lines of a map (scikit-image's marching squares): ``(k, points)`` per line, ``k`` the rank of its
    level among the sorted ``levels`` and ``points`` an ``(N, 2)`` array of x, y pixel positions (pixel centres at
    integers). A flat map has none."""
    from skimage.measure import find_contours

    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {heat.shape}")
    if not float(heat.max()) > float(heat.min()):
        return []
    return [(k, path[:, ::-1]) for k, level in enumerate(sorted(levels)) for path in find_contours(heat, level)]


def _dashes(points: np.ndarray, on: float, off: float) -> list[np.ndarray]:
    """The "on" stretches of a dash pattern laid along a polyline (``(N, 2)`` x, y points)."""
    steps = np.hypot(*np.diff(points, axis=0).T)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    if along[-1] <= 0:
        return []
    # Resample every two canvas pixels, then keep the samples whose place in the pattern falls on a dash.
    at = np.linspace(0.0, along[-1], max(2, int(np.ceil(along[-1] / 2.0)) + 1))
    xy = np.stack([np.interp(at, along, points[:, 0]), np.interp(at, along, points[:, 1])], axis=1)
    dash = (at % (on + off)) < on
    edges = np.flatnonzero(np.diff(np.concatenate([[0], dash.astype(np.int8), [0]])))
    return [xy[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= 2]


def contour_overlay(image: np.ndarray, cam: np.ndarray, levels: Sequence[float] = RELATIVE_LEVELS,
                    color: tuple[float, float, float] = RELATIVE_COLOR) -> np.ndarray:
    """Dashed iso-lines of a map over a grayscale image: the picture of a *relative* map, which ranks regions
    but is not evidence for the label, so it must not look like a heat map.

    Args:
        image: ``(H, W)`` grayscale in [0, 1].
        cam: ``(h, w)`` map in [0, 1] (upsampled bicubically to ``(H, W)``).
        levels: Map values the lines follow (higher levels are drawn thicker).
        color: RGB in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D grayscale array, got shape {image.shape}")
    lines = dashed_contours(upsample(cam, image.shape), levels, color).astype(np.float32) / 255.0
    gray = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=2)
    alpha = lines[..., 3:]
    return np.rint(((1.0 - alpha) * gray + alpha * lines[..., :3]) * 255.0).astype(np.uint8)


def contact_sheet(
    analysis: Analysis,
    labels: Sequence[str] | None = None,
    tile: int = 192,
    columns: int = 7,
    colormap: str = DEFAULT_COLORMAP,
    opacity: float = 0.4,
) -> np.ndarray:
    """One RGB image with a captioned overlay tile per label (``label  p=MC mean``), in taxonomy order.

    Returns:
        ``(rows * (tile + caption), columns * tile, 3)`` uint8.
    """
    labels = list(labels) if labels is not None else list(analysis.labels)
    base = np.asarray(Image.fromarray(np.rint(np.clip(analysis.image, 0, 1) * 255).astype(np.uint8)).resize(
        (tile, tile), Image.BILINEAR), dtype=np.float32) / 255.0
    caption = 16
    rows = -(-len(labels) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), "black")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for n, label in enumerate(labels):
        i = analysis.index(label)
        r, c = divmod(n, columns)
        x, y = c * tile, r * (tile + caption)
        sheet.paste(Image.fromarray(overlay(base, analysis.cams[i], colormap, opacity)), (x, y + caption))
        draw.text((x + 2, y + 2), f"{label[:22]} {analysis.mc_mean[i]:.2f}", fill="white", font=font)
    return np.asarray(sheet)
