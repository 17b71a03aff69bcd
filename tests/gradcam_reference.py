"""pytorch-grad-cam as the reference the one-pass CAMs are tested against (test-only; the app never uses it).

The target layer is the model's explicit post-ReLU step (``model.relu``) and the target the label's logit
(``ClassifierOutputTarget``). pytorch-grad-cam needs gradients and forward hooks, so it runs on a private
``copy.deepcopy`` of the model: the shared, eval-mode model is never hooked or modified.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn


def _grad_cam_methods() -> dict[str, type]:
    from pytorch_grad_cam import (
        EigenCAM,
        EigenGradCAM,
        GradCAM,
        GradCAMElementWise,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        XGradCAM,
    )

    return {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "hirescam": HiResCAM,
        "xgradcam": XGradCAM,
        "layercam": LayerCAM,
        "gradcam-elementwise": GradCAMElementWise,
        "eigencam": EigenCAM,
        "eigengradcam": EigenGradCAM,
    }


# Gradient-based and eigen methods only: ScoreCAM/AblationCAM need one forward pass per channel (1,024 here),
# minutes per image on a CPU.
CAM_METHODS: tuple[str, ...] = (
    "gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "gradcam-elementwise", "eigencam", "eigengradcam",
)
def cam_with_method(
    model: nn.Module,
    input_tensor: torch.Tensor,
    label_index: int | Sequence[int],
    method: str = "gradcam",
    output: Literal["feature", "input"] = "feature",
) -> np.ndarray:
    """A pytorch-grad-cam map for one or several labels of one image, on a private copy of ``model``.

    The target layer is the model's explicit post-ReLU step (``model.relu``, the last feature map) and the target
    is the label's logit (``ClassifierOutputTarget``). The shared model is neither hooked nor modified.

    Args:
        model: A :class:`~core.model.HiCXRNet` (anything with ``.relu`` after its last feature map).
        input_tensor: ``(1, C, S, S)`` normalised input (see ``Predictor.model_input``).
        label_index: Output index, or a sequence of them (one map each).
        method: One of :data:`CAM_METHODS`.
        output: ``"feature"`` for maps at the feature-map resolution (like ``Analysis.cams``), ``"input"`` for
            pytorch-grad-cam's own upsampling to the input size.

    Returns:
        ``(h, w)`` float32 in [0, 1] for one label, ``(n, h, w)`` for a sequence; each map min-max scaled by
        pytorch-grad-cam.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    methods = _grad_cam_methods()
    if method not in methods:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    if output not in ("feature", "input"):
        raise ValueError(f"output must be 'feature' or 'input', got {output!r}")
    if input_tensor.ndim != 4 or input_tensor.shape[0] != 1:
        raise ValueError(f"expected one image (1, C, S, S), got shape {tuple(input_tensor.shape)}")
    single = isinstance(label_index, (int, np.integer))
    indices = [int(label_index)] if single else [int(i) for i in label_index]
    cls = methods[method]
    if output == "feature":
        # pytorch-grad-cam resizes to the input size; returning None skips the resize (its scale_cam_image allows it).
        cls = type(f"Feature{cls.__name__}", (cls,), {"get_target_width_height": lambda self, x: None})

    private = copy.deepcopy(model).float().eval()
    for p in private.parameters():
        p.requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        x = input_tensor.detach().clone().float().to(next(private.parameters()).device)
        cam = cls(model=private, target_layers=[private.relu])
        try:
            # One label per call: a batch of copies of the image is slower on CPU (memory-bound backward).
            maps = [cam(input_tensor=x, targets=[ClassifierOutputTarget(i)])[0] for i in indices]
        finally:
            cam.activations_and_grads.release()
    maps = np.clip(np.stack(maps).astype(np.float32), 0.0, 1.0)
    return maps[0] if single else maps
