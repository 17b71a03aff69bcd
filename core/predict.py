"""Batch command line: analyse files and folders of chest X-rays with one or more model variants.

Run ``python -m core.predict --help``. Output rows carry the path as given on the command line, the variant, the
error or skip reason (if any), the image's warnings and, per label, the MC mean probability and its standard
deviation; nothing from the image headers that could identify a patient is written (image metadata is the
technical allow-list of :mod:`core.imaging`, with header fields as DICOM defined terms only).

One file never sinks the run: whatever goes wrong while reading or analysing it becomes that file's row. Rows are
written as they are produced (CSV flushed per row; JSON records flushed one by one and the list closed even on
Ctrl-C), so an interrupted run keeps every row done.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from PIL import Image
from tqdm import tqdm

from core.contract import DEFAULT_MC_SAMPLES
from core.finite import invalid_analysis_message
from core.imaging.errors import detail
from core.inference import BatchItem, Predictor
from core.model import ModelLoadError
from core.pacs.cli import PacsUsageError
from core.pacs.cli import add_arguments as add_pacs_arguments
from core.registry import RegistryError, variant_selection
from core.result_rows import ResultRows, ResultsFileError
from core.scan import Entry, MissingPathError, scan_paths

EXIT_OK, EXIT_REFUSED, EXIT_TOOL = 0, 1, 2

EPILOG = """\
Folders are searched recursively (in name order, following links to folders) for DICOM, PNG, JPEG, JPEG 2000,
JPEG-LS, TIFF, GIF, WebP, BMP and PGM/PPM files (by extension, plus files without an extension). Every other entry
gets a row saying why it was not analysed: another file type, a hidden file or folder, a broken link, a link loop,
a named pipe (FIFO), socket or device, an unreadable folder. A file named on the command line is always tried.

