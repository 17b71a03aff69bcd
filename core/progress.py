"""Progress display: a tqdm bar on a terminal, plain log lines elsewhere (CI logs, nohup)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable, enabled: bool = True, **kwargs: Any) -> Iterable:
    """tqdm bar when ``enabled`` and stderr is a terminal; otherwise the bare iterable."""
    if enabled and sys.stderr.isatty():
        return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
    return iterable
