"""MIMIC-CXR-JPG 2.0.0: labels per study, images and views per DICOM, the official split per image.

The release's three tables sit together (PhysioNet ships them gzipped; ``.csv`` or ``.csv.gz`` are both read):

* ``mimic-cxr-2.0.0-chexpert.csv``: ``subject_id, study_id`` and the 14 CheXpert observations (alphabetical),
  valued 1.0, 0.0, -1.0 or blank: the CheXpert labeler run on the study's report. The CheXpert rules of
  :func:`core.labels.chexpert_matrix` apply (uncertainty policy, blank policy), and a study's labels are given to
  every image of the study.
* ``mimic-cxr-2.0.0-metadata.csv``: one row per image, ``dicom_id, subject_id, study_id, ..., ViewPosition,
  Rows, Columns, ...``. ``ViewPosition`` is PA, AP, LATERAL, LL, a rarer value or blank; ``views="frontal"``
  keeps PA and AP.
* ``mimic-cxr-2.0.0-split.csv``: ``dicom_id, study_id, subject_id, split`` with ``train``, ``validate`` (our
  ``val``) and ``test``, by patient. Used as it is.

Images live at ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` (``XX``: the subject id's first two digits) under
the folder that holds ``files/``. The patient is ``subject_id`` (metadata column ``Patient ID``). Images of
studies without a label row are dropped, and so are the views not asked for; the notes say how many.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from core.datasets.files import beside
from core.datasets.splits import SPLITS, normalise_split_names
from core.datasets.table import FRONTAL_VIEWS, SourceTable
from core.labels import LabelError, LabelSet, UncertaintyPolicy, chexpert_matrix, derive_labels, read_csv_table
from core.taxonomy import Taxonomy, load_taxonomy

LABELS_FILE = "mimic-cxr-2.0.0-chexpert.csv"
METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
STUDY_KEYS = ("subject_id", "study_id")
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "split")


def image_paths(subject_ids: pd.Series, study_ids: pd.Series, dicom_ids: pd.Series) -> list[str]:
    """``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` for every image (vectorised; 400k rows in well under a second)."""
    subject = subject_ids.astype("int64").astype(str)
    study = study_ids.astype("int64").astype(str)
    paths = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + dicom_ids.astype(str) + ".jpg"
    return paths.tolist()


def _require(df: pd.DataFrame, columns: tuple[str, ...] | list[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LabelError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}")


def _integer_ids(df: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    """Make id columns int64 in place; a blank or non-numeric id is named with its line."""
    for column in columns:
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise LabelError(f"{path}: column {column!r} row {row + 2} has value {df[column].iloc[row]!r}; "
                             "expected an integer id")
        df[column] = values.astype("int64")


def read_mimic(
    labels_csv: str | Path,
    taxonomy: Taxonomy | None = None,
    *,
    views: Literal["frontal", "all"] = "frontal",
    official_split: bool = True,
    policy: UncertaintyPolicy | str = UncertaintyPolicy.ONES,
    blank: Literal["zero", "unknown"] = "zero",
    abnormal_rule: Literal["not_no_finding", "any_child"] = "not_no_finding",
) -> SourceTable:
    """Read MIMIC-CXR-JPG's chexpert, metadata and (with ``official_split``) split tables into one row per image.

    Args:
        labels_csv: ``mimic-cxr-2.0.0-chexpert.csv`` (or ``.csv.gz``); the other two are found beside it.
        taxonomy: Output order; the packaged taxonomy by default.
        views: ``frontal`` (ViewPosition PA or AP) or ``all``.
        official_split: Read ``mimic-cxr-2.0.0-split.csv`` and return its split (else ``assignment`` is None).
        policy: What a -1.0 becomes (see :class:`core.labels.UncertaintyPolicy`).
        blank: A blank label is ``zero`` (not mentioned) or ``unknown``.
        abnormal_rule: See :func:`core.labels.derive_labels`.

    Raises:
        LabelError: a file or column is missing, an id or label value is bad, a study is listed twice, or an image
            has no split row; the message names the file (and the column, line or dicom_id).
    """
    taxonomy = taxonomy or load_taxonomy()
    labels_csv = Path(labels_csv)
    studies = read_csv_table(labels_csv)
    _require(studies, list(STUDY_KEYS) + list(taxonomy.chexpert_labels), labels_csv)
    _integer_ids(studies, STUDY_KEYS, labels_csv)
    duplicated = studies.duplicated(list(STUDY_KEYS)).to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise LabelError(f"{labels_csv}: study {studies['study_id'].iloc[row]} of subject "
                         f"{studies['subject_id'].iloc[row]} is listed twice (row {row + 2})")
    # Labels are derived once per study (228k rows), then indexed per image (377k).
    targets, mask = chexpert_matrix(studies, taxonomy, policy, blank, str(labels_csv))
    targets, mask = derive_labels(targets, mask, taxonomy, abnormal_rule)

    meta_path = beside(labels_csv, METADATA_FILE, "MIMIC-CXR-JPG metadata file")
    meta = read_csv_table(meta_path, dtype={"dicom_id": str})
    _require(meta, METADATA_COLUMNS, meta_path)
    _integer_ids(meta, STUDY_KEYS, meta_path)
    notes = [f"{meta_path.name}: {len(meta):,} images"]
    if views == "frontal":
        frontal = meta["ViewPosition"].astype(str).str.strip().str.upper().isin(FRONTAL_VIEWS).to_numpy()
        notes.append(f"kept {int(frontal.sum()):,} frontal (PA/AP) images, left out {int((~frontal).sum()):,} "
                     "other or blank views (data.views: all keeps them)")
        meta = meta[frontal]
    study_index = pd.MultiIndex.from_frame(studies[list(STUDY_KEYS)])
    row_of = study_index.get_indexer(pd.MultiIndex.from_frame(meta[list(STUDY_KEYS)]))
    unlabelled = row_of < 0
    if unlabelled.any():
        notes.append(f"left out {int(unlabelled.sum()):,} images of studies without a row in {labels_csv.name}")
        meta, row_of = meta[~unlabelled], row_of[~unlabelled]
    meta = meta.reset_index(drop=True)

    assignment = None
    if official_split:
        assignment = _official_split(labels_csv, meta)
        meta["split"] = assignment
        counts = ", ".join(f"{s} {int((assignment == s).sum()):,}" for s in SPLITS)
        notes.append(f"official split ({SPLIT_FILE}): {counts}")
    meta["Patient ID"] = meta["subject_id"].astype(str)
    paths = image_paths(meta["subject_id"], meta["study_id"], meta["dicom_id"])
    meta["Path"] = paths
    labels = LabelSet(paths, targets[row_of], mask[row_of], taxonomy.labels, meta)
    return SourceTable(labels, assignment, "mimic", str(labels_csv), notes)


def _official_split(labels_csv: Path, meta: pd.DataFrame) -> np.ndarray:
    """The split of every image of ``meta`` from the split file beside ``labels_csv`` (``validate`` -> ``val``)."""
    split_path = beside(labels_csv, SPLIT_FILE, "MIMIC-CXR-JPG split file")
    split = read_csv_table(split_path, dtype={"dicom_id": str})
    _require(split, SPLIT_COLUMNS, split_path)
    dicom = pd.Index(split["dicom_id"].astype(str))
    if dicom.has_duplicates:
        raise LabelError(f"{split_path}: dicom_id {dicom[dicom.duplicated()][0]!r} is listed twice")
    where = dicom.get_indexer(meta["dicom_id"].astype(str))
    missing = where < 0
    if missing.any():
        examples = ", ".join(meta["dicom_id"].astype(str)[missing].head(3))
        raise LabelError(f"{split_path}: no split row for {int(missing.sum()):,} image(s) of {METADATA_FILE}, "
                         f"e.g. dicom_id {examples}")
    values = normalise_split_names(split["split"].to_numpy()[where])
    bad = sorted(set(values) - set(SPLITS))
    if bad:
        raise LabelError(f"{split_path}: column 'split' has value(s) {bad}; expected train, validate, test")
    return values
