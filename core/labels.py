"""Label tables -> a label matrix and a mask of which entries are known.

Three source formats are read:

* **CheXpert** (``Path, Sex, Age, Frontal/Lateral, AP/PA`` + 14 observations valued ``1``, ``0``, ``-1`` or
  blank). ``-1`` ("uncertain mention") follows an uncertainty policy: ``U-Ones`` (-> 1), ``U-Zeros`` (-> 0) or
  ``U-Ignore`` (-> unknown, masked out of the loss). A blank means "not mentioned", which is 0 by default
  (``blank="zero"``) or unknown with ``blank="unknown"``.
* **NIH ChestX-ray14** (``Image Index, Finding Labels`` with findings joined by ``|``), mapped onto CheXpert
  labels with :data:`NIH_TO_CHEXPERT`. CheXpert labels NIH never annotates are unknown; NIH-only findings
  (Emphysema, Fibrosis, Hernia) are kept in the metadata column ``nih_only``.
* **MIMIC-CXR-JPG** (``subject_id, study_id`` + the same 14 observations, one row per study): the CheXpert rules
  per study, applied to every image of the study by :mod:`core.datasets.mimic`.

Then the derived labels are filled in (:func:`derive_labels`):

* ``Uncertain`` = 1 if all 14 CheXpert labels (No Finding included) are known 0 -- "neither normal nor any
  finding", not CheXpert's -1; 0 if any of them is 1; unknown otherwise.
* ``Abnormal`` = 1 - ``No Finding`` when No Finding is known (the rule of the official release's test labels, so
  ``Uncertain`` images are abnormal); when No Finding is unknown, 1 if any child is 1, else unknown.
  ``abnormal_rule="any_child"`` uses the plain parent rule below instead.
* every other derived parent = 1 if any child is 1, 0 only if every child is known 0, else unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from core.errors import HiCXRError
from core.taxonomy import Taxonomy, load_taxonomy


class LabelError(HiCXRError, ValueError):
    """A label table cannot be read: missing columns, bad values or an unknown format."""


class UncertaintyPolicy(StrEnum):
    """What a CheXpert ``-1`` (uncertain mention) becomes."""

    ONES = "U-Ones"
    ZEROS = "U-Zeros"
    IGNORE = "U-Ignore"


#: NIH ChestX-ray14 finding -> CheXpert label. Mass and Nodule are both focal lesions (CheXpert's Lung Lesion);
#: Infiltration is the closest NIH class to CheXpert's broad Lung Opacity; Pleural_Thickening is pleural disease
#: other than effusion (Pleural Other).
NIH_TO_CHEXPERT: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Lung Opacity",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "No Finding": "No Finding",
}
#: NIH findings with no CheXpert counterpart: kept as metadata, they still make an image "not No Finding".
NIH_ONLY_FINDINGS: tuple[str, ...] = ("Emphysema", "Fibrosis", "Hernia")
#: CheXpert labels NIH does not annotate: unknown (masked) for NIH images...
NIH_UNKNOWN_LABELS: tuple[str, ...] = ("Enlarged Cardiomediastinum", "Fracture", "Support Devices")
#: ...except that an image NIH reports as "No Finding" is taken to show no pathology at all, as CheXpert's own
#: "No Finding" means: these two are known 0 there. Support Devices stays unknown (devices are not findings, and
#: CheXpert's "No Finding" allows them). Without this, Cardiac would be known only when positive.
NIH_NO_FINDING_NEGATIVES: tuple[str, ...] = ("Enlarged Cardiomediastinum", "Fracture")

CHEXPERT_REQUIRED_COLUMNS: tuple[str, ...] = ("Path",)
NIH_REQUIRED_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels")


@dataclass
class LabelSet:
    """A label matrix with its mask, one row per image.

    Attributes:
        paths: Image path (relative to an image root) per row.
        targets: ``float32`` array ``(N, L)`` of 0/1 in taxonomy output order; unknown entries hold 0.
        mask: ``bool`` array ``(N, L)``; True where the entry is known and may enter the loss and metrics.
        labels: Label names, the taxonomy's output order.
        metadata: One row per image: patient id, view, sex, age, split and source-specific columns.
    """

    paths: list[str]
    targets: np.ndarray
    mask: np.ndarray
    labels: tuple[str, ...]
    metadata: pd.DataFrame

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows: np.ndarray | list[int]) -> LabelSet:
        """Rows ``rows`` (indices or a boolean mask) as a new LabelSet."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return LabelSet(
            paths=[self.paths[i] for i in rows],
            targets=self.targets[rows],
            mask=self.mask[rows],
            labels=self.labels,
            metadata=self.metadata.iloc[rows].reset_index(drop=True),
        )


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...] | list[str], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LabelError(f"{source}: missing column(s) {', '.join(repr(c) for c in missing)}")


