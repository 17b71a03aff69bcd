"""Deterministic patient-level split assignment, and the spellings of split names the datasets use.

Shared by :mod:`core.data` (tables without a split column) and the official-split readers, which carve the
share a dataset does not provide (NIH's validation set, CheXpert's test set) out of its training patients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.errors import HiCXRError

SPLITS = ("train", "val", "test")

#: Split values as the datasets write them -> the project's names (MIMIC writes ``validate``).
SPLIT_ALIASES: dict[str, str] = {"valid": "val", "validate": "val", "validation": "val"}


class SplitError(HiCXRError, ValueError):
    """Split fractions or values cannot be used."""


def hash_split(patient_ids: Sequence, fractions: dict[str, float], salt: str = "hicxr") -> np.ndarray:
    """Deterministic split per row from a hash of the patient id (same patient -> same split, on any machine).

    Args:
        patient_ids: One id per row.
        fractions: ``{"train": f, "val": f, "test": f}``; normalised to sum to 1 (a missing key counts as 0).
        salt: Mixed into the hash so that another salt gives another (still deterministic) split.

    Returns:
        Array of split names, one per row.
    """
    shares = [float(fractions.get(s, 0.0)) for s in SPLITS]
    total = sum(shares)
    if total <= 0:
        raise SplitError("split fractions must not all be 0")
    edges = np.cumsum([f / total for f in shares])
    # Hash each distinct patient once: 400k images of 65k patients cost 65k digests, not 400k.
    codes, uniques = pd.factorize(pd.Series(list(patient_ids), dtype=object).astype(str), sort=False)
    u = np.array([int.from_bytes(hashlib.sha256(f"{salt}:{pid}".encode()).digest()[:8], "big") / 2**64
                  for pid in uniques], dtype=np.float64)
    slot = np.minimum(np.searchsorted(edges, u, side="right"), len(SPLITS) - 1)
    return np.asarray(SPLITS, dtype=object)[slot][codes] if len(codes) else np.array([], dtype=object)


def normalise_split_names(values: Sequence) -> np.ndarray:
    """Lower-cased, stripped split values with the aliases in :data:`SPLIT_ALIASES` mapped (``validate`` -> ``val``)."""
    out = pd.Series(list(values), dtype=object).astype(str).str.strip().str.lower()
    return out.replace(SPLIT_ALIASES).to_numpy(dtype=object)
