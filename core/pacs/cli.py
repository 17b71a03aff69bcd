"""The ``--pacs`` options of ``python -m core.predict`` (argparse only: no network or DICOM imports here)."""

from __future__ import annotations

import argparse

__all__ = ["PacsUsageError", "add_arguments"]


class PacsUsageError(ValueError):
    """A command-line or settings mistake of a ``--pacs`` run (reported in one line, exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the PACS options to the ``core.predict`` parser."""
    group = parser.add_argument_group(
        "PACS (DICOMweb)",
        "Credentials come from HICXR_PACS_USER + HICXR_PACS_PASSWORD or HICXR_PACS_TOKEN, or the [pacs] table of "
        "the secrets file (HICXR_PACS_SECRETS, default .streamlit/secrets.toml), never from the command line.")
    group.add_argument("--pacs", metavar="URL", nargs="?", const="", default=None,
                       help="analyse the studies of this DICOMweb root instead of files (no URL: HICXR_PACS_URL or "
                            "the secrets file)")
    group.add_argument("--since", metavar="YYYYMMDD", help="studies on or after this date")
    group.add_argument("--until", metavar="YYYYMMDD", help="studies on or before this date")
    group.add_argument("--accession", metavar="A", help="the study with this accession number (any modality)")
    group.add_argument("--send", action="store_true",
                       help="store an SR (TID 1500) and the top finding's map (secondary capture) per image, "
                            "skipping studies that already hold this model version's SR")
