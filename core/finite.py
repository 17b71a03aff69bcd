"""One rule for numbers that must be finite before anything shows or writes them: an analysis's outputs.

The readers refuse non-finite grey levels before the model (:mod:`core.imaging`); this is the guard after it, so
no view (the plotly tree's marker sizes, the table, the PDF) and no export ever receives NaN or infinity. The CLI
and the dashboard both call :func:`invalid_analysis_message`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.analysis import Analysis

__all__ = ["invalid_analysis_message"]


def invalid_analysis_message(analyses: Mapping[str, Analysis]) -> str | None:
    """A message for the user when any analysis holds a probability, MC mean or MC spread that is not finite."""
    for name, analysis in analyses.items():
        arrays = (analysis.probability, analysis.mc_mean, analysis.mc_std)
        if not all(np.isfinite(np.asarray(a, dtype=np.float64)).all() for a in arrays):
            return (f"The analysis with {name} produced invalid numbers (not finite) for this image, so no result "
                    "is reported. The image may hold values the model cannot handle; export it again.")
    return None
