"""Is a cross-validated recipe on grown data better than a shipped model? Both scored on films neither trained on.

When the training data grows, a shipped model and a new cross-validation (CV) of a recipe on the grown data can be
compared without touching the test split: the images that came with the growth were not in the shipped model's
training set, and each of them has an out-of-fold (OOF) prediction from the fold model that did not see it. On
those images (minus any whose patient also has an older image, which the shipped model may have trained on):

* the shipped model's probabilities (its own input contract; temperatures are left out, they do not change AUROC),
* the CV's OOF probabilities at its chosen epoch,

are scored per label (AUROC, labels with at least ``min_positives`` positives and negatives there that both
models learnt), macro-averaged, and the difference gets a paired patient-level bootstrap CI (the same resampled
patients for both). The fold models saw 80% of the grown data, the model fitted from the CV sees all of it, so
the comparison is, if anything, slightly unfair to the new recipe.

    python -m core.compare_unseen --config configs/nih_bce.yaml --cv runs/nih_bce_cv5 --variant weights/bce \\
        --new-source muhammedtalo/COVID-19 --new-source MichaelNoya/nih-chest-xray-webdataset-subset
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.errors import HiCXRError

SOURCE_COLUMN = "source_repo"
PATIENT_COLUMN = "Patient ID"


class ComparisonError(HiCXRError):
    """The comparison cannot be made (no new images, no shared label, a column missing)."""


@dataclass(frozen=True)
class LabelComparison:
    """One label: AUROC of the shipped model and of the CV's out-of-fold predictions on the unseen images."""

    label: str
    positives: int
    negatives: int
    shipped_auroc: float
    cv_auroc: float


@dataclass(frozen=True)
class UnseenComparison:
    """The whole comparison, as printed and written to JSON."""

    variant: str
    cv_dir: str
    images: int
    patients: int
    dropped_shared_patients: int
    labels: list[LabelComparison]
    shipped_macro_auroc: float
    cv_macro_auroc: float
    difference: float
    difference_ci: tuple[float, float] | None
    n_boot: int

    def to_text(self) -> str:
        """A plain-text table, one label a line, then the macro figures."""
        lines = [f"{self.images} images of {self.patients} patients that {self.variant} never trained on "
                 f"({self.dropped_shared_patients} images dropped: their patient also has an older image)",
                 f"{'label':<22} {'pos':>5} {'neg':>5} {'shipped':>8} {'CV OOF':>8}"]
        lines += [f"{r.label:<22} {r.positives:>5} {r.negatives:>5} {r.shipped_auroc:>8.3f} {r.cv_auroc:>8.3f}"
                  for r in self.labels]
        ci = ("" if self.difference_ci is None
              else f" (paired patient bootstrap 95% CI {self.difference_ci[0]:+.3f} to {self.difference_ci[1]:+.3f},"
                   f" {self.n_boot} resamples)")
        lines.append(f"macro over {len(self.labels)} labels: shipped {self.shipped_macro_auroc:.3f}, "
                     f"CV out-of-fold {self.cv_macro_auroc:.3f}, difference {self.difference:+.3f}{ci}")
        return "\n".join(lines)


def unseen_rows(metadata, new_sources: Sequence[str]) -> tuple[np.ndarray, int]:
    """Rows from ``new_sources`` whose patient has no row from another source, and how many rows were dropped.

    Raises:
        ComparisonError: a column is missing or no row qualifies.
    """
    for column in (SOURCE_COLUMN, PATIENT_COLUMN):
        if column not in metadata.columns:
            raise ComparisonError(f"the label table has no {column!r} column to tell new images from old ones")
    sources = metadata[SOURCE_COLUMN].astype(str).to_numpy()
    patients = metadata[PATIENT_COLUMN].astype(str).to_numpy()
    new = np.isin(sources, list(new_sources))
    if not new.any():
        raise ComparisonError(f"no cross-validated image comes from {', '.join(new_sources)}")
    old_patients = set(patients[~new])
    keep = new & ~np.isin(patients, list(old_patients))
    if not keep.any():
        raise ComparisonError("every new image belongs to a patient who also has an older image")
    return np.flatnonzero(keep), int(new.sum() - keep.sum())


