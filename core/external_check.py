"""Do variants tell pneumonia from normal on films of a collection none of them trained on? Paired, per label.

The Kermany pediatric set (``../shared/data/other/kermany``: normal films and bacterial or viral pneumonia) is
outside every model's training data; the patients of one half (by the same hash as
:func:`core.patient_halves.outlier_half`) fit the population classifier, so only the other half is used here. The films
are children's, which the dashboard warns about: this is a check of what the features carry to another hospital
and population, not a claim about children. Per variant the batch path of :mod:`core.evaluate` gives the
probabilities; labels: Pneumonia and Abnormal (1 for pneumonia) and No Finding (1 for normal). Every later variant
is compared with the first (:mod:`core.paired`: paired patient-level bootstrap of the macro AUROC difference).

    python -m core.external_check --weights weights/bce OTHER/bce [--per-class 300]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import HiCXRError
from core.paired import PairedComparison, paired_comparison, report

KERMANY = Path("../shared/data/other/kermany")
NORMAL = "No Finding"
#: label -> its value on a pneumonia film (the normal films get the opposite).
LABEL_ON_PNEUMONIA = {"Pneumonia": 1.0, "Abnormal": 1.0, "No Finding": 0.0}


def heldout_films(folder: str | Path = KERMANY, per_class: int = 300, seed: int = 1):
    """A LabelSet of up to ``per_class`` normal and ``per_class`` pneumonia films of the held-out patients.

    Raises:
        HiCXRError: the table is missing or lacks its columns.
    """
    import pandas as pd

    from core.config import resolve_path
    from core.labels import LabelSet
    from core.patient_halves import HELD_HALF, patient_half
    from core.taxonomy import load_taxonomy

    table_path = resolve_path(Path(folder) / "labels.csv")
    if not table_path.is_file():
        raise HiCXRError(f"{table_path}: missing (the Kermany table of ../shared/data)")
    table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    for column in ("file", "patient_id", "finding"):
        if column not in table.columns:
            raise HiCXRError(f"{table_path}: no column {column!r}")
    table = patient_half(table, HELD_HALF)
    normal = table["finding"] == NORMAL
    parts = [rows.sample(min(per_class, len(rows)), random_state=seed) for rows in (table[normal], table[~normal])]
    rows = pd.concat(parts).reset_index(drop=True)
    labels = load_taxonomy().labels
    pneumonia = (rows["finding"] != NORMAL).to_numpy()
    targets = np.zeros((len(rows), len(labels)), np.float32)
    mask = np.zeros_like(targets, dtype=bool)
    for label, on_pneumonia in LABEL_ON_PNEUMONIA.items():
        j = labels.index(label)
        targets[:, j] = np.where(pneumonia, on_pneumonia, 1.0 - on_pneumonia)
        mask[:, j] = True
    metadata = rows.rename(columns={"patient_id": "Patient ID"})
    return LabelSet(paths=rows["file"].tolist(), targets=targets, mask=mask, labels=labels, metadata=metadata)


def external_check(prefixes: Sequence[str | Path], folder: str | Path = KERMANY, per_class: int = 300,
                   n_boot: int = 1000) -> list[PairedComparison]:
    """Each later variant against the first on the held-out Kermany films (see the module docstring)."""
    from core.config import resolve_path
    from core.evaluate import variant_probabilities

    labels = heldout_films(folder, per_class)
    predicted = variant_probabilities(prefixes, labels, resolve_path(Path(folder) / "images"))
    (first, (base, ds, _, _)), *others = predicted.items()
    learnt = np.array([label in LABEL_ON_PNEUMONIA for label in labels.labels])
    note = (f"Kermany pediatric films of the patients not used by the population classifier: "
            f"{int((labels.targets[:, labels.labels.index(NORMAL)] == 1).sum())} normal, "
            f"{int((labels.targets[:, labels.labels.index(NORMAL)] == 0).sum())} pneumonia")
    return [paired_comparison(base, probs, ds.labels.targets, ds.labels.mask, ds.groups, labels.labels, learnt,
                              names=(first, name), n_boot=n_boot, note=note)
            for name, (probs, _, _, _) in others]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core.external_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="+", required=True, help="variant prefixes; the first is the baseline")
    parser.add_argument("--folder", default=str(KERMANY), help="the Kermany folder (labels.csv, images/)")
    parser.add_argument("--per-class", type=int, default=300, help="films of each class (normal, pneumonia)")
    parser.add_argument("--n-boot", type=int, default=1000, help="paired patient-level bootstrap resamples")
    args = parser.parse_args(argv)
    if len(args.weights) < 2:
        parser.error("give at least two variants: the first is compared with each other")
    return report(lambda: external_check(args.weights, args.folder, args.per_class, args.n_boot))

if __name__ == "__main__":
    sys.exit(main())
