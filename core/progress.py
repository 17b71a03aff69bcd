"""Progress display (a tqdm bar on a terminal, plain log lines elsewhere: CI logs, nohup) and per-epoch CSV logs."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable, enabled: bool = True, **kwargs: Any) -> Iterable:
    """tqdm bar when ``enabled`` and stderr is a terminal; otherwise the bare iterable."""
    if enabled and sys.stderr.isatty():
        return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
    return iterable


def append_row(path: Path, row: Mapping[str, Any], columns: Sequence[str]) -> None:
    """Append one row of ``columns`` to the CSV log at ``path`` (writing the header first if the file is new)."""
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in columns})
