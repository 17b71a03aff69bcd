"""CheXpert (v1.0 and v1.0-small): ``train.csv`` and, when it sits beside it, the official ``valid.csv``.

``valid.csv`` holds the radiologists' consensus labels of 234 images of 200 patients who are not in
``train.csv``. When it is present (and ``data.official_split`` is on) it is the validation split, and
``train.csv`` is split by patient hash into train and test in the proportions of ``data.split_fractions``'
``train`` and ``test`` (default 0.8 : 0.1); without it, ``train.csv`` is split into all three as before.
Both files' ``Path`` columns are relative to the folder above ``CheXpert-v1.0-small/`` (``data.images``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from core.datasets.splits import hash_split
from core.datasets.table import SourceTable, concat_labels
from core.labels import UncertaintyPolicy, read_label_csv
from core.taxonomy import Taxonomy, load_taxonomy

VALID_FILE = "valid.csv"


def read_chexpert(
    csv: str | Path,
    taxonomy: Taxonomy | None = None,
    *,
    official_split: bool = True,
    split_column: str = "split",
    patient_column: str = "Patient ID",
    fractions: dict[str, float] | None = None,
    salt: str = "hicxr",
    policy: UncertaintyPolicy | str = UncertaintyPolicy.ONES,
    blank: Literal["zero", "unknown"] = "zero",
    abnormal_rule: Literal["not_no_finding", "any_child"] = "not_no_finding",
) -> SourceTable:
    """Read a CheXpert table, with ``valid.csv`` as the validation split when it sits beside it.

    ``valid.csv`` is not used when ``official_split`` is off, when ``csv`` is itself ``valid.csv``, or when the
    table has its own ``split_column`` (a split someone chose on purpose is kept). Then ``assignment`` is None.

    Raises:
        LabelError: a file or column is missing or a value is bad (the message names the file).
    """
    taxonomy = taxonomy or load_taxonomy()
    csv = Path(csv)
    kwargs = {"policy": policy, "blank": blank, "abnormal_rule": abnormal_rule}
    train = read_label_csv(csv, fmt="chexpert", taxonomy=taxonomy, **kwargs)
    valid_path = csv.parent / VALID_FILE
    if (not official_split or csv.name == VALID_FILE or split_column in train.metadata.columns
            or not valid_path.is_file()):
        return SourceTable(train, None, "chexpert", str(csv))
    valid = read_label_csv(valid_path, fmt="chexpert", taxonomy=taxonomy, **kwargs)
    fractions = fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
    carve = {"train": fractions.get("train", 0.8), "val": 0.0, "test": fractions.get("test", 0.1)}
    patients = train.metadata[patient_column].astype(str).to_numpy(dtype=object)
    assignment = np.concatenate([hash_split(patients, carve, salt), np.full(len(valid), "val", dtype=object)])
    labels = concat_labels([train, valid])
    labels.metadata["split"] = assignment
    shared = set(patients) & set(valid.metadata[patient_column].astype(str))
    notes = [f"official CheXpert validation set {valid_path} ({len(valid):,} images); {csv.name} split by patient "
             f"into train {int((assignment == 'train').sum()):,} and test {int((assignment == 'test').sum()):,}"]
    if shared:
        notes.append(f"warning: {len(shared)} patient(s) of {VALID_FILE} also appear in {csv.name}, "
                     f"e.g. {sorted(shared)[0]}")
    return SourceTable(labels, assignment, "chexpert", str(csv), notes)
