"""Batch command line: analyse files and folders of chest X-rays with one or more model variants.

Run ``python -m core.predict --help``. Output rows carry the path as given on the command line, the variant, the
error (if any) and, per label, the MC mean probability and its standard deviation; nothing from the image headers
that could identify a patient is written (image metadata is the technical allow-list of :mod:`core.imaging`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from PIL import Image
from tqdm import tqdm

from core.inference import BatchItem, Predictor
from core.model import ModelLoadError
from core.registry import RegistryError
from core.serialize import error_row, wide_fields, wide_row, write_csv

# In folders, files are taken by these extensions, plus files without one (DICOMs often have none). A file named
# explicitly on the command line is always tried, whatever its name.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic", ".bmp", ".tif", ".tiff", ".webp"})

EPILOG = """\
Folders are searched recursively for PNG/JPEG/DICOM/... files (by extension, plus files without an extension);
hidden files are skipped. A file that cannot be read gets its message in the 'error' column and the run goes on.

Output (--out): .csv = one row per file and variant: file, variant, error, then for each taxonomy label
'<label>' (MC-dropout mean probability) and '<label>_std'; .json = a list of Analysis.to_dict() records with the
'file' added (failed files: {"file", "variant", "error"}). Without --out the CSV goes to standard output.

--cams DIR writes one PNG contact sheet per file and variant: every label's CAM over the image, captioned with the
label and its MC mean, named <index>_<file stem>_<variant>.png.

Exit status: 0 all files analysed, 1 at least one file failed, 2 usage error (bad option, missing path, unknown
variant, no weights).
"""


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit status 2."""


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into the list of files to analyse, keeping argument order."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix == "")
            )
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise UsageError(f"{raw}: no such file or folder")
    return list(dict.fromkeys(out))


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m core.predict`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m core.predict",
        description="Analyse chest X-rays (PNG, JPEG, DICOM) with HiCXR model variants.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    parser.add_argument("--weights-dir", default="weights",
                        help="folder of <variant>.safetensors + <variant>.json (relative: to the repository root)")
    parser.add_argument("--variant", action="append", dest="variants", metavar="NAME",
                        help="variant to run (repeatable); 'all' for every variant; default: the default variant")
    parser.add_argument("--mc", type=int, default=10, metavar="N", help="Monte-Carlo dropout samples (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dropout masks (default 0)")
    parser.add_argument("--threshold", type=float, default=0.5, help="threshold for hierarchy violations")
    parser.add_argument("--batch-size", type=int, default=8, help="images per backbone batch (default 8)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="results file, .csv or .json (default: CSV to stdout)")
    parser.add_argument("--cams", type=Path, metavar="DIR", help="write a CAM contact sheet per file and variant")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _variants_arg(values: Sequence[str] | None) -> str | list[str] | None:
    if not values:
        return None
    if "all" in values:
        return "all"
    return list(values)


def _csv_rows(item: BatchItem, file: str, variants: list[str]) -> list[dict[str, Any]]:
    if item.error is not None:
        return [error_row(file, v, item.error) for v in variants]
    return [wide_row(a, file) for a in item.analyses.values()]


def _json_records(item: BatchItem, file: str, variants: list[str]) -> list[dict[str, Any]]:
    if item.error is not None:
        return [{"file": file, "variant": v, "error": item.error} for v in variants]
    return [{"file": file, **a.to_dict()} for a in item.analyses.values()]


def _write_cams(item: BatchItem, folder: Path, path: Path) -> None:
    from core.explain import contact_sheet  # matplotlib only when asked for

    for name, a in item.analyses.items():
        Image.fromarray(contact_sheet(a)).save(folder / f"{item.index:04d}_{path.stem}_{name}.png")


def run(args: argparse.Namespace, stdout: TextIO) -> int:
    """Execute a parsed command line; returns the exit status."""
    if args.mc < 1:
        raise UsageError(f"--mc must be at least 1, got {args.mc}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out is not None and args.out.suffix.lower() not in (".csv", ".json"):
        raise UsageError(f"--out must end in .csv or .json, got {args.out.name!r}")
    files = collect_files(args.paths)
    if not files:
        raise UsageError("no image files found in the given paths")
    try:
        predictor = Predictor(args.weights_dir, _variants_arg(args.variants), mc_samples=args.mc, seed=args.seed,
                              threshold=args.threshold)
    except (RegistryError, ModelLoadError) as exc:
        raise UsageError(str(exc)) from None
    variants = predictor.variant_names
    labels = list(predictor.taxonomy.labels)
    if args.cams is not None:
        args.cams.mkdir(parents=True, exist_ok=True)

    csv_rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    failed = 0
    items = predictor.iter_analyses(files, batch_size=args.batch_size)
    for item in tqdm(items, total=len(files), unit="image", disable=args.no_progress, file=sys.stderr):
        file = str(files[item.index])
        failed += item.error is not None
        csv_rows.extend(_csv_rows(item, file, variants))
        records.extend(_json_records(item, file, variants))
        if args.cams is not None and item.error is None:
            _write_cams(item, args.cams, files[item.index])

    if args.out is not None and args.out.suffix.lower() == ".json":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1))
    else:
        fields = wide_fields(labels)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("w", newline="", encoding="utf-8") as f:
                write_csv(f, fields, csv_rows)
        else:
            write_csv(stdout, fields, csv_rows)
    print(f"{len(files) - failed} of {len(files)} file(s) analysed with {', '.join(variants)}"
          + (f"; {failed} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 some file failed, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args, sys.stdout)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
