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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D grayscale array, got shape {image.shape}")
    h, w = image.shape
    heat = upsample(cam, image.shape)
    fig = Figure(figsize=(w / 100.0, h / 100.0), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if float(heat.max()) > float(heat.min()):
        widths = [1.0 + 1.2 * k for k in range(len(levels))]
        ax.contour(heat, levels=sorted(levels), colors=[color], linewidths=widths, linestyles="dashed")
    ax.set_axis_off()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


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
