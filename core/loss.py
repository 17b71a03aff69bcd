r"""Hierarchical binary cross-entropy (HBCE).

.. math::

    L = \frac{\sum_{b,l} m_{bl}\,\mathrm{BCE}(z_{bl}, y_{bl})}{\max(1, \sum_{b,l} m_{bl})}
        + \lambda \cdot \frac{1}{B} \sum_b \sum_{(p,c) \in E} P_{pc}\, v(s_{bp}, s_{bc})

with logits :math:`z`, probabilities :math:`s = \sigma(z)`, targets :math:`y`, known-entry mask :math:`m`,
edge penalties :math:`P_{pc}` (:mod:`core.penalties`) and a violation function :math:`v`:

* ``hard``: :math:`v = \mathbb{1}[s_p < 0.5 \wedge s_c > 0.5]`, the paper's rule. It is a step function of the
  predictions, so **it has no gradient**: with ``hard`` the gradient is exactly that of the BCE term; the penalty
  only shifts the loss value (and so anything that monitors it). Kept for fidelity with the official code.
* ``soft``: :math:`v = \mathrm{relu}(s_c - s_p)`, a differentiable surrogate that is 0 when the child's
  probability does not exceed its parent's and otherwise pushes the child down and the parent up.

The penalty is summed over edges (as the paper writes it) and averaged over the batch; it does not look at the
targets, so images with unknown labels still contribute consistency. With :math:`\lambda = 0` the loss is plain
masked BCE. BCE is taken on logits (``binary_cross_entropy_with_logits``) for numerical stability, unlike the
official code, which clips probabilities.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.taxonomy import Taxonomy, violation_mask

Violation = Literal["hard", "soft"]


def masked_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean BCE-with-logits over the known entries (all entries when ``mask`` is None); 0 if none is known."""
    elementwise = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if mask is None:
        return elementwise.mean()
    weight = mask.to(elementwise.dtype)
    return (elementwise * weight).sum() / weight.sum().clamp_min(1.0)


def edge_violations(
    probs: torch.Tensor, parent_index: torch.Tensor, child_index: torch.Tensor, kind: Violation
) -> torch.Tensor:
    """Violation ``v(parent, child)`` per image and edge, shape ``(B, E)``; see the module docstring."""
    parent, child = probs[:, parent_index], probs[:, child_index]
    if kind == "hard":
        return violation_mask(parent, child, 0.5).to(probs.dtype).detach()
    if kind == "soft":
        return F.relu(child - parent)
    raise ValueError(f"unknown violation function {kind!r}; expected 'hard' or 'soft'")


