"""Per-source label priors taken out of training: logit offsets added to the model's logits inside the loss.

Why: the training images come from sources whose label mix differs wildly (NIH's grown data: a folder sampled as
half No Finding, half Pneumonia; thumbnails that are half No Finding; full-resolution films a fifth No Finding), and
each source has its own look (size, sharpness, processing). A network can lower its loss by recognising the look
and predicting the source's prior, a shortcut that does not carry to films from elsewhere. Logit adjustment removes
that incentive: during training the loss sees

    z'_il = z_il + b_(s(i), l),    b_(s,l) = logit(q_(s,l)) - logit(p_l)

where ``z`` is the model's logit of label ``l`` for image ``i`` of source ``s(i)``, ``p_l`` the label's share of
positives among all known training entries and ``q_(s,l)`` the same share within source ``s``, shrunk towards
``p_l`` by ``strength`` pseudo-counts so that a source of a few images gets an offset near zero:

    q_(s,l) = (pos_(s,l) + strength * p_l) / (known_(s,l) + strength)

The offset already carries the source's prior, so ``z`` is pushed to carry only what the image shows beyond it
(Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, applied per source rather than per class).
At inference no offset is added: the model answers at the pooled prior ``p_l`` for every film. Shares are
clipped to [1e-4, 1 - 1e-4] before the logit, so a label without positives (or without negatives) gets offset 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.labels import LabelSet

#: Shares are clipped to [EPS, 1 - EPS] before taking a logit.
EPS = 1e-4


@dataclass(frozen=True)
class SourcePriors:
    """The offsets of one training set: per source, its number of images and its offset per label."""

    sources: tuple[str, ...]
    counts: tuple[int, ...]
    offsets: np.ndarray  # (n_sources, n_labels) float32
    row_source: np.ndarray  # (n_rows,) int: index into ``sources`` of each training row

    def row_offsets(self) -> np.ndarray:
        """``(n_rows, n_labels)`` float32: the offset added to each training row's logits."""
        return self.offsets[self.row_source]

    def summary(self, labels: tuple[str, ...], top: int = 3) -> list[str]:
        """One line per source: its size and its largest offsets (for the training log)."""
        lines = []
        for s, (name, n) in enumerate(zip(self.sources, self.counts, strict=True)):
            order = np.argsort(-np.abs(self.offsets[s]))[:top]
            parts = ", ".join(f"{labels[j]} {self.offsets[s, j]:+.2f}" for j in order)
            lines.append(f"{name} ({n} images): {parts}")
        return lines


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def source_priors(labels: LabelSet, column: str, strength: float) -> SourcePriors:
    """The per-source logit offsets of a training label set (see the module docstring for the formula).

    Args:
        labels: The training rows (their ``targets`` and ``mask``).
        column: Metadata column naming each row's source (``data.source_column``).
        strength: Pseudo-counts shrinking a source's share towards the pooled share (>= 0).

    Raises:
        KeyError: ``column`` is not in the label set's metadata.
        ValueError: ``strength`` is negative.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if column not in labels.metadata.columns:
        raise KeyError(f"no metadata column {column!r} to take each image's source from")
    names, row_source = np.unique(labels.metadata[column].astype(str).to_numpy(), return_inverse=True)
    known = labels.mask.astype(np.float64)
    positive = (labels.targets > 0.5) & labels.mask
    pooled = positive.sum(axis=0) / np.maximum(known.sum(axis=0), 1.0)
    offsets = np.zeros((len(names), labels.targets.shape[1]), dtype=np.float32)
    counts = []
    for s in range(len(names)):
        rows = row_source == s
        counts.append(int(rows.sum()))
        weight = known[rows].sum(axis=0) + strength
        # A label this source never knows (and no pseudo-counts) keeps the pooled share: offset 0.
        share = np.where(weight > 0, (positive[rows].sum(axis=0) + strength * pooled) / np.maximum(weight, 1e-12),
                         pooled)
        offsets[s] = _logit(share) - _logit(pooled)
    return SourcePriors(tuple(str(n) for n in names), tuple(counts), offsets, row_source.astype(np.int64))
