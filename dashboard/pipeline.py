"""File bytes -> analyses or a message for the user, plus the per-session cache that keeps the network idle.

This is the dashboard's only contact with the inference engine. It owns no ML logic: decoding and hashing are
:meth:`core.inference.Predictor.decode`, analysis is :meth:`core.inference.Predictor.analyse_all`. What it adds is
error handling the UI can show as-is, and a cache keyed by (file hash, variant, MC samples, seed) so display
controls (sliders, colour maps, window/level, tab switches) never run the network again.

Uploads stay in memory: nothing here writes to disk.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

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


class AnalysisCache:
    """Per-session LRU of decoded images and analyses, keyed by file hash.

    Attributes:
        network_runs: How many times the network was actually run (a test hook: display controls must not
            increase it).
    """

    def __init__(self, max_analyses: int = 32, max_images: int = 4) -> None:
        """Keep at most ``max_analyses`` analyses and ``max_images`` decoded images (the biggest items)."""
        self.max_analyses = max_analyses
        self.max_images = max_images
        self._analyses: OrderedDict[tuple, Analysis] = OrderedDict()
        self._images: OrderedDict[str, XrayImage] = OrderedDict()
        self._errors: OrderedDict[str, str] = OrderedDict()
        self.network_runs = 0

    def image(self, data: bytes, digest: str, predictor: Predictor) -> XrayImage | str:
        """The decoded image for these bytes, or the decoding error message (both cached)."""
        if digest in self._errors:
            return self._errors[digest]
        if digest in self._images:
            self._images.move_to_end(digest)
            return self._images[digest]
        try:
            decoded = predictor.decode(data, keep_raw=True)[0]
        except ImageError as exc:
            self._errors[digest] = str(exc)
            _trim(self._errors, 16)
            return str(exc)
        except Exception:  # noqa: BLE001 - a decoder bug must not take the page down
            logger.exception("unexpected error while decoding an image")
            return GENERIC_ERROR
        self._images[digest] = decoded
        _trim(self._images, self.max_images)
        return decoded

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
        decoded = self.image(data, digest, predictor)
        if isinstance(decoded, str):
            return Outcome(error=decoded, kind="image")
        found: dict[str, Analysis] = {}
        missing: list[str] = []
        for name in variants:
            key = (digest, name, int(mc_samples), int(seed))
            if key in self._analyses:
                self._analyses.move_to_end(key)
                found[name] = self._analyses[key]
            else:
                missing.append(name)
        if missing:
            outcome = analyse_bytes(predictor, data, missing, mc_samples, seed=seed, image=decoded)
            self.network_runs += 1
            if not outcome.ok:
                return outcome
            for name, analysis in outcome.analyses.items():
                self._analyses[(digest, name, int(mc_samples), int(seed))] = analysis
            _trim(self._analyses, self.max_analyses)
            found.update(outcome.analyses)
        return Outcome(analyses={name: found[name] for name in variants}, image=decoded)


def _trim(store: OrderedDict, limit: int) -> None:
    while len(store) > limit:
        store.popitem(last=False)
