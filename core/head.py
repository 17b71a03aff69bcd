"""Everything the model's head gives from one backbone pass: probabilities, MC dropout statistics and CAMs.

From the post-ReLU feature map ``A`` (B x K x h x w) of one backbone pass and the head's weights ``W`` (L x K) and
bias ``b``:

* deterministic probability: ``f(sigmoid((W @ GAP(A) + b) / T))`` (dropout off), with ``f`` the identity or, for
  a C-HMCNN model, the max-constraint module (:func:`core.model.output_probabilities`);
* Monte-Carlo dropout: ``N`` Bernoulli masks on the pooled features (where the model's dropout sits), drawn from a
  private ``torch.Generator`` seeded per image, so a result depends only on (image, variant, N, seed), not on the
  batch it ran in or on other threads; mean and population standard deviation (ddof=0) of the ``N`` outputs (a
  model without dropout has nothing to sample: the deterministic probability with a standard deviation of 0);
* CAMs for every label: ``relu(sum_k W_lk A_k)``, each scaled by its own maximum (all-zero maps stay zero). For a
  ReLU -> GAP -> linear head this is Grad-CAM at the post-ReLU layer up to a positive factor (``1/(h*w)``);
  ``tests/test_explain.py`` checks that against pytorch-grad-cam. Under the max constraint a label's probability
  is that of one of its descendants (its *source*), so its map is the source's map: the map always shows the
  evidence behind the number displayed. Likewise for an imported model's mapped head
  (:meth:`core.model.HiCXRNet.label_logits`): a label that is the maximum of several outputs shows the map of the
  output that gave the maximum.

``T`` is the model card's per-label temperature when calibration is applied, else 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from core.contract import DEFAULT_MC_SAMPLES
from core.model import HiCXRNet, output_probabilities


@dataclass(frozen=True)
class HeadOutputs:
    """What the head gives for a batch of feature maps (NumPy, float32).

    Attributes:
        logits: ``(B, L)`` deterministic logits after temperature scaling.
        probability: ``(B, L)`` output probabilities (max-constrained for C-HMCNN models).
        mc_mean: ``(B, L)`` mean of the MC dropout probabilities.
        mc_std: ``(B, L)`` population standard deviation of the MC probabilities.
        cams: ``(B, L, h, w)`` per-label CAMs in [0, 1].
        relative_cams: ``(B, L, h, w)`` the same maps without the ReLU, min-max scaled (or ``None``).
        cam_source: ``(B, L)`` index of the label whose map is shown for each label (itself, except under the
            max constraint).
        pooled: ``(B, K)`` global-average-pooled features (for the out-of-distribution check).
        timings: seconds spent in ``mc`` and ``cam`` for the whole batch.
    """

    logits: np.ndarray
    probability: np.ndarray
    mc_mean: np.ndarray
    mc_std: np.ndarray
    cams: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    relative_cams: np.ndarray | None = None
    cam_source: np.ndarray | None = None
    pooled: np.ndarray | None = None


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor, relative: bool = False) -> torch.Tensor:
    """Per-label CAMs ``(B, L, h, w)`` in [0, 1] from post-ReLU features ``(B, K, h, w)`` and head weights ``(L, K)``.

    Default: ``relu(sum_k W_lk A_k)`` scaled by each map's own maximum (equal to Grad-CAM at this layer); a map with
    no positive value stays all zero. ``relative=True``: the map without the ReLU, min-max scaled (a constant map
    gives zeros), which still ranks regions when a label's evidence is negative everywhere.
    """
    return _scale_maps(torch.einsum("lk,bkhw->blhw", weight, features), relative)


def _scale_maps(raw: torch.Tensor, relative: bool) -> torch.Tensor:
    """Signed class activation ``(B, L, h, w)`` -> ReLU/max-scaled (Grad-CAM) or min-max-scaled (relative) maps."""
    tiny = torch.finfo(raw.dtype).tiny
    if relative:
        low = raw.amin(dim=(2, 3), keepdim=True)
        span = raw.amax(dim=(2, 3), keepdim=True) - low
        return torch.where(span > 0, (raw - low) / span.clamp_min(tiny), torch.zeros_like(raw))
    cams = torch.relu(raw)
    peak = cams.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, cams / peak.clamp_min(tiny), torch.zeros_like(cams))


def dropout_masks(n: int, k: int, p: float, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, k)`` inverted-dropout masks (0 or ``1/(1-p)``) drawn from a private generator seeded with ``seed``."""
    if p <= 0.0:
        return torch.ones(n, k, device=device)
    if p >= 1.0:
        return torch.zeros(n, k, device=device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    keep = torch.rand(n, k, generator=generator, device=device) >= p
    return keep.to(torch.float32) / (1.0 - p)


def constraint_source(probs: torch.Tensor, descendants: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` index of the descendant (or self) whose probability the max constraint takes for each label."""
    r = descendants.to(device=probs.device, dtype=torch.bool)
    expanded = probs.unsqueeze(-2).expand(*probs.shape[:-1], r.shape[0], r.shape[1])
    return torch.where(r, expanded, torch.full((), -1.0, dtype=probs.dtype, device=probs.device)).argmax(dim=-1)


def head_outputs(
    model: HiCXRNet,
    features: torch.Tensor,
    mc_samples: int = DEFAULT_MC_SAMPLES,
    seed: int = 0,
    temperature: torch.Tensor | None = None,
    with_cams: bool = True,
    descendants: torch.Tensor | None = None,
) -> HeadOutputs:
    """Probabilities, MC dropout statistics and CAMs from one backbone pass (see the module docstring).

    Args:
        model: The model whose head (``pool``, ``dropout.p``, ``classifier``) is used; it is not modified.
        features: ``model.forward_features(x)``, shape ``(B, K, h, w)``.
        mc_samples: Number of dropout masks ``N`` (>= 1).
        seed: Seed of each image's mask generator (the same masks for every image of the batch).
        temperature: ``(L,)`` per-label temperatures to divide logits by, or ``None``.
        with_cams: Compute CAMs (else ``cams`` has shape ``(B, L, 0, 0)``).
        descendants: The max-constraint matrix of a C-HMCNN model (:func:`core.model.constraint_matrix`), or
            ``None`` for independent sigmoids.
    """
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    weight, bias = model.classifier.weight, model.classifier.bias
    scale = None if temperature is None else temperature.to(features.device, features.dtype)

    def calibrated(logits: torch.Tensor) -> torch.Tensor:
        return logits if scale is None else logits / scale

    with torch.inference_mode():
        pooled = torch.flatten(model.pool(features), 1)  # (B, K)
        rows = torch.nn.functional.linear(pooled, weight, bias)  # the classifier's rows (a mapped head: not labels)
        logits = calibrated(model.label_logits(rows))
        probability = output_probabilities(logits, descendants)
        t0 = time.perf_counter()
        if float(model.dropout.p) <= 0.0:
            # No dropout: every sample is the deterministic pass. Sampling anyway can show a spread that is not
            # there: a batched matrix product may round identical rows differently in the last bit (seen: 6e-8).
            mc_mean, mc_std = probability, torch.zeros_like(probability)
        else:
            masks = dropout_masks(mc_samples, pooled.shape[1], float(model.dropout.p), seed, features.device)
            # (N, B, K) masked features -> (N, B, L) probabilities; all images share the seed's N masks.
            mc_logits = calibrated(model.label_logits(
                torch.nn.functional.linear(masks[:, None, :] * pooled[None], weight, bias)))
            mc_probs = output_probabilities(mc_logits, descendants)
            mc_mean, mc_std = mc_probs.mean(0), mc_probs.std(0, correction=0)
        t1 = time.perf_counter()
        relative = source = None
        if with_cams:
            raw = torch.einsum("lk,bkhw->blhw", weight, features)  # once for both kinds of map
            mapped = model.label_source(rows)
            if mapped is not None:  # each label's map is that of the row its logit came from (none: zeros)
                raw = torch.cat([raw, raw.new_zeros(raw.shape[0], 1, *raw.shape[2:])], dim=1)
                raw = torch.gather(raw, 1, mapped[:, :, None, None].expand(-1, -1, *raw.shape[2:]))
            if descendants is not None:
                source = constraint_source(torch.sigmoid(logits), descendants)
                raw = torch.gather(raw, 1, source[:, :, None, None].expand(-1, -1, *raw.shape[2:]))
            cams = _scale_maps(raw, relative=False)
            relative = _scale_maps(raw, relative=True).float().cpu().numpy()
        else:
            cams = features.new_zeros((features.shape[0], logits.shape[1], 0, 0))
        t2 = time.perf_counter()
        n_labels = logits.shape[1]
        if source is None:
            source = torch.arange(n_labels).expand(features.shape[0], n_labels)
        return HeadOutputs(
            logits=logits.float().cpu().numpy(),
            probability=probability.float().cpu().numpy(),
            mc_mean=mc_mean.float().cpu().numpy(),
            mc_std=mc_std.float().cpu().numpy(),
            cams=cams.float().cpu().numpy(),
            timings={"mc": t1 - t0, "cam": t2 - t1},
            relative_cams=relative,
            cam_source=source.cpu().numpy(),
            pooled=pooled.float().cpu().numpy(),
        )