A file that cannot be read or analysed (damaged, too large, not a radiograph, degenerate: see the README's rule)
gets its message in the 'error' column and the run goes on. Images analysed with a caveat (e.g. mostly black, a
colour or multi-frame file, a DICOM header contradicted by its pixels) carry it in the 'warnings' column.

Output (--out): .csv = one row per file and variant: file, variant, error, warnings, then for each taxonomy label
'<label>' (MC-dropout mean probability) and '<label>_std'; cells starting with = + - @ tab or CR are prefixed
with ' so spreadsheets do not run them as formulas. .json = a list of Analysis.to_dict() records with the 'file'
added (files not analysed: {"file", "variant", "error"}). Without --out the CSV goes to standard output. Rows are
written as each file is done, so an interrupted run keeps the rows it finished.

--cams DIR writes one PNG contact sheet per file and variant: every label's CAM over the image, captioned with the
label and its MC mean, named <index>_<file stem>_<variant>.png.

Exit status: 0 every file found was analysed; 1 at least one file was refused or skipped (its row says why);
2 the tool itself could not run (bad option, missing path, unknown variant, no weights, output not writable, or an
internal error, after which the files not reached get a row saying so).
"""


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit status 2."""


class ToolError(Exception):
    """The tool cannot run or go on (output not writable): reported in one line, exit status 2."""


def collect_files(paths: Sequence[str | Path]) -> list[Entry]:
    """The entries to analyse or report (see :func:`core.scan.scan_paths`); a missing path is a usage error."""
    try:
        return scan_paths(paths)
    except MissingPathError as exc:
        raise UsageError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m core.predict`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m core.predict",
        description="Analyse chest X-rays (DICOM, PNG, JPEG, ...) with HiCXR model variants.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files and/or folders")
    parser.add_argument("--weights-dir", default="weights",
                        help="folder of <variant>.safetensors + <variant>.json (relative: to the repository root)")
    parser.add_argument("--variant", action="append", dest="variants", metavar="NAME",
                        help="variant to run (repeatable); 'all' for every variant; default: the default variant")
    parser.add_argument("--mc", type=int, default=DEFAULT_MC_SAMPLES, metavar="N",
                        help=f"Monte-Carlo dropout samples (default {DEFAULT_MC_SAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dropout masks (default 0)")
    parser.add_argument("--threshold", type=float, default=0.5, help="threshold for hierarchy violations")
    parser.add_argument("--batch-size", type=int, default=8, help="images per backbone batch (default 8)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="results file, .csv or .json (default: CSV to stdout)")
    parser.add_argument("--cams", type=Path, metavar="DIR", help="write a CAM contact sheet per file and variant")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_pacs_arguments(parser)  # --pacs URL [--since] [--until] [--accession] [--send]: core/pacs/batch.py
    return parser


# ------------------------------------------------------------------------------------------------ output


def _write_cams(item: BatchItem, folder: Path, path: Path) -> None:
    from core.explain import contact_sheet  # matplotlib only when asked for

    for name, a in item.analyses.items():
        Image.fromarray(contact_sheet(a)).save(folder / f"{item.index:04d}_{path.stem}_{name}.png")


def _invalid_output(item: BatchItem) -> str | None:
    """A message when a model produced non-finite numbers for this image (never scored as if valid)."""
    return invalid_analysis_message(item.analyses)


# ------------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace, stdout: TextIO) -> int:
    """Execute a parsed command line; returns the exit status (see :data:`EPILOG`)."""
    if args.mc < 1:
        raise UsageError(f"--mc must be at least 1, got {args.mc}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out is not None and args.out.suffix.lower() not in (".csv", ".json"):
        raise UsageError(f"--out must end in .csv or .json, got {args.out.name!r}")
    if args.pacs is not None:
        if args.paths:
            raise UsageError("give image PATHs or --pacs, not both")
        from core.pacs.batch import run_pacs  # the DICOMweb stack only when asked for

        try:
            return run_pacs(args, stdout)
        except PacsUsageError as exc:
            raise UsageError(str(exc)) from None
    if not args.paths:
        raise UsageError("give image files or folders, or --pacs URL")
    entries = collect_files(args.paths)
    if not entries:
        raise UsageError("nothing found in the given paths")
    try:
        predictor = Predictor(args.weights_dir, variant_selection(args.variants), mc_samples=args.mc, seed=args.seed,
                              threshold=args.threshold)
    except (RegistryError, ModelLoadError) as exc:
        raise UsageError(str(exc)) from None
    variants = predictor.variant_names
    if args.cams is not None:
        try:
            args.cams.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ToolError(f"cannot create the CAM folder {args.cams}: {exc.strerror or exc}") from None

    try:
        writer = ResultRows(args.out, stdout, list(predictor.taxonomy.labels))
    except ResultsFileError as exc:
        raise ToolError(str(exc)) from None
    counts = {"analysed": 0, "refused": 0, "skipped": 0}
    status = EXIT_OK
    try:
        status = _analyse_entries(entries, predictor, variants, writer, args, counts)
    finally:
        writer.close()
    total = len(entries)
    print(f"{counts['analysed']} of {total} file(s) analysed with {', '.join(variants)}"
          + (f"; {counts['refused']} refused" if counts["refused"] else "")
          + (f"; {counts['skipped']} skipped" if counts["skipped"] else "")
          + (" (each has a row saying why)" if counts["refused"] or counts["skipped"] else ""), file=sys.stderr)
    if status == EXIT_OK and (counts["refused"] or counts["skipped"]):
        status = EXIT_REFUSED
    return status


def _analyse_entries(entries: list[Entry], predictor: Predictor, variants: list[str], writer: ResultRows,
                     args: argparse.Namespace, counts: dict[str, int]) -> int:
    """Write every entry's rows in scan order; returns EXIT_TOOL if the run had to stop early, else EXIT_OK."""
    to_analyse = [e.path for e in entries if e.reason is None]
    pending = iter(entries)  # entries not written yet, in scan order

    def write_skips_until(path: Path | None) -> None:
        for entry in pending:
            if entry.reason is None and entry.path == path:
                return
            if entry.reason is not None:
                writer.error(str(entry.path), variants, entry.reason)
                counts["skipped"] += 1

    status = EXIT_OK
    done = 0
    items = predictor.iter_analyses(to_analyse, batch_size=args.batch_size)
    progress = tqdm(total=len(to_analyse), unit="image", disable=args.no_progress, file=sys.stderr)
    try:
        for item in items:
            path = to_analyse[item.index]
            write_skips_until(path)
            error = item.error if item.error is not None else _invalid_output(item)
            if error is not None:
                writer.error(str(path), variants, error)
                counts["refused"] += 1
            else:
                for analysis in item.analyses.values():  # one row per variant
                    writer.analysis(str(path), analysis)
                counts["analysed"] += 1
                if args.cams is not None:
                    status = max(status, _cams_or_report(item, args.cams, path))
            done += 1
            progress.update()
    except Exception as exc:  # noqa: BLE001 - report what was not reached instead of losing the whole output
        message = (f"Not analysed: the run stopped on an unexpected internal error ({type(exc).__name__}) before "
                   "this file; run it again on its own.")
        print(f"python -m core.predict: internal error: {detail(exc)}", file=sys.stderr)
        for path in to_analyse[done:]:
            write_skips_until(path)
            writer.error(str(path), variants, message)
            counts["refused"] += 1
        status = EXIT_TOOL
    finally:
        progress.close()
    write_skips_until(None)
    return status


def _cams_or_report(item: BatchItem, folder: Path, path: Path) -> int:
    try:
        _write_cams(item, folder, path)
    except OSError as exc:
        print(f"cannot write the CAM sheet of {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_TOOL
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 all analysed, 1 some refused or skipped, 2 the tool could not run)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args, sys.stdout)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_TOOL
    except ToolError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_TOOL


if __name__ == "__main__":
    sys.exit(main())
