"""Compare two training recipes by cross-validation, fold by fold on the same held-out patients.

Two cross-validations over the same data and fold assignment (same ``--cv K``, data and split salt; only the
recipe differs) hold out the same patients in fold ``k``. On the folds both have finished (so a recipe can be
tried on 3 of 5 folds, ``train.py --cv 5 --fold 0 --fold 1 --fold 2``), this scores each fold model's held-out
predictions at one epoch:

* per fold: macro AUROC of each recipe (labels with enough positives in that fold),
* pooled over those folds: per-label and macro AUROC of each recipe on the same images, and the difference with a
  paired patient-level bootstrap CI (:mod:`core.paired`),
* optionally restricted to images of some sources (``--source``) or without them (``--exclude-source``), e.g. to
  see whether a recipe gains on the images the data grew by and loses on the older ones,
* and by the image's native resolution (``--native-at-most 64``: NIH's 64 px thumbnails; ``--native-above 64``: the
  full-resolution films). A pooled AUROC over films of two resolutions rewards a model that tells the resolutions
  apart when their label mixes differ (of NIH's training and validation films, the thumbnails are 51% No Finding,
  the older full-resolution films 22%): at 128 px, ``chmcnn`` gained +0.037 on the older films pooled, +0.000 on the
  thumbnails alone and -0.022 on the full-resolution films alone.

    python -m core.recipe_compare runs/nih_bce_cv5 runs/nih_bce_inv_cv5 --epoch 11 \\
        --exclude-source muhammedtalo/COVID-19 --exclude-source MichaelNoya/nih-chest-xray-webdataset-subset
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.paired import ComparisonError, PairedComparison, paired_comparison, report

SOURCE_COLUMN = "source_repo"
NATIVE_SIZE_COLUMN = "native_size"  # "WxH" of the image as its source published it


def native_side(sizes: Sequence[str]) -> np.ndarray:
    """The shorter side in pixels of each ``"WxH"`` native size.

    Raises:
        ComparisonError: a size that is not ``"WxH"``.
    """
    try:
        return np.array([min(int(v) for v in str(size).lower().split("x", 1)) for size in sizes], dtype=np.int64)
    except ValueError as exc:
        raise ComparisonError(f"{NATIVE_SIZE_COLUMN}: a value is not WxH in pixels ({exc})") from None


@dataclass(frozen=True)
class RecipeComparison:
    """Per-fold macro AUROCs of both recipes and their pooled paired comparison."""

    folds: list[int]
    epoch: int
    fold_macro_a: list[float | None]
    fold_macro_b: list[float | None]
    pooled: PairedComparison

    def to_text(self) -> str:
        """The per-fold table, then the pooled comparison."""
        a, b = self.pooled.names

        def mean_std(values: list[float | None]) -> str:
            defined = [v for v in values if v is not None]
            std = f" ± {np.std(defined, ddof=1):.3f}" if len(defined) > 1 else ""
            return f"{np.mean(defined):.3f}{std}" if defined else "—"

        lines = [f"epoch {self.epoch}; folds {', '.join(map(str, self.folds))} (both recipes finished them)",
                 f"{'fold':<6} {a:>12} {b:>12}"]
        lines += [f"{k:<6} {_f(x):>12} {_f(y):>12}"
                  for k, x, y in zip(self.folds, self.fold_macro_a, self.fold_macro_b, strict=True)]
        lines.append(f"{'mean':<6} {mean_std(self.fold_macro_a):>12} {mean_std(self.fold_macro_b):>12}")
        return "\n".join(lines) + "\n\npooled over these folds' held-out images:\n" + self.pooled.to_text()


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def finished_folds(cv_folder: str | Path) -> dict[int, list[int]]:
    """Fold number -> the epochs whose held-out logits it has saved."""
    found: dict[int, list[int]] = {}
    for fold_dir in sorted(Path(cv_folder).glob("fold*")):
        logits = fold_dir / "val_logits"
        if fold_dir.name[4:].isdigit() and (logits / "rows.txt").is_file():
            found[int(fold_dir.name[4:])] = sorted(int(p.stem.split("_")[1]) for p in logits.glob("epoch_*.npy"))
    return found


def fold_heldout(cv_folder: str | Path, fold: int, epoch: int, taxonomy=None):
    """Fold ``fold``'s held-out labels (a LabelSet), its logits at ``epoch`` and its config.

    Raises:
        CVError: the fold has no such epoch, or its saved rows differ from its fold assignment (data changed).
    """
    from core.config import load_config
    from core.crossval import CVError
    from core.data import load_splits

    fold_dir = Path(cv_folder) / f"fold{fold}"
    config = load_config(fold_dir / "config.yaml")
    labels = load_splits(config, taxonomy)["val"]
    folder = fold_dir / "val_logits"
    if (folder / "rows.txt").read_text(encoding="utf-8").splitlines() != list(labels.paths):
        raise CVError(f"{folder}: held-out rows differ from fold {fold}'s assignment (data changed?)")
    path = folder / f"epoch_{epoch:03d}.npy"
    if not path.is_file():
        raise CVError(f"{path}: missing (fold {fold} has not finished epoch {epoch})")
    return labels, np.load(path, allow_pickle=False), config


def compare_recipes(cv_a: str | Path, cv_b: str | Path, epoch: int, *, sources: Sequence[str] = (),
                    exclude_sources: Sequence[str] = (), native_at_most: int | None = None,
                    native_above: int | None = None, min_positives: int = 5, n_boot: int = 1000,
                    names: tuple[str, str] | None = None) -> RecipeComparison:
    """Score both cross-validations on the folds both finished at ``epoch`` (see the module docstring).

    Raises:
        ComparisonError: no fold in common, or the folds do not hold out the same images.
        CVError: a fold's files do not match its assignment.
    """
    from core.crossval import cv_probabilities
    from core.metrics import macro_mean, per_label_auroc
    from core.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    done_a, done_b = finished_folds(cv_a), finished_folds(cv_b)
    folds = sorted(k for k in set(done_a) & set(done_b) if epoch in done_a[k] and epoch in done_b[k])
    if not folds:
        raise ComparisonError(f"{cv_a} and {cv_b} have no fold that both finished to epoch {epoch}")
    names = names or (Path(cv_a).name, Path(cv_b).name)
    fold_a, fold_b, parts = [], [], []
    for k in folds:
        labels_a, logits_a, config_a = fold_heldout(cv_a, k, epoch, taxonomy)
        labels_b, logits_b, config_b = fold_heldout(cv_b, k, epoch, taxonomy)
        if list(labels_a.paths) != list(labels_b.paths):
            raise ComparisonError(f"fold {k} holds out different images in {cv_a} and {cv_b}: the two "
                                  "cross-validations differ in data, number of folds or split salt")
        keep = np.ones(len(labels_a), dtype=bool)
        if sources or exclude_sources:
            if SOURCE_COLUMN not in labels_a.metadata.columns:
                raise ComparisonError(f"the label table has no {SOURCE_COLUMN!r} column to select images by source")
            source = labels_a.metadata[SOURCE_COLUMN].astype(str).to_numpy()
            if sources:
                keep &= np.isin(source, list(sources))
            keep &= ~np.isin(source, list(exclude_sources))
        if native_at_most is not None or native_above is not None:
            if NATIVE_SIZE_COLUMN not in labels_a.metadata.columns:
                raise ComparisonError(f"the label table has no {NATIVE_SIZE_COLUMN!r} column to select images by "
                                      "native resolution")
            side = native_side(labels_a.metadata[NATIVE_SIZE_COLUMN].tolist())
            if native_at_most is not None:
                keep &= side <= native_at_most
            if native_above is not None:
                keep &= side > native_above
        labels = labels_a.subset(keep)
        probs_a = cv_probabilities(logits_a[keep], config_a, taxonomy)
        probs_b = cv_probabilities(logits_b[keep], config_b, taxonomy)
        pos = ((labels.targets == 1) & labels.mask).sum(axis=0)
        neg = ((labels.targets == 0) & labels.mask).sum(axis=0)
        select = [j for j in range(len(taxonomy.labels)) if pos[j] >= min_positives and neg[j] >= 1]
        fold_a.append(macro_mean(per_label_auroc(labels.targets, probs_a, labels.mask), select))
        fold_b.append(macro_mean(per_label_auroc(labels.targets, probs_b, labels.mask), select))
        parts.append((labels, probs_a, probs_b))
    targets = np.concatenate([lab.targets for lab, _, _ in parts])
    if len(targets) == 0:
        raise ComparisonError("no held-out image is left after the source selection")
    groups = np.concatenate([lab.metadata["Patient ID"].astype(str).to_numpy() if "Patient ID" in lab.metadata
                             else np.asarray(lab.paths, dtype=object) for lab, _, _ in parts])
    which = ("all sources" if not (sources or exclude_sources)
             else " ".join(filter(None, [f"from {', '.join(sources)}" if sources else "",
                                         f"not from {', '.join(exclude_sources)}" if exclude_sources else ""])))
    which += "".join([f", native <= {native_at_most} px" if native_at_most is not None else "",
                      f", native > {native_above} px" if native_above is not None else ""])
    result = paired_comparison(np.concatenate([a for _, a, _ in parts]), np.concatenate([b for _, _, b in parts]),
                               targets, np.concatenate([lab.mask for lab, _, _ in parts]), groups, taxonomy.labels,
                               np.ones(len(taxonomy.labels), dtype=bool), names=names,
                               min_positives=min_positives, n_boot=n_boot,
                               note=f"held-out images of folds {', '.join(map(str, folds))}, {which}")
    return RecipeComparison(folds=folds, epoch=epoch, fold_macro_a=fold_a, fold_macro_b=fold_b, pooled=result)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core.recipe_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("cv_a", help="the first cross-validation folder (the baseline), e.g. runs/nih_bce_cv5")
    parser.add_argument("cv_b", help="the second one (the recipe tried)")
    parser.add_argument("--epoch", type=int, required=True, help="the epoch to compare (e.g. the baseline's chosen)")
    parser.add_argument("--source", action="append", default=[], help=f"only images with this {SOURCE_COLUMN}")
    parser.add_argument("--exclude-source", action="append", default=[], help=f"leave out this {SOURCE_COLUMN}")
    parser.add_argument("--native-at-most", type=int, default=None, metavar="PX",
                        help="only images whose native shorter side is at most PX (64: NIH's thumbnails)")
    parser.add_argument("--native-above", type=int, default=None, metavar="PX",
                        help="only images whose native shorter side is above PX (64: full-resolution films)")
    parser.add_argument("--n-boot", type=int, default=1000, help="paired patient-level bootstrap resamples")
    parser.add_argument("--json", default=None, help="also write the comparison to this JSON file")
    args = parser.parse_args(argv)
    return report(lambda: compare_recipes(args.cv_a, args.cv_b, args.epoch, sources=args.source,
                                          exclude_sources=args.exclude_source, native_at_most=args.native_at_most,
                                          native_above=args.native_above, n_boot=args.n_boot), args.json)

if __name__ == "__main__":
    sys.exit(main())
