"""The ``Analysis`` record: everything one model says about one image, as plain data.

The inference engine produces it and the dashboard, the batch CLI and the reports render it; none of them needs
tensors. Arrays are NumPy; :meth:`Analysis.to_dict` gives a JSON-ready form (CAMs left out unless asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Violation:
    """A parent/child pair where the child's probability is above the threshold and the parent's below it."""

    parent: str
    child: str
    parent_probability: float
    child_probability: float


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
        warnings: Messages for the reader about this input (e.g. an image unlike the training population, a
            degenerate image analysed anyway); empty when there is nothing to say.
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

    def index(self, label: str) -> int:
        """Position of ``label`` in :attr:`labels`."""
        return self.labels.index(label)

    def table(self) -> pd.DataFrame:
        """One row per label: ``label, probability, mc_mean, mc_std``, in taxonomy order."""
        return pd.DataFrame(
            {
                "label": self.labels,
                "probability": self.probability.astype(float),
                "mc_mean": self.mc_mean.astype(float),
                "mc_std": self.mc_std.astype(float),
            }
        )

    def top_findings(self, k: int = 5, exclude: tuple[str, ...] = ("No Finding", "Uncertain", "Abnormal")) -> list[str]:
        """The ``k`` labels with the highest MC mean, leaving out the triage roots by default."""
        order = np.argsort(-self.mc_mean)
        return [self.labels[i] for i in order if self.labels[i] not in exclude][:k]

    def to_dict(self, include_cams: bool = False) -> dict[str, Any]:
        """JSON-ready form; CAMs (as nested lists) only if ``include_cams``; the image is never included."""
        out: dict[str, Any] = {
            "model_id": self.model_id,
            "image_sha256": self.image_sha256,
            "mc_samples": self.mc_samples,
            "threshold": self.threshold,
            "labels": {
                label: {
                    "probability": float(self.probability[i]),
                    "mc_mean": float(self.mc_mean[i]),
                    "mc_std": float(self.mc_std[i]),
                }
                for i, label in enumerate(self.labels)
            },
            "violations": [v.__dict__ for v in self.violations],
            "warnings": list(self.warnings),
            "image_metadata": self.image_metadata,
            "timings": self.timings,
            "extra": self.extra,
        }
        if include_cams:
            out["cams"] = {label: self.cams[i].round(4).tolist() for i, label in enumerate(self.labels)}
        return out
