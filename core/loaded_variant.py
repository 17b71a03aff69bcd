"""A variant ready to run: the shared eval-mode model with its card, calibration, constraint, call rule and
out-of-distribution references, as :class:`core.inference.Predictor` holds it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.calls import CallEvidence, CallRule
from core.card import ModelCard
from core.model import HiCXRNet, ModelConfig
from core.ood import FeatureReference, PopulationClassifier
from core.registry import Variant


@dataclass(frozen=True)
class LoadedVariant:
    """A variant held by a :class:`Predictor`: the shared eval-mode model with its calibration and constraint.

    Attributes:
        name: Variant name.
        model: The eval-mode model (never modified).
        card: Its model card (``None`` for an in-memory model served without one).
        temperature: ``(L,)`` temperatures the logits are divided by, or ``None``.
        descendants: The max-constraint matrix of a C-HMCNN model, or ``None``.
        variant: Its registry entry, when loaded from a weights folder.
        ood: The out-of-distribution feature reference stored with the weights, or ``None``.
        population: The population (pediatric film) classifier stored with the weights, or ``None``.
        call_rule: The card's call rule (:mod:`core.calls`).
        call_evidence: The card's per-label call inputs, or ``None`` (then nothing is callable).
    """

    name: str
    model: HiCXRNet
    card: ModelCard | None
    temperature: torch.Tensor | None
    descendants: torch.Tensor | None = None
    variant: Variant | None = None
    ood: FeatureReference | None = None
    population: PopulationClassifier | None = None
    call_rule: CallRule = CallRule()
    call_evidence: CallEvidence | None = None

    @property
    def not_learnt(self) -> list[str]:
        """Labels the card lists as not learnt."""
        return list(self.card.labels_not_learnt) if self.card is not None else []

    @property
    def operating_points(self) -> dict[str, float]:
        """Label -> operating point of each callable label under the card's call rule."""
        return self.call_evidence.thresholds() if self.call_evidence is not None else {}

    @property
    def config(self) -> ModelConfig:
        """The model's config (input contract)."""
        return self.model.config