def compare(
    shipped_probs: np.ndarray,
    cv_probs: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    groups: np.ndarray,
    label_names: Sequence[str],
    learnt: np.ndarray,
    *,
    variant: str = "",
    cv_dir: str = "",
    dropped: int = 0,
    min_positives: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
) -> UnseenComparison:
    """Per-label and macro AUROC of both sets of probabilities on the same rows, and a paired bootstrap CI.

    Args:
        shipped_probs: ``(N, L)`` probabilities of the shipped model.
        cv_probs: ``(N, L)`` out-of-fold probabilities of the cross-validation.
        targets: ``(N, L)`` labels.
        mask: ``(N, L)``, where the labels are known.
        groups: Patient per row (resampled whole).
        label_names: The ``L`` label names.
        learnt: ``(L,)`` bool, the labels both models learnt.
        variant: The shipped variant's name or path (for the record).
        cv_dir: The cross-validation folder (for the record).
        dropped: New images left out because their patient has an older image (for the record).
        min_positives: A label counts where it has at least this many known positives and negatives.
        n_boot: Paired patient-level bootstrap resamples for the difference's CI (0: no CI).
        seed: Seed of the resampling.
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
        old, new = resampled_auroc(y, shipped_probs[rows, j]), resampled_auroc(y, cv_probs[rows, j])
        everything = np.arange(len(rows))
        results.append(LabelComparison(name, pos, neg, old(everything), new(everything)))
        rows_of.append(rows)
        stats.append((old, new))
    if not results:
        raise ComparisonError(f"no label has {min_positives} positives and negatives among the unseen images")
    shipped = float(np.mean([r.shipped_auroc for r in results]))
    cv = float(np.mean([r.cv_auroc for r in results]))
    # A resample of images -> per label, the positions of its known rows drawn (repeats kept), for both models.
    position = np.full((len(results), len(targets)), -1)
    for k, rows in enumerate(rows_of):
        position[k, rows] = np.arange(len(rows))

    def difference(drawn: np.ndarray) -> float | None:
        diffs = []
        for k, (old, new) in enumerate(stats):
            picked = position[k, drawn]
            picked = picked[picked >= 0]
            a, b = old(picked), new(picked)
            if a is None or b is None:
                return None
            diffs.append(b - a)
        return float(np.mean(diffs))

    ci = bootstrap_ci(difference, groups, n_boot=n_boot, seed=seed) if n_boot > 0 else None
    return UnseenComparison(variant=variant, cv_dir=cv_dir, images=len(targets), patients=len(set(groups)),
                            dropped_shared_patients=dropped, labels=results, shipped_macro_auroc=shipped,
                            cv_macro_auroc=cv, difference=cv - shipped, difference_ci=ci, n_boot=n_boot)


def compare_on_unseen(config_path: str | Path, cv_dir: str | Path, variant: str | Path,
                      new_sources: Sequence[str], n_boot: int = 1000) -> UnseenComparison:
    """Load the CV's out-of-fold predictions and the shipped variant, score both on the unseen images.

    Raises:
        HiCXRError: a config, CV folder, variant or data problem, with a message naming it.
    """
    import torch

    from core.config import load_config, resolve_path
    from core.crossval import cv_probabilities, load_cv_summary, load_oof
    from core.data import XrayDataset
    from core.evaluate import load_variant, predict_dataset
    from core.model import constraint_matrix, output_probabilities
    from core.preprocess import Fit
    from core.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    config = load_config(resolve_path(config_path))
    logits, labels, _ = load_oof(config, resolve_path(cv_dir), taxonomy)
    rows, dropped = unseen_rows(labels.metadata, new_sources)
    unseen = labels.subset(rows)
    cv_probs = cv_probabilities(logits[rows], config, taxonomy)
    model, _, card = load_variant(resolve_path(variant), taxonomy)
    dataset = XrayDataset(unseen, resolve_path(config.data.images), model.config.input_size, cache=False,
                          progress=sys.stderr.isatty(), fit=Fit.of(model.config))
    shipped_logits = predict_dataset(model, dataset)
    shipped_probs = output_probabilities(torch.from_numpy(shipped_logits),
                                         constraint_matrix(model.config, taxonomy)).numpy()
    not_learnt = set(card.labels_not_learnt) if card is not None else set()
    oof_labels = set(load_cv_summary(resolve_path(cv_dir))["oof_labels"])
    learnt = np.array([name not in not_learnt and name in oof_labels for name in taxonomy.labels])
    return compare(shipped_probs, cv_probs, unseen.targets, unseen.mask, dataset.groups, taxonomy.labels, learnt,
                   variant=str(variant), cv_dir=str(cv_dir), dropped=dropped, n_boot=n_boot)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core.compare_unseen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the config the cross-validation ran with")
    parser.add_argument("--cv", required=True, help="the cross-validation folder (runs/NAME_cvK)")
    parser.add_argument("--variant", required=True, help="the shipped variant, e.g. weights/bce")
    parser.add_argument("--new-source", action="append", required=True,
                        help=f"a {SOURCE_COLUMN} value of the images the data grew by (repeat for several)")
    parser.add_argument("--n-boot", type=int, default=1000, help="paired patient-level bootstrap resamples")
    parser.add_argument("--json", default=None, help="also write the comparison to this JSON file")
    args = parser.parse_args(argv)
    try:
        result = compare_on_unseen(args.config, args.cv, args.variant, args.new_source, args.n_boot)
    except HiCXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.to_text())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
