"""The model's input contract, in one place for training, evaluation and inference.

A decoded grayscale image (float32 in [0, 1], see :mod:`core.imaging`) is squashed to ``input_size`` x
``input_size`` with antialiased bilinear resampling (aspect ratio is not kept, as in the reference code), then
normalised as ``(x - mean) / std`` and, for 3-channel models, replicated on three channels.
"""

from __future__ import annotations

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


def normalize(batch: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """``(B, 1, S, S)`` pixels in [0, 1] -> normalised model input with ``config.in_channels`` channels."""
    x = (batch - config.mean) / config.std
    return x.expand(-1, config.in_channels, -1, -1) if config.in_channels != 1 else x


def to_model_input(pixels: np.ndarray, config: ModelConfig) -> torch.Tensor:
    """One decoded image ``(H, W)`` in [0, 1] -> a ``(1, C, S, S)`` float32 tensor ready for the model."""
    resized = resize_square(pixels, config.input_size)
    return normalize(torch.from_numpy(resized)[None, None], config)
