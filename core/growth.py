"""The growth of ``../shared/data/nih`` on 2026-12-01: which images came with it, and which images a model trained
before it never saw.

The images added then (data README) are NIH copies from two repositories, all in ``train`` and ``val``. A model
trained before the growth trained on the older copies of some splits; an image is *unseen* by it when it lies
outside the test split and its patient has no older copy in a split the model trained on. Used by
:mod:`core.card_evidence` (held-out evidence for the shipped cards) and :mod:`core.compare_unseen` (a shipped
model against a new cross-validation on those images).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

#: Source copies of the NIH images added on 2026-12-01 (the table's ``source_repo``; data README).
GROWTH_SOURCES = frozenset({"muhammedtalo/COVID-19", "MichaelNoya/nih-chest-xray-webdataset-subset"})
SOURCE_COLUMN = "source_repo"
PATIENT_COLUMN = "Patient ID"


def trained_splits(trained_on: str) -> set[str]:
    """The splits a model card's ``data.trained_on`` (``train`` or ``train+val``) names."""
    return {"train"} if trained_on == "train" else {"train", "val"}


def unseen_rows(table: pd.DataFrame, trained_on: str, seen_in: pd.DataFrame | None = None,
                growth_sources: Iterable[str] = GROWTH_SOURCES) -> np.ndarray:
    """Boolean mask of the rows of ``table`` whose patient a model trained before the growth never trained on,
    outside the test split.

    Args:
        table: NIH label rows (``split``, ``source_repo``, ``Patient ID`` columns).
        trained_on: The model card's ``data.trained_on``.
        seen_in: The whole table the model's training rows are looked up in (default ``table``).
        growth_sources: The ``source_repo`` values the data grew by.
    """
    full = table if seen_in is None else seen_in
    older = ~full[SOURCE_COLUMN].isin(set(growth_sources))
    seen = set(full.loc[older & full["split"].isin(trained_splits(trained_on)), PATIENT_COLUMN].astype(str))
    return ((table["split"] != "test") & ~table[PATIENT_COLUMN].astype(str).isin(seen)).to_numpy()


def trained_after_growth(table: pd.DataFrame, trained_on: str, train_images: int | None,
                         growth_sources: Iterable[str] = GROWTH_SOURCES) -> bool:
    """Whether a model that trained on ``train_images`` images of the splits ``trained_on`` names trained on more
    than those splits held before the growth, i.e. on the grown data (its card's ``data`` section says both)."""
    older = ~table[SOURCE_COLUMN].isin(set(growth_sources)) & table["split"].isin(trained_splits(trained_on))
    return train_images is not None and train_images > int(older.sum())
