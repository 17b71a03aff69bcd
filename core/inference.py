"""The inference engine: image -> :class:`~core.analysis.Analysis` for one or several model variants.

One image costs one backbone pass; probabilities, Monte-Carlo dropout statistics and every label's CAM come from
its feature map (:mod:`core.head`). A loaded variant owns its calibration (the model card's temperatures, when
applied) and, for C-HMCNN models, its max constraint. The model is never switched between train and eval mode and
no hooks are registered, so one :class:`Predictor` can serve many threads (the dashboard shares one); all tensor
work runs under ``torch.inference_mode``.

Violations are reported on the MC means with the taxonomy's one rule (:meth:`core.taxonomy.Taxonomy.violations`:
parent below the threshold, child above it), the rule the metrics and the loss's hard penalty use too.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.analysis import Analysis, find_violations
from core.calls import CallRule, card_evidence, decide_calls
from core.card import ModelCard
from core.contract import DEFAULT_MC_SAMPLES
from core.head import head_outputs
from core.imaging import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError, XrayImage, read_image
from core.loaded_variant import LoadedVariant
from core.model import HiCXRNet, constraint_matrix, load_model_and_extras
from core.ood import FeatureReference, PopulationClassifier, image_warnings, is_technical_note, population_checks
from core.preprocess import Fit, normalize, to_model_input
from core.registry import (
    CARD_SUFFIX,
    WEIGHTS_SUFFIX,
    RegistryError,
    Variant,
    default_variant,
    get_variant,
    list_variants,
    load_variant,
    resolve_weights_dir,
)
from core.taxonomy import Taxonomy, load_taxonomy

Source = bytes | bytearray | memoryview | str | os.PathLike | XrayImage

DEFAULT_SEED = 0
DEFAULT_THRESHOLD = 0.5
# Decoded pixels a batch may hold before it is analysed (see Predictor.iter_analyses): a 50 MP image takes 200 MB.
DEFAULT_MAX_BATCH_BYTES = 256 * 2**20


@dataclass
class BatchItem:
    """One input of :meth:`Predictor.iter_analyses`: its analyses per variant, or the error that stopped it.

    Attributes:
        index: Position of the input in the sequence given.
        source: The input as given (path, bytes or XrayImage).
        analyses: Variant name -> :class:`Analysis` (empty when ``error`` is set).
        error: A message for the user when the input could not be read, else ``None``.
    """

    index: int
    source: Any
    analyses: dict[str, Analysis]
    error: str | None = None


def image_sha256(source: Source) -> str:
    """SHA-256 of the input bytes (file content for paths; the float32 pixel buffer for a decoded image)."""
    if isinstance(source, XrayImage):
        return hashlib.sha256(np.ascontiguousarray(source.pixels, dtype=np.float32).tobytes()).hexdigest()
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.sha256(source).hexdigest()
    with open(source, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Predictor:
    """Loads model variants once and turns images into :class:`Analysis` records; safe to share between threads.

    Example:
        >>> predictor = Predictor("weights")               # the default variant
        >>> analysis = predictor.analyse("image.dcm")      # bytes, a path or an XrayImage
        >>> analyses = predictor.analyse_all(png_bytes)    # every loaded variant, image decoded once
    """

    def __init__(
        self,
        weights_dir: str | Path = "weights",
        variants: str | Sequence[str] | None = None,
        *,
        mc_samples: int = DEFAULT_MC_SAMPLES,
        seed: int = DEFAULT_SEED,
        threshold: float = DEFAULT_THRESHOLD,
        device: str | torch.device = "cpu",
        taxonomy: Taxonomy | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        """Load ``variants`` from ``weights_dir`` (relative paths are relative to the repository root).

        Args:
            weights_dir: Folder of ``<name>.safetensors`` + ``<name>.json`` pairs.
            variants: ``None`` for the default variant, ``"all"`` for every usable one, or names.
            mc_samples: Default number of MC dropout samples.
            seed: Default seed of the dropout masks.
            threshold: Default threshold for violations.
            device: Torch device to run on.
            taxonomy: Label taxonomy the models must follow (the packaged one by default).
            max_bytes: Largest accepted input file.
            max_pixels: Largest accepted image (pixels), checked before decoding.

        Raises:
            RegistryError: no usable variant, or a named variant is unknown or broken (the message says why).
            ModelLoadError: a weights file does not match the taxonomy or the architecture.
        """
        self.taxonomy = taxonomy or load_taxonomy()
        self.weights_dir = resolve_weights_dir(weights_dir)
        self.mc_samples = int(mc_samples)
        self.seed = int(seed)
        self.threshold = float(threshold)
        self.device = torch.device(device)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedVariant] = {}
        for name in self._resolve_names(variants):
            self.load(name)

    @classmethod
    def from_model(
        cls, model: HiCXRNet, name: str = "model", card: ModelCard | None = None, **kwargs: Any
    ) -> Predictor:
        """A predictor around an in-memory model (tests, benchmarks, notebooks); the model is put in eval mode."""
        predictor = cls(variants=[], **kwargs)
        predictor.add_model(name, model, card)
        return predictor

    # ------------------------------------------------------------------------------------------ variants

    def _resolve_names(self, variants: str | Sequence[str] | None) -> list[str]:
        if variants is None:
            name = default_variant(self.weights_dir)
            if name is None:
                raise RegistryError(f"no usable model variant in {self.weights_dir}")
            return [name]
        if isinstance(variants, str):
            if variants == "all":
                names = [v.name for v in list_variants(self.weights_dir)]
                if not names:
                    raise RegistryError(f"no usable model variant in {self.weights_dir}")
                return names
            return [variants]
        return list(dict.fromkeys(variants))

    def load(self, name: str) -> LoadedVariant:
        """Load variant ``name`` (or the variant with that alias) from the weights folder, once; return it."""
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
        weights = self.weights_dir / f"{name}{WEIGHTS_SUFFIX}"
        if weights.is_file() and weights.with_suffix(CARD_SUFFIX).is_file():
            # The common case opens the weights file once: config, model tensors and the OOD reference together.
            model, extra = load_model_and_extras(weights, self.taxonomy, self.device)
            variant = load_variant(self.weights_dir, name, config=model.config)
        else:  # an alias, or a broken variant: the registry resolves it or names the problem
            variant = get_variant(name, self.weights_dir)
            model, extra = load_model_and_extras(variant.weights_path, self.taxonomy, self.device)
        return self._register(name, model, variant.card, variant, FeatureReference.from_tensors(extra),
                              PopulationClassifier.from_tensors(extra))

    def add_model(self, name: str, model: HiCXRNet, card: ModelCard | None = None) -> LoadedVariant:
        """Serve an in-memory model under ``name``; its labels must follow the predictor's taxonomy."""
        if list(model.config.labels) != list(self.taxonomy.labels):
            raise ValueError(f"model {name!r} outputs {len(model.config.labels)} labels that do not match the taxonomy")
        model = model.to(self.device).eval()
        return self._register(name, model, card, None)

    def _register(self, name: str, model: HiCXRNet, card: ModelCard | None,
                  variant: Variant | None, ood: FeatureReference | None = None,
                  population: PopulationClassifier | None = None) -> LoadedVariant:
        for p in model.parameters():
            p.requires_grad_(False)
        temperature = None
        temps = card.temperature() if card is not None else None
        if temps is not None:
            if len(temps) != len(model.config.labels):
                raise RegistryError(f"variant {name!r}: calibration.temperature needs one number per label")
            temperature = torch.from_numpy(temps).to(self.device)
        descendants = constraint_matrix(model.config, self.taxonomy)
        rule, evidence = card_evidence(card) if card is not None else (CallRule(), None)
        loaded = LoadedVariant(name=name, model=model, card=card, temperature=temperature,
                               descendants=None if descendants is None else descendants.to(self.device),
                               variant=variant, ood=ood, population=population, call_rule=rule,
                               call_evidence=evidence)
        with self._lock:
            self._loaded.setdefault(name, loaded)
            return self._loaded[name]

    @property
    def variant_names(self) -> list[str]:
        """Names of the loaded variants, in load order (the first is the default for :meth:`analyse`)."""
        with self._lock:
            return list(self._loaded)

    def get(self, name: str | None = None) -> LoadedVariant:
        """The loaded variant ``name`` (the first loaded one if ``None``); ``KeyError`` lists the loaded names."""
        with self._lock:
            if not self._loaded:
                raise KeyError("this predictor has no model loaded")
            if name is None:
                return next(iter(self._loaded.values()))
            if name not in self._loaded:
                raise KeyError(f"variant {name!r} is not loaded; loaded: {', '.join(self._loaded)}")
            return self._loaded[name]

    def model_input(self, image: XrayImage | np.ndarray, variant: str | None = None) -> torch.Tensor:
        """The ``(1, C, S, S)`` model input for a decoded image, following the variant's preprocessing contract."""
        pixels = image.pixels if isinstance(image, XrayImage) else np.asarray(image, dtype=np.float32)
        return to_model_input(pixels, self.get(variant).config).to(self.device)

    # ---------------------------------------------------------------------------------------- decoding

    def decode(self, source: Source, keep_raw: bool = False) -> tuple[XrayImage, str]:
        """Decode an input (bytes, path or XrayImage) and hash it; raises :class:`~core.imaging.ImageError`.

        The hash is of the file bytes (of the pixels for an already decoded image); ``keep_raw`` keeps the
        pre-window values so a viewer can re-window (see :meth:`core.imaging.XrayImage.rewindow`).
        """
        if isinstance(source, XrayImage):
            return source, image_sha256(source)
        limits = {"max_bytes": self.max_bytes, "max_pixels": self.max_pixels, "keep_raw": keep_raw}
        if isinstance(source, (bytes, bytearray, memoryview)):
            return read_image(source, **limits), image_sha256(source)
        if isinstance(source, (str, os.PathLike)):
            image = read_image(source, **limits)
            try:
                return image, image_sha256(source)
            except OSError as exc:  # removed between decoding and hashing
                raise ImageError(f"The file {Path(source).name!r} could not be read ({exc.strerror}).") from None
        raise TypeError(f"expected bytes, a path or an XrayImage, not {type(source).__name__}")

    # ---------------------------------------------------------------------------------------- analysis

    def analyse(
        self,
        source: Source,
        variant: str | None = None,
        *,
        mc_samples: int | None = None,
        seed: int | None = None,
        threshold: float | None = None,
    ) -> Analysis:
        """Analyse one image with one variant (the first loaded if ``None``).

        Raises:
            ImageError: the input cannot be read as a radiograph (message written for the user).
            KeyError: ``variant`` is not loaded.
        """
        name = self.get(variant).name
        return self.analyse_all(source, [name], mc_samples=mc_samples, seed=seed, threshold=threshold)[name]

    def analyse_all(
        self,
        source: Source,
        variants: Sequence[str] | None = None,
        *,
        mc_samples: int | None = None,
        seed: int | None = None,
        threshold: float | None = None,
        sha256: str | None = None,
    ) -> dict[str, Analysis]:
        """Analyse one image with several variants (all loaded ones if ``None``), decoding it once.

        ``sha256``: the file hash of an image decoded earlier by :meth:`decode` (the record then carries it
        rather than a hash of the pixels).
        """
        t0 = time.perf_counter()
        image, sha = self.decode(source)
        if sha256 is not None and isinstance(source, XrayImage):
            sha = sha256
        decode_s = time.perf_counter() - t0
        items = self._analyse_decoded([image], [sha], [decode_s], variants, mc_samples, seed, threshold)
        return items[0]

    def iter_analyses(
        self,
        sources: Iterable[Source],
        variants: Sequence[str] | None = None,
        *,
        batch_size: int = 8,
        mc_samples: int | None = None,
        seed: int | None = None,
        threshold: float | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> Iterator[BatchItem]:
        """Analyse many inputs in batches, yielding one :class:`BatchItem` per input, in order.

        A batch closes at ``batch_size`` images or once its decoded images hold ``max_batch_bytes`` (whichever
        comes first): eight 50-megapixel images would otherwise sit in memory together (1.6 GB of float32).

        An input that cannot be decoded yields an item with ``error`` set, and the run goes on. Results equal
        :meth:`analyse_all` on each input (masks are seeded per image), whatever the batch size.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pending: list[tuple[int, Any, XrayImage, str, float]] = []

        def flush() -> Iterator[BatchItem]:
            if not pending:
                return
            batch = list(pending)
            pending.clear()
            try:
                results = self._analyse_decoded(
                    [p[2] for p in batch], [p[3] for p in batch], [p[4] for p in batch],
                    variants, mc_samples, seed, threshold,
                )
            except KeyError:
                raise  # an unknown variant is the caller's mistake, not the images'
            except Exception:  # noqa: BLE001 - one image the model cannot handle must not sink the batch
                yield from self._analyse_one_by_one(batch, variants, mc_samples, seed, threshold)
                return
            for (index, src, *_), analyses in zip(batch, results, strict=True):
                yield BatchItem(index, src, analyses)

        for index, src in enumerate(sources):
            t0 = time.perf_counter()
            try:
                image, sha = self.decode(src)
            except ImageError as exc:
                yield from flush()
                yield BatchItem(index, src, {}, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - one bad file must never sink the batch
                yield from flush()
                yield BatchItem(index, src, {}, f"The file could not be read: unexpected {type(exc).__name__} in "
                                              "the decoder (the file is probably damaged).")
                continue
            pending.append((index, src, image, sha, time.perf_counter() - t0))
            if len(pending) >= batch_size or sum(p[2].pixels.nbytes for p in pending) >= max_batch_bytes:
                yield from flush()
        yield from flush()

    def _analyse_one_by_one(self, batch: list[tuple[int, Any, XrayImage, str, float]],
                            variants: Sequence[str] | None, mc_samples: int | None, seed: int | None,
                            threshold: float | None) -> Iterator[BatchItem]:
        """Fallback after a batch failed: each image alone, so only the one(s) at fault get an error."""
        for index, src, image, sha, decode_s in batch:
            try:
                analyses = self._analyse_decoded([image], [sha], [decode_s], variants, mc_samples, seed, threshold)
            except Exception as exc:  # noqa: BLE001 - this image's error, reported in its item
                yield BatchItem(index, src, {}, f"The image could not be analysed: unexpected {type(exc).__name__} "
                                                "in the model (the image may hold values it cannot handle).")
            else:
                yield BatchItem(index, src, analyses[0])

    def _analyse_decoded(
        self,
        images: list[XrayImage],
        hashes: list[str],
        decode_s: list[float],
        variants: Sequence[str] | None,
        mc_samples: int | None,
        seed: int | None,
        threshold: float | None,
    ) -> list[dict[str, Analysis]]:
        mc = self.mc_samples if mc_samples is None else int(mc_samples)
        seed = self.seed if seed is None else int(seed)
        threshold = self.threshold if threshold is None else float(threshold)
        chosen = [self.get(n) for n in (variants if variants is not None else self.variant_names)]
        results: list[dict[str, Analysis]] = [{} for _ in images]
        inputs: dict[tuple, tuple[torch.Tensor, float]] = {}  # variants sharing an input contract share the tensor
        for loaded in chosen:
            config = loaded.config
            fit = Fit.of(config)
            key = (config.input_size, config.in_channels, config.mean, config.std, fit)
            if key not in inputs:
                t0 = time.perf_counter()
                batch = torch.stack([torch.from_numpy(fit.apply(im.pixels, config.input_size)) for im in images])
                inputs[key] = (normalize(batch[:, None], config).to(self.device), time.perf_counter() - t0)
            x, preprocess_s = inputs[key]
            t0 = time.perf_counter()
            with torch.inference_mode():
                features = loaded.model.forward_features(x)
            backbone_s = time.perf_counter() - t0
            out = head_outputs(loaded.model, features, mc, seed, loaded.temperature, descendants=loaded.descendants)
            n = len(images)
            scores = loaded.ood.score(out.pooled) if loaded.ood is not None else None
            kids = loaded.population.score(out.pooled) if loaded.population is not None else None
            for i, image in enumerate(images):
                timings = {
                    "decode": decode_s[i],
                    "preprocess": preprocess_s / n,
                    "backbone": backbone_s / n,
                    "mc": out.timings["mc"] / n,
                    "cam": out.timings["cam"] / n,
                }
                timings["total"] = sum(timings.values())
                checks = population_checks(
                    image.metadata, None if scores is None else (float(scores[i]), loaded.ood),
                    None if kids is None else (float(kids[i]), loaded.population))
                results[i][loaded.name] = Analysis(
                    model_id=loaded.name,
                    labels=list(config.labels),
                    probability=out.probability[i],
                    mc_mean=out.mc_mean[i],
                    mc_std=out.mc_std[i],
                    mc_samples=mc,
                    cams=out.cams[i],
                    cam_labels=[config.labels[j] for j in out.cam_source[i]],
                    relative_cams=None if out.relative_cams is None else out.relative_cams[i],
                    image=image.pixels,
                    image_metadata=image.metadata.to_dict(),
                    warnings=image_warnings(image.metadata, image.pixels.shape, config.input_size, checks=checks),
                    population_checks=checks,
                    notes=[n for n in image.metadata.warnings if is_technical_note(n)],
                    calls=decide_calls(out.mc_mean[i], config.labels, loaded.call_evidence, self.taxonomy,
                                       loaded.not_learnt, [c.name for c in checks], loaded.call_rule),
                    operating_points=loaded.operating_points,
                    not_learnt=loaded.not_learnt,
                    ood_score=None if scores is None else float(scores[i]),
                    violations=find_violations(out.mc_mean[i], self.taxonomy, threshold, skip=loaded.not_learnt),
                    timings=timings,
                    image_sha256=hashes[i],
                    threshold=threshold,
                    extra={
                        "seed": seed,
                        "input_size": config.input_size,
                        "dropout": float(loaded.model.dropout.p),
                        "temperature_applied": loaded.temperature is not None,
                        "batch_size": n,
                    },
                )
        return results