def derive_labels(
    targets: np.ndarray,
    mask: np.ndarray,
    taxonomy: Taxonomy,
    abnormal_rule: Literal["not_no_finding", "any_child"] = "not_no_finding",
) -> tuple[np.ndarray, np.ndarray]:
    """Fill in ``Uncertain`` and the derived parents from the source labels, with mask semantics.

    Args:
        targets: ``(N, L)`` 0/1 values; derived columns are overwritten.
        mask: ``(N, L)`` known flags; derived columns are overwritten.
        taxonomy: Gives the output order, the derived labels and the edges.
        abnormal_rule: ``not_no_finding`` (default; Abnormal = 1 - No Finding when known) or ``any_child``.

    Returns:
        New ``(targets, mask)`` arrays; the inputs are not modified.
    """
    targets = targets.astype(np.float32, copy=True)
    mask = mask.astype(bool, copy=True)
    idx = {label: i for i, label in enumerate(taxonomy.labels)}
    derived = set(taxonomy.derived_labels)

    def set_any_rule(label: str, children: list[str]) -> None:
        cols = [idx[c] for c in children]
        pos = ((targets[:, cols] == 1) & mask[:, cols]).any(axis=1)
        all_known_zero = (mask[:, cols] & (targets[:, cols] == 0)).all(axis=1)
        targets[:, idx[label]] = pos.astype(np.float32)
        mask[:, idx[label]] = pos | all_known_zero

    if "Uncertain" in derived:
        set_any_rule("Uncertain", taxonomy.chexpert_labels)
        # "Uncertain" is the negation of "any source label is positive".
        u = idx["Uncertain"]
        targets[:, u] = np.where(mask[:, u], 1.0 - targets[:, u], 0.0)

    # Children before parents: walk the derived labels in reverse topological order.
    for label in reversed(list(_topological_order(taxonomy))):
        if label not in derived or label == "Uncertain":
            continue
        children = taxonomy.children(label)
        if not children:
            raise LabelError(f"derived label {label!r} has no children in taxonomy {taxonomy.name!r}")
        set_any_rule(label, children)
        if label == "Abnormal" and abnormal_rule == "not_no_finding" and "No Finding" in idx:
            nf, ab = idx["No Finding"], idx["Abnormal"]
            known = mask[:, nf]
            targets[known, ab] = 1.0 - targets[known, nf]
            mask[known, ab] = True
    return targets, mask


def _topological_order(taxonomy: Taxonomy) -> list[str]:
    return [label for layer in taxonomy.layers() for label in layer]


def chexpert_matrix(
    df: pd.DataFrame,
    taxonomy: Taxonomy,
    policy: UncertaintyPolicy | str = UncertaintyPolicy.ONES,
    blank: Literal["zero", "unknown"] = "zero",
    source: str = "CheXpert table",
) -> tuple[np.ndarray, np.ndarray]:
    """The 14 CheXpert observation columns of ``df`` as ``(targets, mask)`` in taxonomy order, before derivation.

    Shared by CheXpert (one row per image) and MIMIC-CXR-JPG (one row per study). Derived columns are left 0 and
    unknown; :func:`derive_labels` fills them in.

    Raises:
        LabelError: an observation column is missing or a value is not 1, 0, -1 or blank (the message gives the
            column and the file's line number).
    """
    policy = UncertaintyPolicy(policy)
    _require_columns(df, list(taxonomy.chexpert_labels), source)
    n, num = len(df), taxonomy.num_labels
    targets = np.zeros((n, num), dtype=np.float32)
    mask = np.zeros((n, num), dtype=bool)
    for label in taxonomy.chexpert_labels:
        col = pd.to_numeric(df[label], errors="coerce")
        # Only cells that failed to parse need the (slow, string) check for whitespace-only blanks.
        failed = col.isna() & df[label].notna()
        unparsed = failed.copy()
        if failed.any():
            unparsed[failed] = df.loc[failed, label].astype(str).str.strip() != ""
        bad = (col.notna() & ~col.isin([1, 0, -1])) | unparsed
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = str(df[label].iloc[row])
            raise LabelError(f"{source}: column {label!r} row {row + 2} has value {value!r}; expected 1, 0, -1, blank")
        values = col.to_numpy(dtype=float)
        j = taxonomy.index(label)
        known = ~np.isnan(values)
        targets[known & (values == 1), j] = 1.0
        mask[known & (values != -1), j] = True
        uncertain = known & (values == -1)
        if policy is UncertaintyPolicy.ONES:
            targets[uncertain, j] = 1.0
            mask[uncertain, j] = True
        elif policy is UncertaintyPolicy.ZEROS:
            mask[uncertain, j] = True
        if blank == "zero":
            mask[~known, j] = True
    return targets, mask


