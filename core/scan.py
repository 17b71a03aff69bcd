"""Expand command-line paths into the files to analyse, with a reason for every entry that is not analysed.

Nothing is skipped in silence: a folder scan returns one :class:`Entry` per directory entry it meets, either to
analyse (``reason is None``) or with the reason it is not analysed (unsupported type, hidden, broken link, link
loop, FIFO/socket/device, unreadable folder). A file named on the command line is always tried, whatever its name;
a FIFO named there is refused by the reader without being opened.

Folders are walked in name order, following symbolic links to folders; a link that leads back to a folder already
searched is reported as a loop instead of being followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.imaging.reader import SPECIAL_FILE_KINDS

__all__ = ["IMAGE_SUFFIXES", "Entry", "MissingPathError", "scan_paths"]

# Taken in folders by extension, plus files without one (DICOMs often have none). Every format the reader opens
# is here, so a folder of GIF, JPEG 2000 or PGM files is analysed (or refused with the reader's reason).
IMAGE_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".jfi", ".jls", ".dcm", ".dicom", ".dic", ".bmp", ".dib", ".tif",
    ".tiff", ".webp", ".gif", ".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx", ".pgm", ".ppm", ".pbm", ".pnm",
})  # fmt: skip



class MissingPathError(Exception):
    """A path named on the command line does not exist at all (a mistyped name, not a broken link)."""


@dataclass(frozen=True)
class Entry:
    """One path met by the scan: analysed when ``reason`` is None, else reported with ``reason``."""

    path: Path
    reason: str | None = None


def scan_paths(paths: Iterable[str | Path]) -> list[Entry]:
    """Files and folders (recursively, in name order) -> entries in argument order, each path once.

    Raises:
        MissingPathError: a path given does not exist (``lstat`` fails), so the command line is wrong.
    """
    entries: dict[Path, Entry] = {}
    visited: set[tuple[int, int]] = set()
    for raw in paths:
        path = Path(raw)
        try:
            path.lstat()
        except FileNotFoundError:
            raise MissingPathError(f"{raw}: no such file or folder") from None
        except OSError as exc:
            entries.setdefault(path, Entry(path, f"Skipped: it could not be examined ({exc.strerror})."))
            continue
        target, reason = _follow(path)
        if reason is None and target is not None and stat.S_ISDIR(target.st_mode):
            for entry in _walk(path, target, visited):
                entries.setdefault(entry.path, entry)
        else:
            entries.setdefault(path, Entry(path, reason))
    return list(entries.values())


def _follow(path: Path) -> tuple[os.stat_result | None, str | None]:
    """The stat of what ``path`` leads to, or the reason it leads nowhere (broken link, loop)."""
    try:
        return path.stat(), None
    except FileNotFoundError:
        return None, "Skipped: broken link (the file it points to does not exist)."
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "Skipped: symbolic link loop (it leads back to itself)."
        return None, f"Skipped: it could not be examined ({exc.strerror})."


def _walk(folder: Path, info: os.stat_result, visited: set[tuple[int, int]]) -> Iterator[Entry]:
    key = (info.st_dev, info.st_ino)
    if key in visited:
        yield Entry(folder, "Skipped: this folder was already searched (a link leads back to it, a loop).")
        return
    visited.add(key)
    try:
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it)
    except OSError as exc:
        yield Entry(folder, f"Skipped: the folder could not be read ({exc.strerror}).")
        return
    for name in names:
        path = folder / name
        if name.startswith("."):
            yield Entry(path, "Skipped: hidden file or folder (its name starts with a dot).")
            continue
        target, reason = _follow(path)
        if target is None:
            yield Entry(path, reason)
        elif stat.S_ISDIR(target.st_mode):
            yield from _walk(path, target, visited)
        elif stat.S_ISREG(target.st_mode):
            yield Entry(path, _type_reason(path))
        else:
            kind = next((k for test, k in SPECIAL_FILE_KINDS if test(target.st_mode)), "not a regular file")
            yield Entry(path, f"Skipped: {kind}, not a regular file.")


def _type_reason(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix == "" or suffix in IMAGE_SUFFIXES:
        return None
    return (f"Skipped: '{suffix}' files are not an image type HiCXR reads "
            "(DICOM, PNG, JPEG, JPEG 2000, JPEG-LS, TIFF, GIF, WebP, BMP, PGM/PPM).")
