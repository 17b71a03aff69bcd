"""Tolerant access to DICOM attributes: optional or malformed data must never stop a read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["get", "number", "text"]


def get(ds: Any, keyword: str) -> Any:
    """The first value of an attribute, or None if absent, empty or malformed."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom converts lazily and can raise anything on a malformed value
        return None
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        try:
            value = value[0] if len(value) else None
        except Exception:  # noqa: BLE001 - a malformed multi-value can fail on indexing too
            return None
    return value


def text(ds: Any, keyword: str) -> str | None:
    """The attribute as stripped text, or None. Never show this to a user: see :mod:`core.imaging.coded`."""
    value = get(ds, keyword)
    try:
        result = str(value).strip() if value is not None else ""
    except Exception:  # noqa: BLE001 - str() of a malformed value can raise
        return None
    return result or None


def number(ds: Any, keyword: str) -> float | None:
    """The attribute as a finite float, or None."""
    try:
        result = float(get(ds, keyword))
    except (TypeError, ValueError, OverflowError):
        return None
    return result if np.isfinite(result) else None
