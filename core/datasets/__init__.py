"""The public datasets in their released layouts: read a config's label table into one :class:`SourceTable`.

:func:`read_table` picks the reader from ``data.format`` (or the table's columns) and the files beside it:

* ``mimic`` -- MIMIC-CXR-JPG's chexpert, metadata and split tables (:mod:`core.datasets.mimic`);
* ``nih`` with ``train_val_list.txt`` / ``test_list.txt`` beside the table -- the official NIH split
  (:mod:`core.datasets.nih`); without them, the table as it is (the project's NIH subset with its ``split``
  column);
* ``chexpert`` -- ``train.csv``, with ``valid.csv`` as validation when it is beside it
  (:mod:`core.datasets.chexpert`).

``data.views: frontal`` then keeps PA/AP images (``auto``: frontal for MIMIC, every view otherwise).
"""

from __future__ import annotations

import logging

from core.config import DataConfig, resolve_path
from core.datasets.chexpert import read_chexpert
from core.datasets.files import table_path
from core.datasets.mimic import read_mimic
from core.datasets.nih import has_official_lists, read_nih_official
from core.datasets.table import SourceTable, frontal_rows
from core.labels import read_label_csv, sniff_format
from core.taxonomy import Taxonomy, load_taxonomy

__all__ = ["SourceTable", "read_table", "resolve_views"]

log = logging.getLogger(__name__)


def resolve_views(data: DataConfig, fmt: str) -> str:
    """``frontal`` or ``all``: ``data.views``, where ``auto`` means frontal for MIMIC and all otherwise."""
    if data.views != "auto":
        return data.views
    return "frontal" if fmt == "mimic" else "all"


def read_table(data: DataConfig, taxonomy: Taxonomy | None = None) -> SourceTable:
    """Read ``data.csv`` (and the files the dataset keeps beside it) into labels and, where fixed, the split.

    Raises:
        LabelError: a file or column is missing or a value is bad; the message names the file and column.
    """
    taxonomy = taxonomy or load_taxonomy()
    csv = table_path(resolve_path(data.csv))
    fmt = data.format if data.format != "auto" else (sniff_format(csv) or "auto")
    views = resolve_views(data, fmt)
    label_kwargs = {"policy": data.uncertainty_policy, "blank": data.blank, "abnormal_rule": data.abnormal_rule}
    split_kwargs = {"fractions": data.split_fractions, "salt": data.split_salt}
    if fmt == "mimic":
        table = read_mimic(csv, taxonomy, views=views, official_split=data.official_split, **label_kwargs)
    elif fmt == "nih" and data.official_split and has_official_lists(csv):
        table = read_nih_official(csv, resolve_path(data.images), taxonomy, patient_column=data.patient_column,
                                  abnormal_rule=data.abnormal_rule, **split_kwargs)
    elif fmt == "chexpert":
        table = read_chexpert(csv, taxonomy, official_split=data.official_split, split_column=data.split_column,
                              patient_column=data.patient_column, **split_kwargs, **label_kwargs)
    else:  # nih without official lists, or an unreadable/unrecognised file that read_label_csv reports
        kwargs = {"abnormal_rule": data.abnormal_rule}
        table = SourceTable(read_label_csv(csv, fmt=fmt, taxonomy=taxonomy, **kwargs), None, fmt, str(csv))
    if views == "frontal" and fmt != "mimic":  # the MIMIC reader filters views before joining its tables
        keep = frontal_rows(table.labels.metadata, str(csv))
        if not keep.all():
            table = table.subset(keep)
            table.notes.append(f"kept {int(keep.sum()):,} frontal images, left out {int((~keep).sum()):,} others")
    for note in table.notes:
        log.info("%s: %s", csv.name, note)
    return table
