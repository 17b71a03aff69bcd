"""The ``Analysis`` record: everything one model says about one image, as plain data.

The inference engine produces it and the dashboard, the batch CLI and the reports render it; none of them needs
tensors. Arrays are NumPy; :meth:`Analysis.to_dict` gives a JSON-ready form (CAMs left out unless asked for).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.calls import NO_CALL, NONE, Call, Calls
from core.ood import PopulationCheck
from core.taxonomy import Taxonomy

#: The taxonomy's roots, which say "something / nothing / unsure" rather than name a finding: left out of rankings
#: of findings (the top findings here, the PDF's findings).
TRIAGE_ROOTS = ("No Finding", "Uncertain", "Abnormal")


@dataclass(frozen=True)
class Violation:
    """A parent/child pair where the child's probability is above the threshold and the parent's below it."""

    parent: str
    child: str
    parent_probability: float
    child_probability: float


def find_violations(
    probabilities: Sequence[float] | np.ndarray, taxonomy: Taxonomy, threshold: float = 0.5,
    skip: Sequence[str] = (),
) -> list[Violation]:
    """The edges :meth:`Taxonomy.violations` flags (child above ``threshold``, parent below), in edge order.

    ``skip``: labels left out (e.g. labels a model never learnt: their outputs carry no meaning).
    """
    probs = np.asarray(probabilities, dtype=float)
    if probs.shape != (taxonomy.num_labels,):
        raise ValueError(f"expected {taxonomy.num_labels} probabilities, got shape {probs.shape}")
    flags = taxonomy.violations(probs, threshold)
    return [Violation(p, c, float(probs[taxonomy.index(p)]), float(probs[taxonomy.index(c)]))
            for (p, c), flag in zip(taxonomy.edges, flags, strict=True)
            if flag and p not in skip and c not in skip]


@dataclass
class Analysis:
    """One model's analysis of one image.

    Attributes:
        model_id: Variant name (e.g. ``hbce_soft``).
        labels: Output names in taxonomy order.
        probability: ``(L,)`` deterministic probabilities (dropout off), after any temperature scaling.
        mc_mean: ``(L,)`` mean of the Monte-Carlo dropout samples.
        mc_std: ``(L,)`` standard deviation (population) of the samples.
        mc_samples: Number of dropout samples drawn.
        cams: ``(L, h, w)`` class activation maps in [0, 1] (each label scaled by its own maximum), at the
            feature-map resolution; resize for display.
        image: ``(H, W)`` float32 grayscale image in [0, 1] as decoded (before model resizing), for overlays.
        image_metadata: Non-identifying image metadata (format, modality, view, size, bits, ...).
        violations: Taxonomy violations at ``threshold`` on the MC means.
        timings: Seconds per stage (``decode``, ``backbone``, ``mc``, ``cam``, ``total``, ...).
        image_sha256: Hash of the input bytes (cache key; not reversible to the image).
        threshold: Threshold used for violations.
        extra: Anything else a producer wants to pass along (e.g. temperature used).
        relative_cams: ``(L, h, w)`` class activation maps *without* the ReLU (CAM of Zhou et al. 2016), min-max
            scaled per label to [0, 1]: where each label's evidence is highest relative to the rest of the image,
            also for a label whose evidence is negative everywhere (its Grad-CAM in ``cams`` is then empty).
        cam_labels: For each label, the label whose map ``cams`` holds: itself, except for a C-HMCNN model, whose
            label probability is that of a descendant (the map then shows that descendant's evidence).
        operating_points: Label -> the operating point of each *callable* label under the card's call rule (the
            displayed probability at or above which the model calls it positive); other labels are absent.
        not_learnt: Labels the model had too few positive training images to learn: their outputs carry no meaning.
        ood_score: Feature-distance score of the image against the model's training images (``None`` when the
            model has no reference); a warning is added when it exceeds the reference's threshold.
        warnings: Messages for the reader about this input (e.g. an image unlike the training population, a
            degenerate image analysed anyway); empty when there is nothing to say.
        calls: The decision on every label (:class:`core.calls.Calls`, made once by :func:`core.calls.decide_calls`
            from the model card): ``calls.calls[label].decision`` is ``"above"``, ``"below"``, ``"no call"`` or
            ``""`` (not learnt, or out of population), with its ``reason``. Every view and export reads it (use
            :meth:`call` and :meth:`call_reason`); ``None`` only for a record built by hand.
        population_checks: The checks that found the image outside the training population
            (:class:`core.ood.PopulationCheck`: ``name``, ``message``); when any fired, no label is called and the
            outputs do not apply.
        notes: Technical notes about the file (how it was decoded: old ACR-NEMA file, MONOCHROME1 polarity, ...),
            kept apart from the clinical :attr:`warnings` and shown once.
        sample: The name of the bundled sample image when the input is one (not a patient's film): every view and
            export labels it as a sample; ``None`` for the user's own image.
    """

    model_id: str
    labels: list[str]
    probability: np.ndarray
    mc_mean: np.ndarray
    mc_std: np.ndarray
    mc_samples: int
    cams: np.ndarray
    image: np.ndarray
    image_metadata: dict[str, Any]
    violations: list[Violation]
    timings: dict[str, float]
    image_sha256: str = ""
    threshold: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)
    relative_cams: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    cam_labels: list[str] | None = None
    operating_points: dict[str, float] = field(default_factory=dict)
    not_learnt: list[str] = field(default_factory=list)
    ood_score: float | None = None
    calls: Calls | None = None
    population_checks: list[PopulationCheck] = field(default_factory=list)
    sample: str | None = None
    notes: list[str] = field(default_factory=list)

    def index(self, label: str) -> int:
        """Position of ``label`` in :attr:`labels`."""
        return self.labels.index(label)

    def table(self) -> pd.DataFrame:
        """One row per label, in taxonomy order: ``label, learnt, probability, mc_mean, mc_std, operating_point,
        call`` (``call`` compares the MC mean with the operating point)."""
        return pd.DataFrame(
            {
                "label": self.labels,
                "learnt": [self.learnt(label) for label in self.labels],
                "probability": self.probability.astype(float),
                "mc_mean": self.mc_mean.astype(float),
                "mc_std": self.mc_std.astype(float),
                "operating_point": [self.operating_points.get(label) for label in self.labels],
                "call": [self.call(label) for label in self.labels],
            }
        )

    def top_findings(self, k: int = 5, exclude: tuple[str, ...] = TRIAGE_ROOTS) -> list[str]:
        """The ``k`` learnt labels with the highest MC mean, leaving out the triage roots by default."""
        order = np.argsort(-self.mc_mean)
        return [self.labels[i] for i in order if self.labels[i] not in exclude and self.learnt(self.labels[i])][:k]

    def learnt(self, label: str) -> bool:
        """False for a label the model never learnt (see :attr:`not_learnt`)."""
        return label not in self.not_learnt

    @property
    def out_of_population(self) -> bool:
        """True when a population check fired: the outputs do not apply and nothing is called."""
        return bool(self.population_checks)

    def call(self, label: str) -> str:
        """The decision on ``label`` (from :attr:`calls`): ``"above"``, ``"below"``, ``"no call"``, or ``""`` when
        the label is not learnt or the image is out of population."""
        return self._call(label).decision

    def call_reason(self, label: str) -> str:
        """Why ``label`` has no call (or how a group came to be called); empty for a plain above/below."""
        return self._call(label).reason

    def _call(self, label: str) -> Call:
        if self.calls is not None and label in self.calls.calls:
            return self.calls.calls[label]
        # A record built by hand, without decisions: compare with the operating points it was given.
        if not self.learnt(label):
            return Call(label, NONE, None, None, "not learnt")
        if self.out_of_population:
            return Call(label, NONE, None, None, "out of population")
        threshold = self.operating_points.get(label)
        p = float(self.mc_mean[self.index(label)])
        if threshold is None:
            return Call(label, NO_CALL, p, None, "no call: no operating point")
        return Call(label, "above" if p >= threshold else "below", p, threshold)

    def to_dict(self, include_cams: bool = False) -> dict[str, Any]:
        """JSON-ready form; CAMs (as nested lists) only if ``include_cams``; the image is never included."""
        out: dict[str, Any] = {
            "model_id": self.model_id,
            "sample": self.sample,
            "image_sha256": self.image_sha256,
            "mc_samples": self.mc_samples,
            "threshold": self.threshold,
            "input_size": self.extra.get("input_size"),
            "out_of_population": [{"check": c.name, "message": c.message} for c in self.population_checks],
            "call_rule": self.calls.rule if self.calls is not None else "",
            "labels": {
                label: {
                    # A label the model never learnt has no number anywhere (its output carries no meaning).
                    "learnt": self.learnt(label),
                    "probability": float(self.probability[i]) if self.learnt(label) else None,
                    "mc_mean": float(self.mc_mean[i]) if self.learnt(label) else None,
                    "mc_std": float(self.mc_std[i]) if self.learnt(label) else None,
                    "operating_point": self.operating_points.get(label),
                    "call": self.call(label),
                    "call_reason": self.call_reason(label),
                    "map_of": (self.cam_labels or self.labels)[i],
                }
                for i, label in enumerate(self.labels)
            },
            "not_learnt": list(self.not_learnt),
            "ood_score": self.ood_score,
            "violations": [v.__dict__ for v in self.violations],
            "warnings": list(self.warnings),
            "file_notes": list(self.notes),
            "image_metadata": self.image_metadata,
            "timings": self.timings,
            "extra": self.extra,
        }
        if include_cams:
            out["cams"] = {label: self.cams[i].round(4).tolist() for i, label in enumerate(self.labels)}
        return out
