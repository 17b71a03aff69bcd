r"""The losses, their typed output and the registry that builds them from a config.

Every loss is an ``nn.Module`` whose :meth:`terms` returns a :class:`LossTerms` (the data term, the hierarchy term
before its weight, and their weighted total) and whose ``forward`` returns the total; :func:`build_loss` picks one
by ``config.loss.name`` from :data:`LOSSES`. Adding a variant: a class and a registered builder here, its name in
:data:`core.config.CHOICES` (``loss.name``), and its tests; the model card describes it through
:func:`loss_info` and :meth:`core.card_sections.LossInfo.describe`.

Hierarchical binary cross-entropy (HBCE, ``hbce``):

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.card_sections import LossInfo, PenaltyRow
from core.penalties import data_driven_penalties, fixed_penalties, penalty_table
from core.taxonomy import Taxonomy, violation_mask

if TYPE_CHECKING:
    from core.config import Config, LossConfig
    from core.labels import LabelSet

Violation = Literal["hard", "soft"]


@dataclass(frozen=True)
class LossTerms:
    """One batch's loss and its named terms (scalars).

    Attributes:
        total: What is minimised: ``data + weight * penalty``.
        data: The data term (masked BCE for HBCE, MCLoss for C-HMCNN).
        penalty: The hierarchy term before its weight (0 for losses without one).
        weight: The weight λ of the penalty in the total.
    """

    total: torch.Tensor
    data: torch.Tensor
    penalty: torch.Tensor
    weight: float = 0.0


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

    def terms(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> LossTerms:
        """The BCE term, the penalty term (before ``lam``) and their total for a batch."""
        bce = masked_bce_with_logits(logits.float(), targets.float(), mask)
        if self.lam == 0.0:
            return LossTerms(total=bce, data=bce, penalty=bce.new_zeros(()), weight=0.0)
        probs = torch.sigmoid(logits.float())
        v = edge_violations(probs, self.parent_index, self.child_index, self.violation)
        penalty = (v * self.penalties).sum(dim=1).mean()
        return LossTerms(total=bce + self.lam * penalty, data=bce, penalty=penalty, weight=self.lam)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss for a batch of ``logits`` ``(B, L)``, ``targets`` ``(B, L)`` and optional ``mask``."""
        return self.terms(logits, targets, mask).total


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

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.register_buffer("descendants", torch.as_tensor(taxonomy.descendant_matrix))

    def terms(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> LossTerms:
        """MCLoss as the data term (no penalty term: coherence comes from the max constraint)."""
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
        return LossTerms(total=loss, data=loss, penalty=loss.new_zeros(()), weight=0.0)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar MCLoss for a batch."""
        return self.terms(logits, targets, mask).total


# ------------------------------------------------------------------------------------------------ registry

#: A builder: (config, training labels, taxonomy) -> the loss module and its penalty table for the model card.
LossBuilder = Callable[["Config", "LabelSet", Taxonomy], tuple[nn.Module, list[PenaltyRow]]]
#: ``loss.name`` -> its builder.
LOSSES: dict[str, LossBuilder] = {}


def register_loss(name: str) -> Callable[[LossBuilder], LossBuilder]:
    """Decorator: make ``builder`` the loss called ``name`` in configs."""
    def add(builder: LossBuilder) -> LossBuilder:
        LOSSES[name] = builder
        return builder
    return add


def build_penalties(config: Config, train_labels: LabelSet, taxonomy: Taxonomy) -> tuple[np.ndarray, float]:
    """Edge penalties and the effective λ for ``config.loss`` (data-driven ones from the TRAIN labels)."""
    loss = config.loss
    if loss.penalty == "none":
        return fixed_penalties(taxonomy, 0.0), 0.0
    if loss.penalty == "fixed":
        return fixed_penalties(taxonomy, loss.fixed_value), loss.lam
    return data_driven_penalties(train_labels.targets, train_labels.mask, taxonomy, alpha=loss.alpha), loss.lam


def penalty_rows(config: Config, train_labels: LabelSet, taxonomy: Taxonomy) -> list[PenaltyRow]:
    """The model card's penalty table of ``config.loss`` (empty for a loss without edge penalties)."""
    if config.loss.name == "mcloss":
        return []
    penalties, _ = build_penalties(config, train_labels, taxonomy)
    return penalty_table(penalties, taxonomy, train_labels.targets, train_labels.mask)


@register_loss("hbce")
def _hbce(config: Config, train_labels: LabelSet, taxonomy: Taxonomy) -> tuple[nn.Module, list[PenaltyRow]]:
    penalties, lam = build_penalties(config, train_labels, taxonomy)
    loss = HierarchicalBCELoss(taxonomy, penalties, lam=lam, violation=config.loss.violation)
    return loss, penalty_table(penalties, taxonomy, train_labels.targets, train_labels.mask)


@register_loss("mcloss")
def _mcloss(config: Config, train_labels: LabelSet, taxonomy: Taxonomy) -> tuple[nn.Module, list[PenaltyRow]]:
    return MaxConstraintLoss(taxonomy), []


def build_loss(config: Config, train_labels: LabelSet, taxonomy: Taxonomy) -> tuple[nn.Module, list[PenaltyRow]]:
    """The loss ``config.loss.name`` names and its penalty table (for the model card).

    Raises:
        ValueError: no loss of that name is registered (the message lists those that are).
    """
    builder = LOSSES.get(config.loss.name)
    if builder is None:
        raise ValueError(f"unknown loss {config.loss.name!r}; registered: {', '.join(sorted(LOSSES))}")
    return builder(config, train_labels, taxonomy)


def loss_info(loss: LossConfig, constraint: str) -> LossInfo:
    """The model card's ``loss`` section for a config's loss (λ is 0 when there is no penalty)."""
    return LossInfo(name=loss.name, lam=0.0 if loss.penalty == "none" else loss.lam, penalty_source=loss.penalty,
                    violation=loss.violation, fixed_value=loss.fixed_value if loss.penalty == "fixed" else None,
                    constraint=constraint,
                    source_prior_strength=loss.source_prior_strength if loss.source_offsets else None)
