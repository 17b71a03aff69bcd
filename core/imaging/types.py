"""The decoded image and its technical metadata: what every reader returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.imaging.window import WindowFunction, apply_window

__all__ = ["ImageMetadata", "XrayImage"]


@dataclass(frozen=True)
class ImageMetadata:
    """Technical description of a decoded image. Never contains patient, study, date or institution data.

    ``modality``, ``view_position``, ``body_part`` and ``photometric`` (DICOM) hold only DICOM defined terms, or
    ``"other"`` when the file says something else (see :mod:`core.imaging.coded`): these header fields are free
    text in practice, and a site may have written a name or a record number there. The manufacturer is not kept.
    ``age_group`` is ``"child"`` or ``"adult"`` from the DICOM PatientAge; the age itself is never kept.
    ``field_mm`` is the imaged field (width, height) in mm from the DICOM pixel spacing, when the file gives one.
    """

    format: str
    width: int
    height: int
    bits_stored: int | None = None
    photometric: str | None = None
    modality: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    transfer_syntax: str | None = None
    window: tuple[float, float] | None = None
    inverted: bool = False
    warnings: tuple[str, ...] = ()
    age_group: str | None = None
    field_mm: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the metadata as JSON-serialisable builtins (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["window"] = list(self.window) if self.window is not None else None
        out["warnings"] = list(self.warnings)
        out["field_mm"] = list(self.field_mm) if self.field_mm is not None else None
        return out


@dataclass(frozen=True, eq=False)
class XrayImage:
    """A decoded radiograph.

    ``pixels`` is float32, shape (H, W), in [0, 1], 0 = black, MONOCHROME2 convention (lungs dark, bone bright).

    With ``read_image(..., keep_raw=True)``, ``raw`` holds the pre-VOI values (DICOM: after the modality LUT;
    PNG/JPEG: the stored integer levels, luma for colour) and ``default_window``/``window_function`` reproduce
    ``pixels`` from it, so a viewer can re-window with :meth:`rewindow` without decoding the file again.
    """

    pixels: np.ndarray
    metadata: ImageMetadata
    raw: np.ndarray | None = None
    default_window: tuple[float, float] | None = None
    window_function: WindowFunction = "LINEAR"

    def rewindow(self, center: float, width: float) -> np.ndarray:
        """Return the image displayed with another window, inverted exactly as ``pixels`` was.

        Raises ``ValueError`` if the image was read without ``keep_raw=True``.
        """
        if self.raw is None:
            raise ValueError("rewindow() needs the raw pixels: read the image with read_image(..., keep_raw=True)")
        out = apply_window(self.raw, center, width, function=self.window_function)
        if self.metadata.inverted:
            np.subtract(1.0, out, out=out)
        return np.ascontiguousarray(out, dtype=np.float32)
