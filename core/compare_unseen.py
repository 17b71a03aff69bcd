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

``--kind new`` scores the new images alone, ``--kind older`` the older ones alone (only a model trained on ``train``
has unseen older images: the validation split's). When the new images' look carries their labels (a folder of one
finding), a win on them alone may be the look, not the finding.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.paired import ComparisonError, PairedComparison, paired_comparison, report

#: Which unseen images to score: all of them, only the images the data grew by, or only the older images (those of
#: a model trained on ``train`` alone: the older validation split, the same kind of film as its training images).
KINDS = ("all", "new", "older")


def unseen_rows(metadata, trained_on: str, new_sources: Sequence[str], kind: str = "all") -> tuple[np.ndarray, int]:
    """Indices of the cross-validated rows a model trained on ``trained_on`` before the growth never saw
    (:func:`core.growth.unseen_rows`), of the ``kind`` asked for (:data:`KINDS`), and how many images of
    ``new_sources`` were left out because their patient has an older image it trained on.

    Raises:
        ComparisonError: a column is missing, the kind is unknown, or no row qualifies.
    """
    from core.growth import PATIENT_COLUMN, SOURCE_COLUMN
    from core.growth import unseen_rows as growth_unseen

    for column in (SOURCE_COLUMN, PATIENT_COLUMN, "split"):
        if column not in metadata.columns:
            raise ComparisonError(f"the label table has no {column!r} column to tell new images from old ones")
    new = metadata[SOURCE_COLUMN].astype(str).isin(list(new_sources)).to_numpy()
    if not new.any():
        raise ComparisonError(f"no cross-validated image comes from {', '.join(new_sources)}")
    if kind not in KINDS:
        raise ComparisonError(f"unknown kind of image {kind!r}: one of {', '.join(KINDS)}")
    keep = growth_unseen(metadata, trained_on, growth_sources=new_sources)
    if not (keep & new).any():
        raise ComparisonError("every new image belongs to a patient who also has an older image")
    dropped = int((new & ~keep).sum())
    keep = keep & (new if kind == "new" else ~new if kind == "older" else True)
    if not keep.any():
        raise ComparisonError(f"no {kind} image is unseen by a model trained on {trained_on} (a model trained on "
                              "train+val before the growth saw every older image)")
    return np.flatnonzero(keep), dropped


def _trained_on(variant: str | Path) -> str:
    """What the variant's card says it trained on (``train`` or ``train+val``; a card without it: ``train+val``)."""
    from core.card import ModelCard
    from core.config import resolve_path
    from core.evaluate import variant_paths

    card_path = variant_paths(resolve_path(variant))[1]
    card = ModelCard.read(card_path) if card_path.is_file() else None
    return str(card.data.trained_on or "train") if card is not None else "train+val"


def compare_on_unseen(config_path: str | Path, cv_dir: str | Path, variant: str | Path,
                      new_sources: Sequence[str], n_boot: int = 1000, kind: str = "all") -> PairedComparison:
    """Load the CV's out-of-fold predictions and the shipped variant, score both on the unseen images (of ``kind``,
    :data:`KINDS`).

    Raises:
        HiCXRError: a config, CV folder, variant or data problem, with a message naming it.
    """
    from core.config import load_config, resolve_path
    from core.crossval import cv_probabilities, load_cv_summary, load_oof
    from core.evaluate import variant_probabilities
    from core.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    config = load_config(resolve_path(config_path))
    logits, labels, _ = load_oof(config, resolve_path(cv_dir), taxonomy)
    trained_on = _trained_on(variant)
    rows, dropped = unseen_rows(labels.metadata, trained_on, new_sources, kind)
    unseen = labels.subset(rows)
    cv_probs = cv_probabilities(logits[rows], config, taxonomy)
    # The shipped model through core.evaluate's batch path: its own input contract, its card's calibration.
    [(shipped_probs, dataset, card, _)] = variant_probabilities([resolve_path(variant)], unseen,
                                                                resolve_path(config.data.images),
                                                                taxonomy=taxonomy).values()
    not_learnt = set(card.labels_not_learnt) if card is not None else set()
    oof_labels = set(load_cv_summary(resolve_path(cv_dir))["oof_labels"])
    learnt = np.array([name not in not_learnt and name in oof_labels for name in taxonomy.labels])
    which = {"all": "", "new": ", only those the data grew by", "older": ", only the older ones"}[kind]
    note = (f"train+val images {variant} never trained on (the data grew by {', '.join(new_sources)}){which}; "
            f"{dropped} new images left out because their patient also has an older image it trained on")
    return paired_comparison(shipped_probs, cv_probs, unseen.targets, unseen.mask, dataset.groups, taxonomy.labels,
                             learnt, names=(Path(str(variant)).name, "CV out-of-fold"), n_boot=n_boot, note=note)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core.compare_unseen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the config the cross-validation ran with")
    parser.add_argument("--cv", required=True, help="the cross-validation folder (runs/NAME_cvK)")
    parser.add_argument("--variant", required=True, help="the shipped variant, e.g. weights/bce")
    parser.add_argument("--new-source", action="append", required=True,
                        help="a source_repo value of the images the data grew by (repeat for several)")
    parser.add_argument("--kind", choices=KINDS, default="all",
                        help="score all unseen images (default), only the new ones, or only the older ones (the "
                        "older validation split, unseen by a model trained on train alone)")
    parser.add_argument("--n-boot", type=int, default=1000, help="paired patient-level bootstrap resamples")
    parser.add_argument("--json", default=None, help="also write the comparison to this JSON file")
    args = parser.parse_args(argv)
    return report(lambda: compare_on_unseen(args.config, args.cv, args.variant, args.new_source, args.n_boot,
                                            args.kind), args.json)

if __name__ == "__main__":
    sys.exit(main())
