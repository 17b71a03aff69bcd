"""What every dataset reader returns: the label set, the official split if the dataset has one, and notes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.labels import LabelError, LabelSet

#: ViewPosition values that are frontal films (MIMIC's LATERAL, LL and blanks are not).
FRONTAL_VIEWS = ("PA", "AP")


@dataclass
class SourceTable:
    """One dataset's rows, read and labelled.

    Attributes:
        labels: One row per image (paths relative to ``data.images``).
        assignment: The split of every row (``train``/``val``/``test``) where the dataset fixes it (official
            split files), or None to split by ``data.split_column`` or patient hash (:mod:`core.data`).
        fmt: ``nih``, ``chexpert`` or ``mimic``.
        source: The main label file, for messages.
        notes: What the reader kept, dropped or carved, one sentence each (logged by the caller).
    """

    labels: LabelSet
    assignment: np.ndarray | None
    fmt: str
    source: str
    notes: list[str] = field(default_factory=list)

    def subset(self, rows: np.ndarray) -> SourceTable:
        """Rows ``rows`` (a boolean mask or indices) of the labels and the assignment."""
        assignment = None if self.assignment is None else self.assignment[rows]
        return SourceTable(self.labels.subset(rows), assignment, self.fmt, self.source, list(self.notes))


def concat_labels(parts: list[LabelSet]) -> LabelSet:
    """Rows of several label sets (same label order) one after the other; metadata columns are unioned."""
    if not parts:
        raise ValueError("nothing to concatenate")
    if any(p.labels != parts[0].labels for p in parts):
        raise LabelError("label sets with different label orders cannot be joined")
    return LabelSet(
        paths=[path for p in parts for path in p.paths],
        targets=np.concatenate([p.targets for p in parts]),
        mask=np.concatenate([p.mask for p in parts]),
        labels=parts[0].labels,
        metadata=pd.concat([p.metadata for p in parts], ignore_index=True),
    )


def frontal_rows(metadata: pd.DataFrame, source: str) -> np.ndarray:
    """Boolean mask of frontal images from CheXpert's ``Frontal/Lateral`` or NIH/MIMIC's view column.

    Raises:
        LabelError: the table has none of these columns (the message names them and the file).
    """
    if "Frontal/Lateral" in metadata.columns:
        return metadata["Frontal/Lateral"].astype(str).str.strip().str.lower().eq("frontal").to_numpy()
    for column in ("View Position", "ViewPosition"):
        if column in metadata.columns:
            return metadata[column].astype(str).str.strip().str.upper().isin(FRONTAL_VIEWS).to_numpy()
    raise LabelError(f"{source}: data.views is 'frontal' but the table has no view column "
                     "('Frontal/Lateral', 'View Position' or 'ViewPosition'); set data.views: all")