class HierarchicalBCELoss(nn.Module):
    """Masked BCE plus ``lam`` times the penalty-weighted sum of parent/child violations.

    Args:
        taxonomy: Gives the edges and the output order.
        penalties: ``P_pc`` per edge, shape ``(E,)`` (see :mod:`core.penalties`).
        lam: Weight of the hierarchy term; 0 gives plain masked BCE.
        violation: ``hard`` (paper, gradient-free) or ``soft`` (differentiable).
    """

    def __init__(
        self, taxonomy: Taxonomy, penalties: np.ndarray | torch.Tensor, lam: float = 1.0, violation: Violation = "soft"
    ) -> None:
        super().__init__()
        penalties = torch.as_tensor(np.asarray(penalties, dtype=np.float32))
        if penalties.shape != (len(taxonomy.edges),):
            raise ValueError(
                f"expected {len(taxonomy.edges)} penalties (one per edge), got shape {tuple(penalties.shape)}"
            )
        if violation not in ("hard", "soft"):
            raise ValueError(f"unknown violation function {violation!r}; expected 'hard' or 'soft'")
        self.lam = float(lam)
        self.violation: Violation = violation
        self.register_buffer("penalties", penalties)
        self.register_buffer("parent_index", torch.as_tensor(taxonomy.parent_index))
        self.register_buffer("child_index", torch.as_tensor(taxonomy.child_index))

    def components(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The two terms separately: ``{"bce": ..., "penalty": ...}`` (penalty before multiplying by ``lam``)."""
        bce = masked_bce_with_logits(logits.float(), targets.float(), mask)
        if self.lam == 0.0:
            return {"bce": bce, "penalty": bce.new_zeros(())}
        probs = torch.sigmoid(logits.float())
        v = edge_violations(probs, self.parent_index, self.child_index, self.violation)
        penalty = (v * self.penalties).sum(dim=1).mean()
        return {"bce": bce, "penalty": penalty}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss for a batch of ``logits`` ``(B, L)``, ``targets`` ``(B, L)`` and optional ``mask``."""
        parts = self.components(logits, targets, mask)
        return parts["bce"] + self.lam * parts["penalty"]


class MaxConstraintLoss(nn.Module):
    r"""C-HMCNN's max-constraint loss (MCLoss; Giunchiglia & Lukasiewicz, NeurIPS 2020), with a known-entry mask.

    The model's output probability for label :math:`a` is the max-constraint module
    :math:`\mathrm{MCM}_a(h) = \max_{c \in D_a} h_c` over :math:`a` and its descendants :math:`D_a`, with
    :math:`h = \sigma(z)`, so a parent is never below its children (coherent by construction). Training uses

    .. math::

        L = -\frac{1}{\sum m} \sum_{b,a} m_{ba} \Big[ y_{ba} \log \max_{c \in D_a,\, y_{bc} = 1} h_{bc}
            + (1 - y_{ba}) \log\big(1 - \max_{c \in D_a} h_{bc}\big) \Big]

    For a positive label only its *positive* descendants may supply the maximum, so the gradient reaches the
    label the evidence is about rather than whichever descendant happens to be largest; for a negative label
    every descendant is pushed down through the maximum. Unknown entries (``m = 0``) are left out of the sum and
    never count as positive descendants. Computed in log space:
    :math:`\log \max h = \max \log\sigma(z)` and :math:`\log(1 - \max h) = \min \log\sigma(-z)`.

    Args:
        taxonomy: Gives the descendant matrix (:attr:`core.taxonomy.Taxonomy.descendant_matrix`).
    """

    lam = 0.0

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.register_buffer("descendants", torch.as_tensor(taxonomy.descendant_matrix))

    def components(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"bce": MCLoss, "penalty": 0}`` (the same keys as :class:`HierarchicalBCELoss`)."""
        z = logits.float()
        y = targets.float()
        known = torch.ones_like(y, dtype=torch.bool) if mask is None else mask.bool()
        r = self.descendants  # (L, L): r[a, c]
        neg_inf = torch.tensor(float("-inf"), device=z.device)
        pos_inf = torch.tensor(float("inf"), device=z.device)
        log_h = F.logsigmoid(z)  # (B, L)
        log_1mh = F.logsigmoid(-z)
        positive = (y > 0) & known  # (B, L); soft (mixup) targets count as positive with weight y
        # (B, L, L): entry [b, a, c] is label c as a candidate for label a's maximum.
        pos_candidates = r[None] & positive[:, None, :]
        log_pos = torch.where(pos_candidates, log_h[:, None, :], neg_inf).amax(dim=-1)
        log_neg = torch.where(r[None], log_1mh[:, None, :], pos_inf).amin(dim=-1)
        # A positive label is its own positive descendant, so log_pos is finite wherever it is used.
        pos_term = torch.where(positive, y * torch.where(positive, log_pos, torch.zeros_like(log_pos)), 0.0)
        per_entry = -(pos_term + (1.0 - y) * log_neg)
        weight = known.to(per_entry.dtype)
        per_entry = torch.where(known, per_entry, torch.zeros_like(per_entry))
        loss = (per_entry * weight).sum() / weight.sum().clamp_min(1.0)
        return {"bce": loss, "penalty": loss.new_zeros(())}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar MCLoss for a batch."""
        return self.components(logits, targets, mask)["bce"]
