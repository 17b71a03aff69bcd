"""Does the average of a cross-validation's fold models beat the one model fitted from it? Scored on unseen films.

A K-fold cross-validation (CV) leaves K fold models, each trained on (K-1)/K of train+val; ``--fit-from-cv`` trains
one model on all of it. Averaging the fold models' probabilities (an ensemble) costs K backbones per analysis. CV
itself cannot compare the two: every image a fold model held out is a training image of the fitted model. So
both are scored on films neither trained on, and the answer is reported as that, not as a CV result:

* the project's test split (the config's table, ``split == test``),
* the held-out Kermany films (pneumonia against normal, another hospital: :func:`core.external_check.heldout_films`).

Each comparison is paired (:mod:`core.paired`: the same resampled patients for both; labels both learnt with at
least 5 positives and negatives there). The fitted variant's probabilities come from :mod:`core.evaluate`'s batch
path (its card's temperatures, which do not change a label's AUROC); the ensemble averages the fold models'
uncalibrated probabilities (after the max constraint where the model has one). The fold models are each fold's
final weights (``core.crossval.fold_weights``: the EMA weights of the last epoch), which may be an epoch later than
the CV's chosen one. The analysis time of one model and of the ensemble is measured on the same films.

    python -m core.fold_ensemble --cv runs/nih_bce_cv5 --variant weights/bce [--kermany-per-class 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import HiCXRError
from core.paired import PairedComparison, paired_comparison, report


@dataclass(frozen=True)
class EnsembleCheck:
    """The fitted model against the fold ensemble on each unseen set, and what each costs per image."""

    comparisons: list[PairedComparison]
    folds: int
    fitted_s_per_image: float
    ensemble_s_per_image: float

    def to_text(self) -> str:
        """The comparisons, then the inference cost of each."""
        cost = (f"inference on the decoded test films (batch, CPU time of this process's threads): fitted model "
                f"{self.fitted_s_per_image * 1000:.1f} ms/image, ensemble of {self.folds} fold models "
                f"{self.ensemble_s_per_image * 1000:.1f} ms/image "
                f"({self.ensemble_s_per_image / self.fitted_s_per_image:.1f}x)")
        return "\n\n".join([c.to_text() for c in self.comparisons] + [cost])


def fold_model_paths(cv_dir: str | Path) -> list[Path]:
    """The weights of every fold model of a finished CV (its summary says how many folds).

    Raises:
        CVError: no summary, or a fold without weights.
    """
    from core.crossval import fold_weights, load_cv_summary

    folds = int(load_cv_summary(cv_dir)["folds"])
    return [fold_weights(cv_dir, fold) for fold in range(folds)]


def ensemble_probabilities(paths: Sequence[str | Path], dataset, batch_size: int = 64) -> np.ndarray:
    """The mean over ``paths``' models of their probabilities ``(N, L)`` on ``dataset`` (no temperature).

    Raises:
        ModelLoadError: a file does not load, or the models do not share the dataset's input contract.
    """
    import torch

    from core.evaluate import predict_dataset
    from core.model import ModelLoadError, constraint_matrix, load_model, output_probabilities
    from core.preprocess import Fit
    from core.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    total = None
    for path in paths:
        model = load_model(path, taxonomy)
        if (model.config.input_size, Fit.of(model.config)) != (dataset.input_size, dataset.fit):
            raise ModelLoadError(f"{path}: input contract differs from the other fold models'")
        logits = predict_dataset(model, dataset, batch_size)
        probs = output_probabilities(torch.from_numpy(logits), constraint_matrix(model.config, taxonomy)).numpy()
        total = probs if total is None else total + probs
    if total is None:
        raise ModelLoadError("no fold model given")
    return total / len(paths)


def _compare(variant: Path, folds: list[Path], labels, images: Path, learnt_labels: set[str] | None, note: str,
             n_boot: int) -> tuple[PairedComparison, object]:
    """One unseen set: the fitted variant against the ensemble (and the decoded dataset, for timing)."""
    from core.evaluate import variant_paths, variant_probabilities

    [(fitted, dataset, card, _)] = variant_probabilities([variant], labels, images).values()
    ensemble = ensemble_probabilities(folds, dataset)
    not_learnt = set(card.labels_not_learnt) if card is not None else set()
    learnt = np.array([name not in not_learnt and (learnt_labels is None or name in learnt_labels)
                       for name in labels.labels])
    comparison = paired_comparison(fitted, ensemble, dataset.labels.targets, dataset.labels.mask, dataset.groups,
                                   labels.labels, learnt, n_boot=n_boot, note=note,
                                   names=(variant_paths(variant)[0].stem, f"{len(folds)}-fold ensemble"))
    return comparison, dataset


def seconds_per_image(paths: Sequence[str | Path], dataset) -> float:
    """CPU seconds (all of this process's threads) per image to predict ``dataset`` (already decoded) with every
    model of ``paths``: loading each model is left out, as the dashboard loads its variants once."""
    from core.evaluate import predict_dataset
    from core.model import load_model

    models = [load_model(path) for path in paths]
    start = time.process_time()
    for model in models:
        predict_dataset(model, dataset)
    return (time.process_time() - start) / len(dataset)


def check_ensemble(cv_dir: str | Path, variant: str | Path, kermany_per_class: int = 300,
                   n_boot: int = 1000) -> EnsembleCheck:
    """The fitted ``variant`` against the ensemble of ``cv_dir``'s fold models on the test split and held-out Kermany.

    Raises:
        HiCXRError: a CV folder, variant or data problem, with a message naming it.
    """
    from core.config import load_config, resolve_path
    from core.evaluate import split_labels, variant_paths
    from core.external_check import KERMANY, LABEL_ON_PNEUMONIA, heldout_films
    from core.taxonomy import load_taxonomy

    cv_dir, variant = resolve_path(cv_dir), resolve_path(variant)
    config_file = cv_dir / "config.yaml"
    if not config_file.is_file():
        raise HiCXRError(f"{config_file}: missing (the cross-validation saves its config there)")
    config = load_config(config_file)
    folds = fold_model_paths(cv_dir)
    test = split_labels(config.data.csv, config.data.images, "test", load_taxonomy(), config.data)
    on_test, test_films = _compare(variant, folds, test, resolve_path(config.data.images), None, "test split", n_boot)
    fitted_s = seconds_per_image([variant_paths(variant)[0]], test_films)
    ensemble_s = seconds_per_image(folds, test_films)
    comparisons = [on_test]
    if kermany_per_class > 0:
        films = heldout_films(KERMANY, kermany_per_class)
        on_kermany, _ = _compare(variant, folds, films, resolve_path(KERMANY / "images"), set(LABEL_ON_PNEUMONIA),
                                 f"held-out Kermany films ({kermany_per_class} normal, {kermany_per_class} "
                                 "pneumonia at most)", n_boot)
        comparisons.append(on_kermany)
    return EnsembleCheck(comparisons, len(folds), fitted_s, ensemble_s)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core.fold_ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv", required=True, help="the cross-validation folder (runs/NAME_cvK)")
    parser.add_argument("--variant", required=True, help="the model fitted from it, e.g. weights/bce")
    parser.add_argument("--kermany-per-class", type=int, default=300,
                        help="held-out Kermany films of each class (0: the test split only)")
    parser.add_argument("--n-boot", type=int, default=1000, help="paired patient-level bootstrap resamples")
    parser.add_argument("--json", default=None, help="also write the comparisons to this JSON file")
    args = parser.parse_args(argv)
    return report(lambda: check_ensemble(args.cv, args.variant, args.kermany_per_class, args.n_boot), args.json)


if __name__ == "__main__":
    sys.exit(main())
