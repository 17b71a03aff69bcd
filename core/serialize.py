"""The one serializer of :class:`~core.analysis.Analysis` records: JSON records, wide and long CSV rows.

Every CSV the project writes goes through :func:`write_csv`, which neutralises spreadsheet formulas: a text cell
that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with a single quote (OWASP's
CSV-injection rule), so a file named ``=HYPERLINK(...).png`` stays text in Excel or LibreOffice. Numbers are
written as numbers.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from core.analysis import Analysis

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
WARNING_SEPARATOR = "; "


def file_text(name: str | os.PathLike[str]) -> str:
    """A file name as text that any UTF-8 writer accepts, losslessly: the name's bytes, decoded as UTF-8, with each
    byte that is not UTF-8 written ``\\xNN`` and each backslash doubled (so ``\\xNN`` is never ambiguous).

    A name read from a folder is decoded by Python with surrogate escapes (``\\udcfc`` for a Latin-1 ``ü``),
    which a UTF-8 CSV writer refuses and JSON writes as a lone surrogate. :func:`file_bytes` gives the name's
    bytes back. A valid UTF-8 name without a backslash is written unchanged.
    """
    raw = os.fsencode(name)
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def file_bytes(text: str) -> bytes:
    """The bytes of the file name that :func:`file_text` wrote as ``text``."""
    parts, pos = [], 0
    for match in _ESCAPE.finditer(text):
        parts.append(text[pos : match.start()].encode("utf-8"))
        code = match.group(1)
        parts.append(b"\\" if code == "\\" else bytes([int(code[1:], 16)]))
        pos = match.end()
    parts.append(text[pos:].encode("utf-8"))
    return b"".join(parts)


def plain_text(text: str) -> str:
    """``text`` with any surrogate escape (an undecodable byte carried from a file name) written as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def safe_cell(value: Any) -> Any:
    """``value`` unchanged unless it is text starting like a spreadsheet formula; then prefixed with ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def write_csv(f: TextIO, fields: Sequence[str], rows: Iterable[dict[str, Any]], header: bool = True) -> None:
    """Write ``rows`` (dicts; missing keys empty) as CSV with formula neutralisation; flushes after each row."""
    writer = csv.DictWriter(f, fieldnames=list(fields), restval="", extrasaction="ignore")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: safe_cell(v) for k, v in row.items()})
        f.flush()


def wide_fields(labels: Sequence[str]) -> list[str]:
    """Columns of the batch CLI's CSV: ``file, variant, error, warnings, file_notes, out_of_population, input_size``
    (``file_notes``: technical notes about the file, apart from the clinical warnings), then per
    label ``<label>, <label>_std, <label>_call``."""
    return ["file", "variant", "error", "warnings", "file_notes", "out_of_population", "input_size"] + [
        c for label in labels for c in (label, f"{label}_std", f"{label}_call")]


def wide_row(analysis: Analysis, file: str) -> dict[str, Any]:
    """One CLI CSV row: the Monte-Carlo mean, standard deviation and call of every learnt label (empty cells for a
    label the model never learnt), the warnings, the population checks that fired and the model's input size.

    ``<label>_call`` is the record's decision (:mod:`core.calls`): ``above``, ``below``, ``no call``, or empty when
    the label is not learnt or the image is out of population."""
    row: dict[str, Any] = {"file": file, "variant": analysis.model_id, "error": "",
                           "warnings": WARNING_SEPARATOR.join(analysis.warnings),
                           "file_notes": WARNING_SEPARATOR.join(analysis.notes),
                           "out_of_population": WARNING_SEPARATOR.join(c.name for c in analysis.population_checks),
                           "input_size": analysis.extra.get("input_size", "")}
    for i, label in enumerate(analysis.labels):
        # A label the model never learnt has no meaningful output: its cells stay empty rather than read as 0.
        learnt = analysis.learnt(label)
        row[label] = f"{analysis.mc_mean[i]:.6f}" if learnt else ""
        row[f"{label}_std"] = f"{analysis.mc_std[i]:.6f}" if learnt else ""
        row[f"{label}_call"] = analysis.call(label)
    return row


def error_row(file: str, variant: str, error: str) -> dict[str, Any]:
    """A CLI CSV row for a file that could not be analysed."""
    return {"file": file, "variant": variant, "error": error, "warnings": ""}


def record(analysis: Analysis, include_cams: bool = False) -> dict[str, Any]:
    """The JSON-ready record of an analysis (see :meth:`Analysis.to_dict`)."""
    return analysis.to_dict(include_cams=include_cams)


#: Columns of the per-label (long) CSV of one analysis, as the dashboard exports it.
LONG_FIELDS = ["model_id", "sample", "label", "learnt", "probability", "mc_mean", "mc_std", "operating_point", "call",
               "call_reason", "violates_parent", "map_of", "out_of_population", "input_size", "warnings",
               "file_notes"]


def long_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """One row per label of one analysis (see :data:`LONG_FIELDS`); not-learnt labels have empty probabilities."""
    children = {v.child for v in analysis.violations}
    rows = []
    for i, label in enumerate(analysis.labels):
        learnt = analysis.learnt(label)
        threshold = analysis.operating_points.get(label)
        rows.append({
            "model_id": analysis.model_id, "sample": analysis.sample or "", "label": label, "learnt": learnt,
            "probability": f"{analysis.probability[i]:.6f}" if learnt else "",
            "mc_mean": f"{analysis.mc_mean[i]:.6f}" if learnt else "",
            "mc_std": f"{analysis.mc_std[i]:.6f}" if learnt else "",
            "operating_point": "" if threshold is None else f"{threshold:.6f}",
            "call": analysis.call(label), "call_reason": analysis.call_reason(label),
            "violates_parent": label in children, "map_of": (analysis.cam_labels or analysis.labels)[i],
            # Every row carries the image's warnings and checks: a row read alone must not lose them.
            "out_of_population": WARNING_SEPARATOR.join(c.name for c in analysis.population_checks),
            "input_size": analysis.extra.get("input_size", ""),
            "warnings": WARNING_SEPARATOR.join(analysis.warnings),
            "file_notes": WARNING_SEPARATOR.join(analysis.notes),
        })
    return rows
