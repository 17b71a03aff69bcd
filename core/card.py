"""The model card: what a weights file is, how it was made and how well it does, as one validated JSON file.

This module is the only place that knows the card's schema (see :class:`ModelCard`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def strict_json(obj: Any) -> Any:
    """``obj`` with NaN/inf replaced by ``None`` and NumPy scalars by Python ones, so it is strict JSON."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        return strict_json(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as strict, indented JSON (NaN -> null) to ``path``, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strict_json(data), indent=1, allow_nan=False), encoding="utf-8")
    return path
