"""File bytes -> analyses or a message for the user, plus the per-session cache that keeps the network idle.

This is the dashboard's only contact with the inference engine. It owns no ML logic: decoding and hashing are
:meth:`core.inference.Predictor.decode`, analysis is :meth:`core.inference.Predictor.analyse_all`. What it adds is
error handling the UI can show as-is, and a cache keyed by (file hash, variant, MC samples, seed) so display
controls (sliders, colour maps, window/level, tab switches) never run the network again.

Uploads stay in memory: nothing here writes to disk.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from core.analysis import Analysis
from core.finite import invalid_analysis_message
from core.imaging import ImageError, XrayImage
from core.inference import Predictor, image_sha256
from core.model import ModelLoadError
from core.registry import RegistryError

logger = logging.getLogger("hicxr.dashboard")

GENERIC_ERROR = (
    "Something unexpected went wrong while analysing this image, so no result is shown. "
    "Try another file; if it keeps happening, tell the administrator (details are in the server log)."
)


@dataclass
class Outcome:
    """Result of analysing one file: analyses per variant, or the message to show instead.

    Attributes:
        analyses: ``variant -> Analysis`` (empty on error).
        image: The decoded image (with raw values for re-windowing), when decoding succeeded.
        error: A message written for the user, or ``None``.
        kind: ``"image"`` (the file), ``"model"`` (a variant could not be loaded), ``"internal"`` (a bug).
    """

    analyses: dict[str, Analysis] = field(default_factory=dict)
    image: XrayImage | None = None
    error: str | None = None
    kind: str | None = None

    @property
    def ok(self) -> bool:
        """True when every requested variant was analysed."""
        return self.error is None


def sha256(data: bytes) -> str:
    """Hex SHA-256 of the file bytes (the engine's own hash): the cache key and the hash in each analysis."""
    return image_sha256(data)


def analyse_bytes(
    predictor: Predictor,
    data: bytes,
    variants: Sequence[str],
    mc_samples: int,
    *,
    seed: int = 0,
    image: XrayImage | None = None,
) -> Outcome:
    """Decode ``data`` (unless ``image`` is given) and analyse it with every variant in ``variants``.

    Never raises for anything a file or a weights folder can cause: the returned :class:`Outcome` carries the
    message. Unexpected exceptions are logged (type and traceback, never image content or file names) and
    reported with :data:`GENERIC_ERROR`.
    """
    try:
        digest = sha256(data)
        if image is None:
            image, digest = predictor.decode(data, keep_raw=True)
        for name in variants:
            predictor.load(name)
        analyses = predictor.analyse_all(image, list(variants), mc_samples=mc_samples, seed=seed, sha256=digest)
        invalid = invalid_analysis_message(analyses)  # no view may render a NaN (plotly refuses NaN sizes)
        if invalid is not None:
            return Outcome(image=image, error=invalid, kind="image")
        return Outcome(analyses=analyses, image=image)
    except ImageError as exc:
        return Outcome(image=image, error=str(exc), kind="image")
    except (RegistryError, ModelLoadError) as exc:
        return Outcome(image=image, error=f"The model could not be loaded: {exc}", kind="model")
    except Exception:  # noqa: BLE001 - the UI must show a message, never a traceback
        logger.exception("unexpected error while analysing an image")
        return Outcome(image=image, error=GENERIC_ERROR, kind="internal")


# The cached copy of an image keeps this longer side at most: the viewer shows 1,024 px (image_view) and zooms to
# twice that; the model's input is re-made from the file bytes when a variant is added later (see AnalysisCache).
DISPLAY_COPY_MAX_SIDE = 2048
# What one session's cache may hold: display copies (pixels and raw) and analyses (maps and display copies).
DEFAULT_CACHE_BYTES = 256 * 2**20


def display_copy(image: XrayImage, max_side: int = DISPLAY_COPY_MAX_SIDE) -> XrayImage:
    """``image`` with its pixels (and raw values) box-averaged to at most ``max_side`` a side; the metadata (the
    file's own size, window, warnings) is unchanged. Returns ``image`` itself when it is already that small."""
    h, w = image.pixels.shape
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))

    def shrink(values: np.ndarray) -> np.ndarray:
        small = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F").resize(size, Image.Resampling.BOX)
        return np.ascontiguousarray(np.asarray(small, dtype=np.float32))

    if image.raw is None:
        return dataclasses.replace(image, pixels=np.clip(shrink(image.pixels), 0.0, 1.0))
    # Pillow releases the GIL while it resizes: the two copies shrink side by side (0.11 s -> 0.06 s for a
    # 2,128 x 2,000 film on two cores).
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="hicxr-shrink") as pool:
        pixels, raw = pool.map(shrink, (image.pixels, image.raw))
    return dataclasses.replace(image, pixels=np.clip(pixels, 0.0, 1.0), raw=raw)


def _nbytes(*arrays: np.ndarray | None) -> int:
    return sum(int(a.nbytes) for a in arrays if a is not None)