def chexpert_labels(
    df: pd.DataFrame,
    taxonomy: Taxonomy | None = None,
    policy: UncertaintyPolicy | str = UncertaintyPolicy.ONES,
    blank: Literal["zero", "unknown"] = "zero",
    source: str = "CheXpert table",
    abnormal_rule: Literal["not_no_finding", "any_child"] = "not_no_finding",
) -> LabelSet:
    """Read a CheXpert-format table (``Path`` + the 14 observations valued 1, 0, -1 or blank).

    Args:
        df: The table; extra columns (Sex, Age, Frontal/Lateral, AP/PA, split, ...) go to ``metadata``.
        taxonomy: Output order; the packaged 21-label taxonomy by default.
        policy: What -1 becomes: ``U-Ones``, ``U-Zeros`` or ``U-Ignore`` (masked).
        blank: A blank cell is "not mentioned": ``zero`` (default) or ``unknown`` (masked).
        source: Name used in error messages (usually the CSV path).
        abnormal_rule: See :func:`derive_labels`.

    Raises:
        LabelError: a required column is missing or a value is not 1, 0, -1 or blank.
    """
    taxonomy = taxonomy or load_taxonomy()
    _require_columns(df, list(CHEXPERT_REQUIRED_COLUMNS) + list(taxonomy.chexpert_labels), source)
    targets, mask = chexpert_matrix(df, taxonomy, policy, blank, source)
    targets, mask = derive_labels(targets, mask, taxonomy, abnormal_rule)
    meta = df.drop(columns=list(taxonomy.chexpert_labels)).reset_index(drop=True)
    if "Patient ID" not in meta.columns:
        # CheXpert paths look like .../patient00001/study1/view1_frontal.jpg
        meta["Patient ID"] = meta["Path"].astype(str).str.extract(r"(patient\d+)", expand=False).fillna(meta["Path"])
    return LabelSet(df["Path"].astype(str).tolist(), targets, mask, taxonomy.labels, meta)


def nih_labels(
    df: pd.DataFrame,
    taxonomy: Taxonomy | None = None,
    source: str = "NIH table",
    abnormal_rule: Literal["not_no_finding", "any_child"] = "not_no_finding",
) -> LabelSet:
    """Read an NIH ChestX-ray14 ``Data_Entry_2017``-style table mapped onto CheXpert labels.

    NIH's 14 findings are exhaustive for NIH's own classes, so a mapped label that is not listed is a known 0.
    Labels NIH never annotates (:data:`NIH_UNKNOWN_LABELS`) are unknown, except :data:`NIH_NO_FINDING_NEGATIVES`
    on "No Finding" images, which are known 0.

    Raises:
        LabelError: a required column is missing or a finding is not an NIH class.
    """
    taxonomy = taxonomy or load_taxonomy()
    _require_columns(df, NIH_REQUIRED_COLUMNS, source)
    n, num = len(df), taxonomy.num_labels
    targets = np.zeros((n, num), dtype=np.float32)
    mask = np.zeros((n, num), dtype=bool)
    mapped_cols = sorted({taxonomy.index(label) for label in NIH_TO_CHEXPERT.values()})
    mask[:, mapped_cols] = True
    # The official table has 112k rows but only ~800 distinct finding combinations: parse each combination once.
    cells = df["Finding Labels"].astype(str).to_numpy(dtype=object)
    codes, combos = pd.factorize(cells)
    no_finding_cols = [taxonomy.index(label) for label in NIH_NO_FINDING_NEGATIVES]
    combo_only: list[str] = []
    for c, cell in enumerate(combos):
        rows = codes == c
        findings = [f.strip() for f in str(cell).split("|") if f.strip()]
        extra = []
        for finding in findings:
            if finding in NIH_TO_CHEXPERT:
                targets[rows, taxonomy.index(NIH_TO_CHEXPERT[finding])] = 1.0
            elif finding in NIH_ONLY_FINDINGS:
                extra.append(finding)
            else:
                first = int(np.flatnonzero(rows)[0])
                raise LabelError(f"{source}: row {first + 2} has unknown NIH finding {finding!r}")
        combo_only.append("|".join(extra))
        if findings == ["No Finding"]:
            mask[np.ix_(rows, no_finding_cols)] = True
    targets, mask = derive_labels(targets, mask, taxonomy, abnormal_rule)
    meta = df.drop(columns=["Finding Labels"]).reset_index(drop=True)
    meta["nih_findings"] = cells
    meta["nih_only"] = np.asarray(combo_only, dtype=object)[codes] if len(df) else np.array([], dtype=object)
    return LabelSet(df["Image Index"].astype(str).tolist(), targets, mask, taxonomy.labels, meta)


