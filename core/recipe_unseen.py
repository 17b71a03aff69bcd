"""Two training recipes' fold models on films no fold trained on: the check a cross-validation cannot make.

:mod:`core.recipe_compare` scores two cross-validations on their held-out folds. Those films come from the training
distribution, so a recipe can win there by what tells the training films apart (their source or resolution, when
those carry a label mix) rather than by the findings. This scores the same fold models on films from elsewhere:

* the project's test split (the config's table, ``split == test``: 122 older full-resolution NIH films),
* the held-out Kermany films (pneumonia against normal, another hospital: :func:`core.external_check.heldout_films`).

Each recipe is the average of the probabilities of its fold models (:func:`core.fold_ensemble.ensemble_probabilities`)
over the folds both recipes finished, each fold model alone too on the test split; each comparison is
paired (:mod:`core.paired`: the same resampled patients for both). Each recipe's films are decoded at its own input
contract. Measured this way (session of 2026-12-04), ``chmcnn`` at 128 px against 64 px, folds 0-2: +0.026 pooled
by CV, but -0.074 on the test split and 0.906 -> 0.173 on Kermany.

    python -m core.recipe_unseen runs/nih_chmcnn_cv5 runs/nih_chmcnn_128_cv5 [--kermany-per-class 300]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.fold_ensemble import add_unseen_arguments
from core.paired import ComparisonError, PairedComparison, paired_comparison, report


def common_folds(cv_a: str | Path, cv_b: str | Path) -> list[int]:
    """The fold numbers both cross-validation folders have finished (every epoch of their config trained)."""
    from core.crossval import fold_finished

    def folds(cv: Path) -> set[int]:
        numbers = (int(d.name[4:]) for d in cv.glob("fold*") if d.name[4:].isdigit())
        return {k for k in numbers if fold_finished(cv, k)}

    return sorted(folds(Path(cv_a)) & folds(Path(cv_b)))


def _recipe_probabilities(models: Sequence, labels, images: Path):
    """The decoded dataset at the models' input contract, the ensemble's probabilities and each model's alone."""
    from core.data import XrayDataset
    from core.fold_ensemble import fold_probabilities, mean_probabilities
    from core.preprocess import Fit

    first = models[0].config
    dataset = XrayDataset(labels, images, first.input_size, cache=True, progress=sys.stderr.isatty(),
                          fit=Fit.of(first))
    singles = fold_probabilities(models, dataset)  # one pass per model; the ensemble is their mean
    return dataset, mean_probabilities(singles), singles


def compare_unseen(cv_a: str | Path, cv_b: str | Path, kermany_per_class: int = 300, n_boot: int = 1000,
                   names: tuple[str, str] | None = None) -> list[PairedComparison]:
    """Recipe ``cv_a`` against ``cv_b`` on the test split (ensembles, then each fold alone) and held-out Kermany.

    Raises:
        HiCXRError: no fold that both finished, a missing config, or a data problem, with a message naming it.
    """
    from core.config import load_config, resolve_path
    from core.crossval import fold_weights
    from core.evaluate import split_labels
    from core.external_check import KERMANY, LABEL_ON_PNEUMONIA, heldout_films
    from core.model import load_model
    from core.taxonomy import load_taxonomy

    cv_a, cv_b = resolve_path(cv_a), resolve_path(cv_b)
    folds = common_folds(cv_a, cv_b)
    if not folds:
        raise ComparisonError(f"{cv_a} and {cv_b} have no fold that both finished")
    config_file = cv_a / "config.yaml"
    if not config_file.is_file():
        raise ComparisonError(f"{config_file}: missing (the cross-validation saves its config there)")
    config = load_config(config_file)
    taxonomy = load_taxonomy()
    names = names or (cv_a.name, cv_b.name)
    models = [[load_model(fold_weights(cv, k)) for k in folds] for cv in (cv_a, cv_b)]
    which = f"ensembles of folds {', '.join(map(str, folds))}"
    test = split_labels(config.data.csv, config.data.images, "test", taxonomy, config.data)
    kermany = heldout_films(KERMANY, kermany_per_class) if kermany_per_class > 0 else None
    sets = [("test split", test, resolve_path(config.data.images), None)]
    if kermany is not None:
        sets.append((f"held-out Kermany films ({kermany_per_class} normal, {kermany_per_class} pneumonia at most)",
                     kermany, resolve_path(KERMANY / "images"), set(LABEL_ON_PNEUMONIA)))
    out: list[PairedComparison] = []
    for note, labels, images, only in sets:
        (data_a, ens_a, singles_a), (_, ens_b, singles_b) = (_recipe_probabilities(m, labels, images) for m in models)
        learnt = np.array([only is None or name in only for name in labels.labels])
        pairs = [(which, ens_a, ens_b)]
        if only is None:  # each fold model alone, on the test split only (Kermany: ensembles)
            pairs += [(f"fold {k} alone", a, b) for k, a, b in zip(folds, singles_a, singles_b, strict=True)]
        for what, a, b in pairs:
            out.append(paired_comparison(a, b, data_a.labels.targets, data_a.labels.mask, data_a.groups,
                                         labels.labels, learnt, n_boot=n_boot, note=f"{note}, {what}", names=names))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core.recipe_unseen", description=__doc__.split("\n\n")[0])
    parser.add_argument("cv_a", help="the first cross-validation folder (the baseline), e.g. runs/nih_chmcnn_cv5")
    parser.add_argument("cv_b", help="the second one (the recipe tried)")
    add_unseen_arguments(parser)
    args = parser.parse_args(argv)
    return report(lambda: compare_unseen(args.cv_a, args.cv_b, args.kermany_per_class, args.n_boot), args.json)


if __name__ == "__main__":
    sys.exit(main())
