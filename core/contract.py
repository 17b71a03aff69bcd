"""The model's contract with its callers, in one place: input, architecture defaults, Monte-Carlo default.

Training configs (:class:`core.config.ModelSection`), pretraining configs (:class:`core.pretrain.PretrainModel`),
the weights file's :class:`core.model.ModelConfig` and the model card's ``preprocessing`` check all derive from
these dataclasses, so a default changes here and nowhere else. Torch-free, so configs and the dashboard can
import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

#: Output strides the backbone supports: 32 (standard DenseNet121), 16 or 8 (the last one or two transitions'
#: pools removed; pooling has no weights, so a checkpoint loads at any stride).
OUTPUT_STRIDES = (8, 16, 32)
#: The smallest input side (DenseNet121 downsamples by up to 32 and needs a 2 x 2 map to pool).
MIN_INPUT_SIZE = 64
#: Monte-Carlo dropout samples per image when a caller does not say (CLI, dashboard, Predictor, head).
DEFAULT_MC_SAMPLES = 10
#: Ways the outputs can be tied together: independent sigmoids, or C-HMCNN's max constraint.
CONSTRAINTS = ("none", "max")


@dataclass
class InputContract:
    """What a model expects of its input.

    Attributes:
        input_size: Square side the grayscale image in [0, 1] is resized to.
        in_channels: 1 (grayscale) or 3 (gray replicated).
        mean: Normalisation mean applied to [0, 1] pixels.
        std: Normalisation standard deviation.
    """

    input_size: int = 320
    in_channels: int = 1
    mean: float = 0.5
    std: float = 0.25


@dataclass
class Architecture(InputContract):
    """The input contract plus the architecture choices a checkpoint does not fix.

    Attributes:
        dropout: Dropout before the linear head (also what MC sampling uses).
        output_stride: One of :data:`OUTPUT_STRIDES`.
        constraint: One of :data:`CONSTRAINTS`.
    """

    dropout: float = 0.5
    output_stride: int = 32
    constraint: str = "none"


def contract_of(obj: Any, kind: type = Architecture) -> dict[str, Any]:
    """The values of ``kind``'s fields (the input contract, or the whole architecture) read from ``obj``."""
    return {f.name: getattr(obj, f.name) for f in fields(kind)}
