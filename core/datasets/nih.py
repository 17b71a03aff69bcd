"""NIH ChestX-ray14 as released: ``Data_Entry_2017_v2020.csv`` with the official ``train_val_list.txt`` and
``test_list.txt`` beside it.

The test list is the test split. The train/val list has no validation part, so one is carved out of it by
patient: a salted hash of the ``Patient ID`` (:func:`core.datasets.splits.hash_split`) in the proportions of
``data.split_fractions``' ``train`` and ``val`` (default 0.8 : 0.1, one ninth of the patients), so validation
and training patients never overlap, and NIH's test patients are disjoint from both by construction of the
release. An image in neither list is left out; one in both is an error.

Images: NIH ships twelve archives that each unpack to ``images/``; unpacked into one folder they give
``images/NAME.png`` (point ``data.images`` at that folder). Copies that keep the archives apart
(``images_001/images/NAME.png`` ... ``images_012/images/NAME.png``, as on Kaggle) are found too when
``data.images`` is the folder that holds ``images_001/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from core.datasets.files import beside
from core.datasets.splits import hash_split
from core.datasets.table import SourceTable
from core.labels import LabelError, nih_labels, read_csv_table
from core.taxonomy import Taxonomy, load_taxonomy

TABLE_FILE = "Data_Entry_2017_v2020.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"


def has_official_lists(csv: Path) -> bool:
    """True when either official list file (or its ``.gz``) sits beside ``csv``."""
    return any(beside(csv, name, "", required=False) is not None for name in (TRAIN_VAL_LIST, TEST_LIST))


def read_list(path: Path) -> set[str]:
    """The image names of an official list file, one per line (blank lines ignored)."""
    text = path.read_text(encoding="utf-8") if path.suffix != ".gz" else _gunzip(path)
    return {line.strip() for line in text.splitlines() if line.strip()}


def _gunzip(path: Path) -> str:
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def locate_images(names: Sequence[str], root: Path) -> list[str]:
    """Each image's path relative to ``root``: ``NAME`` (one folder) or ``images_NNN/images/NAME`` (per archive).

    Names found in neither place keep the flat form, so the dataset's missing-file message lists them.
    """
    archives = sorted(root.glob("images_*/images")) if root.is_dir() else []
    if not archives:
        return list(names)
    where: dict[str, str] = {}
    for folder in archives:
        prefix = folder.relative_to(root).as_posix()
        with os.scandir(folder) as entries:
            for entry in entries:
                where.setdefault(entry.name, f"{prefix}/{entry.name}")
    return [where.get(name, name) for name in names]


def read_nih_official(
    csv: str | Path,
    images_root: str | Path,
    taxonomy: Taxonomy | None = None,
    *,
    fractions: dict[str, float] | None = None,
    salt: str = "hicxr",
    patient_column: str = "Patient ID",
    abnormal_rule: Literal["not_no_finding", "any_child"] = "not_no_finding",
) -> SourceTable:
    """Read ``Data_Entry_2017_v2020.csv`` and its official lists into labels and a train/val/test assignment.

    Args:
        csv: The data entry table; ``train_val_list.txt`` and ``test_list.txt`` must sit beside it.
        images_root: ``data.images``, used to find the per-archive layout.
        taxonomy: Output order; the packaged taxonomy by default.
        fractions: ``data.split_fractions``; only the train : val proportion is used (the test list is given).
        salt: ``data.split_salt`` for the patient hash that carves validation out of train/val.
        patient_column: The table's patient id column.
        abnormal_rule: See :func:`core.labels.derive_labels`.

    Raises:
        LabelError: a list file or column is missing, or an image is in both lists (named in the message).
    """
    taxonomy = taxonomy or load_taxonomy()
    csv = Path(csv)
    fractions = fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
    train_val = read_list(beside(csv, TRAIN_VAL_LIST, "NIH official train/val list"))
    test = read_list(beside(csv, TEST_LIST, "NIH official test list"))
    both = sorted(train_val & test)
    if both:
        raise LabelError(f"{csv.parent / TEST_LIST}: {len(both)} image(s) are also in {TRAIN_VAL_LIST}, "
                         f"e.g. {', '.join(both[:3])}")
    labels = nih_labels(read_csv_table(csv), taxonomy, source=str(csv), abnormal_rule=abnormal_rule)
    if patient_column not in labels.metadata.columns:
        raise LabelError(f"{csv}: missing column {patient_column!r} (data.patient_column), needed to carve a "
                         "patient-disjoint validation set out of the train/val list")
    names = np.asarray(labels.paths, dtype=object)
    in_test = np.isin(names, list(test))
    in_train_val = np.isin(names, list(train_val))
    notes = []
    listed = in_test | in_train_val
    if not listed.all():
        notes.append(f"left out {int((~listed).sum()):,} images of {csv.name} that are in neither official list")
        labels, names = labels.subset(listed), names[listed]
        in_test, in_train_val = in_test[listed], in_train_val[listed]
    assignment = np.full(len(names), "test", dtype=object)
    patients = labels.metadata[patient_column].astype(str).to_numpy(dtype=object)
    carve = {"train": fractions.get("train", 0.8), "val": fractions.get("val", 0.1), "test": 0.0}
    assignment[in_train_val] = hash_split(patients[in_train_val], carve, salt)
    labels.paths = locate_images(labels.paths, Path(images_root))
    labels.metadata["split"] = assignment
    counts = ", ".join(f"{s} {int((assignment == s).sum()):,}" for s in ("train", "val", "test"))
    notes.append(f"official NIH split ({TRAIN_VAL_LIST} / {TEST_LIST}), validation carved from train/val by "
                 f"patient: {counts}")
    return SourceTable(labels, assignment, "nih", str(csv), notes)