class AnalysisCache:
    """Per-session LRU of decoded images and analyses, keyed by file hash, bounded in bytes.

    The cache holds what the views need, never the original pixels: a display copy of each image (at most
    :data:`DISPLAY_COPY_MAX_SIDE` a side, raw values included for window/level) and each analysis with its image
    replaced by that copy. The full-resolution decode lives only until its analysis is done; a variant added
    later decodes the file bytes again (the model's input is made from the full image, as in the CLI).

    Attributes:
        network_runs: How many times the network was actually run (a test hook: display controls must not
            increase it).
    """

    def __init__(self, max_analyses: int = 32, max_images: int = 4, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        """Keep at most ``max_analyses`` analyses and ``max_images`` images, and at most ``max_bytes`` in all."""
        self.max_analyses = max_analyses
        self.max_images = max_images
        self.max_bytes = max_bytes
        self._analyses: OrderedDict[tuple, Analysis] = OrderedDict()
        self._images: OrderedDict[str, XrayImage] = OrderedDict()
        self._errors: OrderedDict[str, str] = OrderedDict()
        self._full: tuple[str, XrayImage] | None = None  # the last full decode, until its analysis is done
        self.network_runs = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached arrays (an image shared by an analysis and its display copy counts twice)."""
        images = sum(_nbytes(im.pixels, im.raw) for im in self._images.values())
        analyses = sum(_nbytes(a.image, a.cams, a.relative_cams) for a in self._analyses.values())
        return images + analyses

    def image(self, data: bytes, digest: str, predictor: Predictor) -> XrayImage | str:
        """The display copy of the image for these bytes, or the decoding error message (both cached)."""
        if digest in self._errors:
            return self._errors[digest]
        if digest in self._images:
            self._images.move_to_end(digest)
            return self._images[digest]
        decoded = self._decode(data, digest, predictor)
        if isinstance(decoded, str):
            return decoded
        shown = display_copy(decoded)
        self._full = (digest, decoded) if shown is not decoded else None
        self._images[digest] = shown
        self._trim()
        return shown

    def _decode(self, data: bytes, digest: str, predictor: Predictor) -> XrayImage | str:
        try:
            return predictor.decode(data, keep_raw=True)[0]
        except ImageError as exc:
            self._errors[digest] = str(exc)
            _trim(self._errors, 16)
            return str(exc)
        except Exception:  # noqa: BLE001 - a decoder bug must not take the page down
            logger.exception("unexpected error while decoding an image")
            return GENERIC_ERROR

    def analyses(
        self,
        predictor: Predictor,
        data: bytes,
        digest: str,
        variants: Sequence[str],
        mc_samples: int,
        seed: int = 0,
    ) -> Outcome:
        """Analyses of these bytes by ``variants``, running the network only for the ones not cached yet."""
        shown = self.image(data, digest, predictor)
        if isinstance(shown, str):
            return Outcome(error=shown, kind="image")
        found: dict[str, Analysis] = {}
        missing: list[str] = []
        for name in variants:
            key = (digest, name, int(mc_samples), int(seed))
            if key in self._analyses:
                self._analyses.move_to_end(key)
                found[name] = self._analyses[key]
            else:
                missing.append(name)
        if not missing:
            self._full = None
        else:
            full: XrayImage | str = shown
            if self._full is not None and self._full[0] == digest:
                full = self._full[1]
            elif shown.pixels.shape != (shown.metadata.height, shown.metadata.width):
                full = self._decode(data, digest, predictor)  # the model reads the full image, never the copy
                if isinstance(full, str):
                    return Outcome(error=full, kind="image")
            outcome = analyse_bytes(predictor, data, missing, mc_samples, seed=seed, image=full)
            self._full = None
            self.network_runs += 1
            if not outcome.ok:
                return Outcome(analyses={}, image=shown, error=outcome.error, kind=outcome.kind)
            for name, analysis in outcome.analyses.items():
                kept = dataclasses.replace(analysis, image=shown.pixels)  # the display copy, for overlays
                self._analyses[(digest, name, int(mc_samples), int(seed))] = kept
                found[name] = kept
            self._trim()
        return Outcome(analyses={name: found[name] for name in variants}, image=shown)

    def _trim(self) -> None:
        """Drop the least recently used entries past the count limits, then past the byte budget (always keeping
        the newest image and its analyses, which the page is about to show)."""
        _trim(self._images, self.max_images)
        _trim(self._analyses, self.max_analyses)
        while self.nbytes > self.max_bytes and (len(self._analyses) > 1 or len(self._images) > 1):
            newest = next(reversed(self._images), None)
            old_analysis = next((k for k in self._analyses if k[0] != newest), None)
            if old_analysis is not None:
                del self._analyses[old_analysis]
            elif len(self._images) > 1:
                self._images.popitem(last=False)
            else:
                break


def _trim(store: OrderedDict, limit: int) -> None:
    while len(store) > limit:
        store.popitem(last=False)
