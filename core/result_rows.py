"""The batch command line's result rows, streamed to a CSV or JSON file (or CSV to a text stream) as they are made.

One writer serves both sources of ``python -m core.predict``: files and folders (:mod:`core.predict`) and PACS
studies (:mod:`core.pacs.batch`, which adds a ``sent`` column and keeps the final rows of an interrupted run).
Rows follow :mod:`core.serialize` (the wide CSV columns, formula neutralisation, file names of any bytes):

* CSV: a header, then one row per file (or image) and variant, flushed per row;
* JSON: a list of ``Analysis.to_dict()`` records with ``file`` added (``{"file", "variant", "error"}`` for one not
  analysed), each record flushed as it is written and the list closed by :meth:`ResultRows.close`, so an
  interrupted run (Ctrl-C, an internal error) still leaves a file that holds every row done.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from core.analysis import Analysis
from core.errors import HiCXRError
from core.serialize import error_row, file_text, plain_text, wide_fields, wide_row, write_csv

__all__ = ["ResultRows", "ResultsFileError"]


class ResultsFileError(HiCXRError):
    """The results file cannot be created or written (the message names it and says why)."""


class ResultRows:
    """Streams the batch command line's result rows to ``out`` (``.csv`` or ``.json``) or, as CSV, to ``stdout``."""

    def __init__(self, out: Path | None, stdout: TextIO, labels: Sequence[str], extra_fields: Sequence[str] = (),
                 kept: Iterable[Mapping[str, str]] = ()) -> None:
        """Open ``out`` (None: CSV on ``stdout``), write the header and then the ``kept`` rows.

        Args:
            out: the results file; its suffix (``.json``, else CSV) chooses the format.
            stdout: where CSV goes without ``out``.
            labels: the taxonomy's labels, in output order (the per-label columns).
            extra_fields: columns after the standard ones (the PACS run's ``sent``); filled from the ``extra`` of
                :meth:`analysis`, empty in error rows.
            kept: CSV rows of an earlier run of this same file, written back as they were read (they were
                neutralised against formulas when first written; doing it again would add a second quote).

        Raises:
            ResultsFileError: the file cannot be created or written.
            ValueError: ``kept`` rows with a JSON output (only a CSV is resumed).
        """
        self.json = out is not None and out.suffix.lower() == ".json"
        self.fields = [*wide_fields(labels), *extra_fields]
        kept = list(kept)
        if kept and self.json:
            raise ValueError("only a CSV output keeps the rows of an earlier run")
        self._owned = out is not None
        self._records = 0
        try:
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                self._f: TextIO = out.open("w", newline="", encoding="utf-8", errors="backslashreplace")
            else:
                if hasattr(stdout, "reconfigure"):
                    stdout.reconfigure(errors="backslashreplace")  # a row must never fail on its text
                self._f = stdout
            if self.json:
                self._f.write("[")
            else:
                write_csv(self._f, self.fields, [])
                csv.DictWriter(self._f, fieldnames=self.fields, restval="", extrasaction="ignore").writerows(kept)
                self._f.flush()
        except OSError as exc:
            raise ResultsFileError(f"cannot write the results to {out}: {exc.strerror or exc}") from None

    def error(self, file: str, variants: Sequence[str], message: str) -> None:
        """Rows of a file (or image, or study) that was not analysed: one per variant, with the reason."""
        file, message = file_text(file), plain_text(message)  # names whatever their bytes (core.serialize)
        if self.json:
            self._records_out({"file": file, "variant": v, "error": message} for v in variants)
        else:
            write_csv(self._f, self.fields, [error_row(file, v, message) for v in variants], header=False)

    def analysis(self, file: str, analysis: Analysis, extra: Mapping[str, str] | None = None) -> None:
        """The row of one variant's analysis of ``file``, with the values of the ``extra_fields`` in ``extra``."""
        file, extra = file_text(file), dict(extra or {})
        if self.json:
            self._records_out([{"file": file, **analysis.to_dict(), **extra}])
        else:
            write_csv(self._f, self.fields, [{**wide_row(analysis, file), **extra}], header=False)

    def _records_out(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self._f.write(("," if self._records else "") + "\n" + json.dumps(record, indent=1))
            self._f.flush()  # each record on disk as soon as it is made: an interrupted run keeps it
            self._records += 1

    def close(self) -> None:
        """Finish the file (closes the JSON list) and close it if this writer opened it."""
        if self.json:
            self._f.write("\n]\n")
        self._f.flush()
        if self._owned:
            self._f.close()