def detect_format(columns: list[str] | pd.Index) -> Literal["chexpert", "nih", "mimic"]:
    """``nih`` if the table has NIH's ``Finding Labels`` column, ``chexpert`` if it has ``Path``, ``mimic`` if it has
    MIMIC-CXR-JPG's ``subject_id`` and ``study_id`` (its labels are per study; the images come from the metadata
    file beside it)."""
    if "Finding Labels" in columns:
        return "nih"
    if "Path" in columns:
        return "chexpert"
    if "subject_id" in columns and "study_id" in columns:
        return "mimic"
    raise LabelError(
        "unrecognised label table: expected NIH columns ('Image Index', 'Finding Labels'), "
        "CheXpert columns ('Path' and the 14 observations) or MIMIC-CXR-JPG columns ('subject_id', 'study_id' and "
        "the 14 observations)"
    )


def read_label_csv(
    path: str | Path,
    fmt: Literal["auto", "chexpert", "nih", "mimic"] = "auto",
    taxonomy: Taxonomy | None = None,
    **kwargs,
) -> LabelSet:
    """Read a CheXpert- or NIH-format CSV into a :class:`LabelSet` (format detected from the columns).

    Extra keyword arguments go to :func:`chexpert_labels` or :func:`nih_labels`. A MIMIC-CXR-JPG table is refused
    with a message pointing to :func:`core.datasets.read_table`, which joins the files it needs.
    A ``.csv.gz`` beside a missing ``.csv`` is read instead.

    Raises:
        LabelError: the file is missing or unreadable, or columns/values are wrong; the message names the file.
    """
    path = Path(path)
    if not path.exists() and Path(f"{path}.gz").is_file():
        path = Path(f"{path}.gz")
    if fmt == "mimic" or (fmt == "auto" and sniff_format(path) == "mimic"):
        # MIMIC's labels are per study and its images come from the metadata file beside the table: one CSV is
        # not enough, and the reader that joins them lives above this module (core.datasets builds on it).
        raise LabelError(f"{path}: a MIMIC-CXR-JPG label table; read it with core.datasets.read_table (a config's "
                         "data section), which joins the metadata and split files beside it")
    df = read_csv_table(path)
    if fmt == "auto":
        try:
            fmt = detect_format(df.columns)
        except LabelError as exc:
            raise LabelError(f"{path}: {exc}") from None
    reader = nih_labels if fmt == "nih" else chexpert_labels
    return reader(df, taxonomy, source=str(path), **kwargs)


def read_csv_table(path: str | Path, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` with errors that name the file (missing, unreadable, not a CSV)."""
    path = Path(path)
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise LabelError(f"{path}: label file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise LabelError(f"{path}: not a readable CSV ({exc})") from exc
    except ValueError as exc:  # e.g. usecols naming a column the file lacks
        raise LabelError(f"{path}: {exc}") from exc


def sniff_format(path: str | Path) -> str | None:
    """The format the CSV's header announces (see :func:`detect_format`), or None if it cannot be read or is
    unrecognised (reading it then gives the error message)."""
    try:
        return detect_format(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError, EOFError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
