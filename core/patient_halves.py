"""Which half of an outside collection's patients a film belongs to: one rule for every use of those collections.

The collections that are not NIH (Kermany's children, the COVID-19 collection, Shenzhen) are split by a hash of the
patient id into two halves: :data:`FIT_HALF` fits the population classifier (and may be used to train, e.g. to
pretrain a backbone), :data:`HELD_HALF` measures it and is the external check's held-out set, so it must stay out of
everything a model learns from. A hash, not a random draw, so the halves are the same on every machine and run.
"""

from __future__ import annotations

import hashlib

import pandas as pd


def outlier_half(patient: str) -> int:
    """0 or 1: which half of the outlier table's patients ``patient`` is in (0 fits the population classifier, 1
    measures it). A hash of the id, so the halves are the same on every machine and run."""
    return int(hashlib.sha256(f"hicxr-ood:{patient}".encode()).hexdigest(), 16) % 2


#: :func:`patient_half`'s halves: the one that fits the population classifier, the one that measures it.
FIT_HALF, HELD_HALF = 0, 1


def patient_half(table: pd.DataFrame, half: int, column: str = "patient_id") -> pd.DataFrame:
    """The rows of ``table`` whose patient (``column``) is in ``half`` (:data:`FIT_HALF` or :data:`HELD_HALF`) by
    :func:`outlier_half`: the one rule that splits every outside collection (children, other adults) between
    fitting the population classifier and measuring it."""
    return table[table[column].map(outlier_half) == half]
