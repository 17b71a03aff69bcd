"""Two sets of predictions on the same images: per-label and macro AUROC, and a paired bootstrap of the difference.

Used to decide between models or recipes without the test split: :mod:`core.compare_unseen` (a shipped model
against a cross-validation's out-of-fold predictions on images the data grew by) and :mod:`core.recipe_compare`
(two recipes' cross-validations, fold by fold on the same held-out patients). Pairing matters: both sets are
scored on the same resampled patients in every bootstrap draw, so the interval is that of the *difference*, far
narrower than comparing two separate intervals.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import HiCXRError


class ComparisonError(HiCXRError):
    """A comparison cannot be made (no shared image or label, a column missing, runs that do not match)."""


@dataclass(frozen=True)
class LabelPair:
    """One label: its counts among the compared images and the AUROC of each set of predictions."""

    label: str
    positives: int
    negatives: int
    a_auroc: float
    b_auroc: float


@dataclass(frozen=True)
class PairedComparison:
    """Macro AUROC of predictions ``a`` and ``b`` on the same images, and ``b - a`` with its paired CI.

    Attributes:
        names: What ``a`` and ``b`` are (column titles).
        images, patients: How many were compared.
        labels: The labels that counted (enough positives and negatives, learnt by both).
        difference_ci: Paired patient-level percentile bootstrap 95% CI of ``b_macro - a_macro`` (None: not run).
        note: One line saying which images these are.
    """

    names: tuple[str, str]
    images: int
    patients: int
    labels: list[LabelPair]
    a_macro: float
    b_macro: float
    difference: float
    difference_ci: tuple[float, float] | None
    n_boot: int
    note: str = ""

    def to_text(self) -> str:
        """A plain-text table, one label a line, then the macro figures."""
        a, b = self.names
        width = max(9, len(a), len(b))
        lines = [self.note] if self.note else []
        lines.append(f"{self.images} images of {self.patients} patients")
        lines.append(f"{'label':<22} {'pos':>5} {'neg':>5} {a:>{width}} {b:>{width}}")
        lines += [f"{r.label:<22} {r.positives:>5} {r.negatives:>5} {r.a_auroc:>{width}.3f} {r.b_auroc:>{width}.3f}"
                  for r in self.labels]
        ci = ("" if self.difference_ci is None
              else f" (paired patient bootstrap 95% CI {self.difference_ci[0]:+.3f} to {self.difference_ci[1]:+.3f},"
                   f" {self.n_boot} resamples)")
        lines.append(f"macro AUROC over {len(self.labels)} labels: {a} {self.a_macro:.3f}, {b} {self.b_macro:.3f}, "
                     f"difference {self.difference:+.3f}{ci}")
        return "\n".join(lines)


def paired_comparison(
    a: np.ndarray,
    b: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    groups: np.ndarray,
    label_names: Sequence[str],
    learnt: np.ndarray,
    *,
    names: tuple[str, str] = ("a", "b"),
    min_positives: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    note: str = "",
) -> PairedComparison:
    """Per-label and macro AUROC of ``a`` and ``b`` on the same rows, and a paired bootstrap CI of the difference.

    Args:
        a: ``(N, L)`` probabilities (or any scores) of the first model.
        b: ``(N, L)`` probabilities of the second model, same rows.
        targets: ``(N, L)`` labels.
        mask: ``(N, L)``, where the labels are known.
        groups: Patient per row (resampled whole).
        label_names: The ``L`` label names.
        learnt: ``(L,)`` bool, the labels both models learnt.
        names: What ``a`` and ``b`` are.
        min_positives: A label counts where it has at least this many known positives and negatives.
        n_boot: Resamples for the difference's CI (0: no CI).
        seed: Seed of the resampling.
        note: One line saying which images these are.

    Raises:
        ComparisonError: no label qualifies.
    """
    from core.metrics import bootstrap_ci, resampled_auroc

    rows_of, stats, results = [], [], []
    for j, name in enumerate(label_names):
        known = mask[:, j]
        y = targets[known, j] > 0.5
        pos, neg = int(y.sum()), int((~y).sum())
        if not learnt[j] or pos < min_positives or neg < min_positives:
            continue
        rows = np.flatnonzero(known)
        auroc_a, auroc_b = resampled_auroc(y, a[rows, j]), resampled_auroc(y, b[rows, j])
        everything = np.arange(len(rows))
        results.append(LabelPair(name, pos, neg, auroc_a(everything), auroc_b(everything)))
        rows_of.append(rows)
        stats.append((auroc_a, auroc_b))
    if not results:
        raise ComparisonError(f"no label has {min_positives} positives and negatives among the compared images")
    a_macro = float(np.mean([r.a_auroc for r in results]))
    b_macro = float(np.mean([r.b_auroc for r in results]))
    # Per label, the position of each image among that label's known rows (-1: unknown there), so a resample of
    # images maps to a resample of each label's rows, repeats kept.
    position = np.full((len(results), len(targets)), -1)
    for k, rows in enumerate(rows_of):
        position[k, rows] = np.arange(len(rows))

    def difference(drawn: np.ndarray) -> float | None:
        diffs = []
        for k, (auroc_a, auroc_b) in enumerate(stats):
            picked = position[k, drawn]
            picked = picked[picked >= 0]
            value_a, value_b = auroc_a(picked), auroc_b(picked)
            if value_a is None or value_b is None:
                return None
            diffs.append(value_b - value_a)
        return float(np.mean(diffs))

    ci = bootstrap_ci(difference, groups, n_boot=n_boot, seed=seed) if n_boot > 0 else None
    return PairedComparison(names=names, images=len(targets), patients=len(set(np.asarray(groups).tolist())),
                            labels=results, a_macro=a_macro, b_macro=b_macro, difference=b_macro - a_macro,
                            difference_ci=ci, n_boot=n_boot, note=note)


def report(build: Callable[[], Any], json_path: str | None = None) -> int:
    """What the comparison CLIs do with their result: print its text (and write its JSON when asked), or print the
    project error it raised as one line; returns the exit status (0, or 2 for an error).

    ``build`` returns one result with ``to_text()`` or a list of them.
    """
    try:
        result = build()
    except HiCXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = result if isinstance(result, list) else [result]
    print("\n\n".join(r.to_text() for r in results))
    if json_path:
        payload = [asdict(r) for r in results] if isinstance(result, list) else asdict(result)
        Path(json_path).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0
