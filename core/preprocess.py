"""The model's input contract, in one place for training, evaluation and inference.

A decoded grayscale image (float32 in [0, 1], see :mod:`core.imaging`) is fitted to ``input_size`` x
``input_size`` by :func:`fit_square` following the model's config:

* ``crop``: ``none`` squashes the whole image (aspect ratio is not kept, as in the reference code); ``center``
  first takes the central square of the shorter side, as torchxrayvision's ``XRayCenterCrop`` does;
* ``resize``: ``bilinear`` is torch's antialiased bilinear resampling (HiCXR's own models); ``skimage`` is
  scikit-image's ``transform.resize`` with anti-aliasing, exactly torchxrayvision's ``XRayResizer``.

It is then normalised as ``(x - mean) / std`` and, for 3-channel models, replicated on three channels. (An
imported torchxrayvision model has ``mean = 0.5, std = 1/2048``: its [-1024, 1024] scaling of 8-bit pixels,
``(2 x / 255 - 1) * 1024``.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.model import ModelConfig


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of a 2-D float image to ``(size, size)``; float32 output."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    if pixels.shape == (size, size):
        return np.ascontiguousarray(pixels, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].clamp_(0.0, 1.0).numpy()


def center_square(pixels: np.ndarray) -> np.ndarray:
    """The central square of the shorter side (torchxrayvision's ``XRayCenterCrop``, same rounding)."""
    h, w = pixels.shape
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    return pixels[top:top + side, left:left + side]


def fit_square(pixels: np.ndarray, size: int, crop: str = "none", resize: str = "bilinear",
               pad: float = 0.5) -> np.ndarray:
    """A 2-D image in [0, 1] -> ``(size, size)`` float32 in [0, 1], by the given crop and resize (module doc).

    ``pad``: the pixel value scikit-image's constant-mode anti-aliasing filter pads with. torchxrayvision resizes
    images already scaled to [-1024, 1024], so it pads with 0 there, i.e. mid-gray (the model's ``mean``) here.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    if crop == "center":
        pixels = center_square(pixels)
    elif crop != "none":
        raise ValueError(f"unknown crop {crop!r}")
    if resize == "bilinear":
        return resize_square(pixels, size)
    if resize != "skimage":
        raise ValueError(f"unknown resize {resize!r}")
    from skimage.transform import resize as sk_resize  # only models with this contract need scikit-image

    with warnings.catch_warnings():  # as XRayResizer does
        warnings.simplefilter("ignore")
        out = sk_resize(np.ascontiguousarray(pixels, dtype=np.float32)[None] - np.float32(pad), (1, size, size),
                        mode="constant", preserve_range=True)
    return np.clip(out[0].astype(np.float32) + np.float32(pad), 0.0, 1.0)


@dataclass(frozen=True)
class Fit:
    """How an image is fitted to the input square (:func:`fit_square`'s ``crop``, ``resize`` and ``pad``)."""

    crop: str = "none"
    resize: str = "bilinear"
    pad: float = 0.5

    @classmethod
    def of(cls, config: ModelConfig) -> Fit:
        """The fit a model's config asks for."""
        return cls(config.crop, config.resize, float(config.mean))

    def apply(self, pixels: np.ndarray, size: int) -> np.ndarray:
        """:func:`fit_square` of ``pixels`` to ``size``."""
        return fit_square(pixels, size, self.crop, self.resize, self.pad)


def fit_to_model(pixels: np.ndarray, config: ModelConfig) -> np.ndarray:
    """:func:`fit_square` with the model's own input size, crop and resize."""
    return Fit.of(config).apply(pixels, config.input_size)


def normalize(batch: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """``(B, 1, S, S)`` pixels in [0, 1] -> normalised model input with ``config.in_channels`` channels."""
    x = (batch - config.mean) / config.std
    return x.expand(-1, config.in_channels, -1, -1) if config.in_channels != 1 else x


def to_model_input(pixels: np.ndarray, config: ModelConfig) -> torch.Tensor:
    """One decoded image ``(H, W)`` in [0, 1] -> a ``(1, C, S, S)`` float32 tensor ready for the model."""
    resized = fit_to_model(pixels, config)
    return normalize(torch.from_numpy(resized)[None, None], config)
