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


def fold_probabilities(models: Sequence, dataset, batch_size: int = 64) -> list[np.ndarray]:
    """Each of ``models``' (loaded fold models) probabilities ``(N, L)`` on ``dataset`` (no temperature), one pass
    per model.

    Raises:
        ModelLoadError: no model, or a model whose input contract is not the one ``dataset`` was decoded for.
    """
    import torch

    from core.evaluate import predict_dataset
    from core.model import ModelLoadError, constraint_matrix, output_probabilities
    from core.preprocess import Fit
    from core.taxonomy import load_taxonomy

    if not models:
        raise ModelLoadError("no fold model given")
    taxonomy = load_taxonomy()
    out = []
    for i, model in enumerate(models):
        if (model.config.input_size, Fit.of(model.config)) != (dataset.input_size, dataset.fit):
            raise ModelLoadError(f"fold model {i}: its input contract differs from the fitted model's")
        logits = predict_dataset(model, dataset, batch_size)
        probs = output_probabilities(torch.from_numpy(logits), constraint_matrix(model.config, taxonomy)).numpy()
        out.append(probs.astype(np.float32))
    return out


def mean_probabilities(singles: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble of single models' probabilities: their mean (float64 sum, float32 result)."""
    return np.mean(np.stack(singles), axis=0, dtype=np.float64).astype(np.float32)


def ensemble_probabilities(models: Sequence, dataset, batch_size: int = 64) -> np.ndarray:
    """The mean over ``models`` (loaded fold models) of their probabilities ``(N, L)`` on ``dataset`` (no
    temperature).

    Raises:
        ModelLoadError: no model, or a model whose input contract is not the one ``dataset`` was decoded for.
    """
    return mean_probabilities(fold_probabilities(models, dataset, batch_size))


def _cpu_seconds(work):
    """``work()``'s result and the CPU seconds (all of this process's threads) it took."""
    start = time.process_time()
    result = work()
    return result, time.process_time() - start


def _compare(variant: Path, folds: Sequence, labels, images: Path, learnt_labels: set[str] | None, note: str,
             n_boot: int) -> tuple[PairedComparison, object, float]:
    """One unseen set: the fitted variant against the ensemble of the loaded ``folds``; also the decoded dataset
    and the ensemble's CPU seconds per image over it."""
    from core.evaluate import variant_paths, variant_probabilities

    [(fitted, dataset, card, _)] = variant_probabilities([variant], labels, images).values()
    ensemble, ensemble_s = _cpu_seconds(lambda: ensemble_probabilities(folds, dataset))
    not_learnt = set(card.labels_not_learnt) if card is not None else set()
    learnt = np.array([name not in not_learnt and (learnt_labels is None or name in learnt_labels)
                       for name in labels.labels])
    comparison = paired_comparison(fitted, ensemble, dataset.labels.targets, dataset.labels.mask, dataset.groups,
                                   labels.labels, learnt, n_boot=n_boot, note=note,
                                   names=(variant_paths(variant)[0].stem, f"{len(folds)}-fold ensemble"))
    return comparison, dataset, ensemble_s / len(dataset)


def check_ensemble(cv_dir: str | Path, variant: str | Path, kermany_per_class: int = 300,
                   n_boot: int = 1000) -> EnsembleCheck:
    """The fitted ``variant`` against the ensemble of ``cv_dir``'s fold models on the test split and held-out Kermany.

    Raises:
        HiCXRError: a CV folder, variant or data problem, with a message naming it.
    """
    from core.config import load_config, resolve_path
    from core.evaluate import predict_dataset, split_labels, variant_paths
    from core.external_check import KERMANY, LABEL_ON_PNEUMONIA, heldout_films
    from core.model import load_model
    from core.taxonomy import load_taxonomy

    cv_dir, variant = resolve_path(cv_dir), resolve_path(variant)
    config_file = cv_dir / "config.yaml"
    if not config_file.is_file():
        raise HiCXRError(f"{config_file}: missing (the cross-validation saves its config there)")
    config = load_config(config_file)
    folds = [load_model(path) for path in fold_model_paths(cv_dir)]
    test = split_labels(config.data.csv, config.data.images, "test", load_taxonomy(), config.data)
    on_test, test_films, ensemble_s = _compare(variant, folds, test, resolve_path(config.data.images), None,
                                               "test split", n_boot)
    # The fitted model's pass once more on the decoded films: its first also loaded it and decoded them.
    fitted = load_model(variant_paths(variant)[0])
    _, fitted_s = _cpu_seconds(lambda: predict_dataset(fitted, test_films))
    comparisons = [on_test]
    if kermany_per_class > 0:
        films = heldout_films(KERMANY, kermany_per_class)
        on_kermany, _, _ = _compare(variant, folds, films, resolve_path(KERMANY / "images"),
                                    set(LABEL_ON_PNEUMONIA), f"held-out Kermany films ({kermany_per_class} normal, "
                                    f"{kermany_per_class} pneumonia at most)", n_boot)
        comparisons.append(on_kermany)
    return EnsembleCheck(comparisons, len(folds), fitted_s / len(test_films), ensemble_s)


def add_unseen_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a comparison on unseen films: how many Kermany films, bootstrap resamples, a JSON copy."""
    parser.add_argument("--kermany-per-class", type=int, default=300,
                        help="held-out Kermany films of each class (0: the test split only)")
    parser.add_argument("--n-boot", type=int, default=1000, help="paired patient-level bootstrap resamples")
    parser.add_argument("--json", default=None, help="also write the comparisons to this JSON file")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core.fold_ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv", required=True, help="the cross-validation folder (runs/NAME_cvK)")
    parser.add_argument("--variant", required=True, help="the model fitted from it, e.g. weights/bce")
    add_unseen_arguments(parser)
    args = parser.parse_args(argv)
    return report(lambda: check_ensemble(args.cv, args.variant, args.kermany_per_class, args.n_boot), args.json)


if __name__ == "__main__":
    sys.exit(main())
