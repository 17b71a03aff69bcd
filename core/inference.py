"""The inference engine: image -> :class:`~core.analysis.Analysis` for one or several model variants.

One image costs one backbone pass. Everything else comes from the post-ReLU feature map ``A`` (B x K x h x w) of
that pass, through the head's own weights ``W`` (L x K) and bias ``b``:

* deterministic probability: ``sigmoid((W @ GAP(A) + b) / T)`` (dropout off);
* Monte-Carlo dropout: ``N`` Bernoulli masks on the pooled features (where the model's dropout sits), drawn from a
  private ``torch.Generator`` seeded per image, so a result depends only on (image, variant, N, seed), not on the
  batch it ran in or on other threads; mean and population standard deviation (ddof=0) of the ``N`` sigmoids;
* CAMs for every label: ``relu(sum_k W_lk A_k)``, each scaled by its own maximum (all-zero maps stay zero). For a
  ReLU -> GAP -> linear head this is Grad-CAM at the post-ReLU layer up to a positive factor (``1/(h*w)``);
  ``tests/test_explain.py`` checks that against pytorch-grad-cam.

``T`` is the model card's per-label temperature when ``calibration.applied`` is true, else 1. The model is never
switched between train and eval mode and no hooks are registered, so one :class:`Predictor` can serve many threads
(the dashboard shares one); all tensor work runs under ``torch.inference_mode``.

Violations are reported on the MC means at the threshold (0.5): parent below it and child above it, the same rule
as :func:`core.metrics.violation_rate`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.analysis import Analysis, Violation
from core.imaging import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError, XrayImage, read_image
from core.model import HiCXRNet, ModelConfig, load_model
from core.preprocess import normalize, resize_square
from core.registry import RegistryError, Variant, default_variant, get_variant, list_variants, resolve_weights_dir
from core.taxonomy import Taxonomy, load_taxonomy

Source = bytes | bytearray | memoryview | str | os.PathLike | XrayImage

DEFAULT_MC_SAMPLES = 10
DEFAULT_SEED = 0
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class HeadOutputs:
    """What the head gives for a batch of feature maps (NumPy, float32).

    Attributes:
        logits: ``(B, L)`` deterministic logits after temperature scaling.
        probability: ``(B, L)`` sigmoid of ``logits``.
        mc_mean: ``(B, L)`` mean of the MC dropout probabilities.
        mc_std: ``(B, L)`` population standard deviation of the MC probabilities.
        cams: ``(B, L, h, w)`` per-label CAMs in [0, 1].
        relative_cams: ``(B, L, h, w)`` the same maps without the ReLU, min-max scaled (or ``None``).
        timings: seconds spent in ``mc`` and ``cam`` for the whole batch.
    """

    logits: np.ndarray
    probability: np.ndarray
    mc_mean: np.ndarray
    mc_std: np.ndarray
    cams: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    relative_cams: np.ndarray | None = None


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


@dataclass(frozen=True)
class LoadedVariant:
    """A variant held by a :class:`Predictor`: the shared eval-mode model and what inference needs from its card."""

    name: str
    model: HiCXRNet
    card: dict[str, Any]
    temperature: torch.Tensor | None
    variant: Variant | None = None

    @property
    def config(self) -> ModelConfig:
        """The model's config (input contract)."""
        return self.model.config


def find_violations(
    probabilities: Sequence[float] | np.ndarray, taxonomy: Taxonomy, threshold: float = DEFAULT_THRESHOLD
) -> list[Violation]:
    """Edges whose child is above ``threshold`` while the parent is below it, in taxonomy edge order."""
    probs = np.asarray(probabilities, dtype=float)
    if probs.shape != (taxonomy.num_labels,):
        raise ValueError(f"expected {taxonomy.num_labels} probabilities, got shape {probs.shape}")
    out = []
    for parent, child in taxonomy.edges:
        p, c = probs[taxonomy.index(parent)], probs[taxonomy.index(child)]
        if p < threshold < c:
            out.append(Violation(parent, child, float(p), float(c)))
    return out


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor, relative: bool = False) -> torch.Tensor:
    """Per-label CAMs ``(B, L, h, w)`` in [0, 1] from post-ReLU features ``(B, K, h, w)`` and head weights ``(L, K)``.

    Default: ``relu(sum_k W_lk A_k)`` scaled by each map's own maximum (equal to Grad-CAM at this layer); a map with
    no positive value stays all zero. ``relative=True``: the map without the ReLU, min-max scaled (a constant map
    gives zeros), which still ranks regions when a label's evidence is negative everywhere.
    """
    return _scale_maps(torch.einsum("lk,bkhw->blhw", weight, features), relative)


def _scale_maps(raw: torch.Tensor, relative: bool) -> torch.Tensor:
    """Signed class activation ``(B, L, h, w)`` -> ReLU/max-scaled (Grad-CAM) or min-max-scaled (relative) maps."""
    tiny = torch.finfo(raw.dtype).tiny
    if relative:
        low = raw.amin(dim=(2, 3), keepdim=True)
        span = raw.amax(dim=(2, 3), keepdim=True) - low
        return torch.where(span > 0, (raw - low) / span.clamp_min(tiny), torch.zeros_like(raw))
    cams = torch.relu(raw)
    peak = cams.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, cams / peak.clamp_min(tiny), torch.zeros_like(cams))


def dropout_masks(n: int, k: int, p: float, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, k)`` inverted-dropout masks (0 or ``1/(1-p)``) drawn from a private generator seeded with ``seed``."""
    if p <= 0.0:
        return torch.ones(n, k, device=device)
    if p >= 1.0:
        return torch.zeros(n, k, device=device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    keep = torch.rand(n, k, generator=generator, device=device) >= p
    return keep.to(torch.float32) / (1.0 - p)


def head_outputs(
    model: HiCXRNet,
    features: torch.Tensor,
    mc_samples: int = DEFAULT_MC_SAMPLES,
    seed: int = DEFAULT_SEED,
    temperature: torch.Tensor | None = None,
    with_cams: bool = True,
) -> HeadOutputs:
    """Probabilities, MC dropout statistics and CAMs from one backbone pass (see the module docstring).

    Args:
        model: The model whose head (``pool``, ``dropout.p``, ``classifier``) is used; it is not modified.
        features: ``model.forward_features(x)``, shape ``(B, K, h, w)``.
        mc_samples: Number of dropout masks ``N`` (>= 1).
        seed: Seed of each image's mask generator (the same masks for every image of the batch).
        temperature: ``(L,)`` per-label temperatures to divide logits by, or ``None``.
        with_cams: Compute CAMs (else ``cams`` has shape ``(B, L, 0, 0)``).
    """
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    weight, bias = model.classifier.weight, model.classifier.bias
    scale = None if temperature is None else temperature.to(features.device, features.dtype)

    def calibrated(logits: torch.Tensor) -> torch.Tensor:
        return logits if scale is None else logits / scale

    with torch.inference_mode():
        pooled = torch.flatten(model.pool(features), 1)  # (B, K)
        logits = calibrated(torch.nn.functional.linear(pooled, weight, bias))
        t0 = time.perf_counter()
        masks = dropout_masks(mc_samples, pooled.shape[1], float(model.dropout.p), seed, features.device)
        # (N, B, K) masked features -> (N, B, L) probabilities; all images share the seed's N masks.
        mc_logits = calibrated(torch.nn.functional.linear(masks[:, None, :] * pooled[None], weight, bias))
        mc_probs = torch.sigmoid(mc_logits)
        mc_mean, mc_std = mc_probs.mean(0), mc_probs.std(0, correction=0)
        t1 = time.perf_counter()
        relative = None
        if with_cams:
            raw = torch.einsum("lk,bkhw->blhw", weight, features)  # once for both kinds of map
            cams = _scale_maps(raw, relative=False)
            relative = _scale_maps(raw, relative=True).float().cpu().numpy()
        else:
            cams = features.new_zeros((features.shape[0], weight.shape[0], 0, 0))
        t2 = time.perf_counter()
        return HeadOutputs(
            logits=logits.float().cpu().numpy(),
            probability=torch.sigmoid(logits).float().cpu().numpy(),
            mc_mean=mc_mean.float().cpu().numpy(),
            mc_std=mc_std.float().cpu().numpy(),
            cams=cams.float().cpu().numpy(),
            timings={"mc": t1 - t0, "cam": t2 - t1},
            relative_cams=relative,
        )


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
        cls, model: HiCXRNet, name: str = "model", card: dict[str, Any] | None = None, **kwargs: Any
    ) -> Predictor:
        """A predictor around an in-memory model (tests, benchmarks, notebooks); the model is put in eval mode."""
        predictor = cls(variants=[], **kwargs)
        predictor.add_model(name, model, card or {})
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
        """Load variant ``name`` from the weights folder (no-op if already loaded) and return it."""
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
        variant = get_variant(name, self.weights_dir)
        model = load_model(variant.weights_path, self.taxonomy, device=self.device)
        return self._register(name, model, variant.card, variant)

    def add_model(self, name: str, model: HiCXRNet, card: dict[str, Any] | None = None) -> LoadedVariant:
        """Serve an in-memory model under ``name``; its labels must follow the predictor's taxonomy."""
        if list(model.config.labels) != list(self.taxonomy.labels):
            raise ValueError(f"model {name!r} outputs {len(model.config.labels)} labels that do not match the taxonomy")
        model = model.to(self.device).eval()
        return self._register(name, model, card or {}, None)

    def _register(self, name: str, model: HiCXRNet, card: dict[str, Any], variant: Variant | None) -> LoadedVariant:
        for p in model.parameters():
            p.requires_grad_(False)
        calibration = card.get("calibration")
        temperature = None
        if isinstance(calibration, dict) and calibration.get("applied"):
            temps = calibration.get("temperature")
            if not isinstance(temps, list) or len(temps) != len(model.config.labels) or min(temps) <= 0:
                raise RegistryError(f"variant {name!r}: calibration.temperature needs one positive number per label")
            temperature = torch.tensor(temps, dtype=torch.float32, device=self.device)
        loaded = LoadedVariant(name=name, model=model, card=card, temperature=temperature, variant=variant)
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
        config = self.get(variant).config
        return normalize(torch.from_numpy(resize_square(pixels, config.input_size))[None, None], config).to(
            self.device
        )

    # ---------------------------------------------------------------------------------------- decoding

    def decode(self, source: Source) -> tuple[XrayImage, str]:
        """Decode an input (bytes, path or XrayImage) and hash it; raises :class:`~core.imaging.ImageError`."""
        if isinstance(source, XrayImage):
            return source, image_sha256(source)
        if isinstance(source, (bytes, bytearray, memoryview)):
            return read_image(source, max_bytes=self.max_bytes, max_pixels=self.max_pixels), image_sha256(source)
        if isinstance(source, (str, os.PathLike)):
            image = read_image(source, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
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
    ) -> dict[str, Analysis]:
        """Analyse one image with several variants (all loaded ones if ``None``), decoding it once."""
        t0 = time.perf_counter()
        image, sha = self.decode(source)
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
    ) -> Iterator[BatchItem]:
        """Analyse many inputs in batches, yielding one :class:`BatchItem` per input, in order.

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
            if len(pending) >= batch_size:
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

    def analyse_batch(self, sources: Iterable[Source], variants: Sequence[str] | None = None,
                      **kwargs: Any) -> list[BatchItem]:
        """:meth:`iter_analyses` collected into a list."""
        return list(self.iter_analyses(sources, variants, **kwargs))

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
            key = (config.input_size, config.in_channels, config.mean, config.std)
            if key not in inputs:
                t0 = time.perf_counter()
                batch = torch.stack([torch.from_numpy(resize_square(im.pixels, config.input_size)) for im in images])
                inputs[key] = (normalize(batch[:, None], config).to(self.device), time.perf_counter() - t0)
            x, preprocess_s = inputs[key]
            t0 = time.perf_counter()
            with torch.inference_mode():
                features = loaded.model.forward_features(x)
            backbone_s = time.perf_counter() - t0
            out = head_outputs(loaded.model, features, mc, seed, loaded.temperature)
            n = len(images)
            for i, image in enumerate(images):
                timings = {
                    "decode": decode_s[i],
                    "preprocess": preprocess_s / n,
                    "backbone": backbone_s / n,
                    "mc": out.timings["mc"] / n,
                    "cam": out.timings["cam"] / n,
                }
                timings["total"] = sum(timings.values())
                results[i][loaded.name] = Analysis(
                    model_id=loaded.name,
                    labels=list(config.labels),
                    probability=out.probability[i],
                    mc_mean=out.mc_mean[i],
                    mc_std=out.mc_std[i],
                    mc_samples=mc,
                    cams=out.cams[i],
                    relative_cams=None if out.relative_cams is None else out.relative_cams[i],
                    image=image.pixels,
                    image_metadata=image.metadata.to_dict(),
                    warnings=list(image.metadata.warnings),
                    violations=find_violations(out.mc_mean[i], self.taxonomy, threshold),
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

    def explain(
        self, image: XrayImage | np.ndarray, label: str, variant: str | None = None, method: str = "gradcam"
    ) -> np.ndarray:
        """A pytorch-grad-cam map ``(h, w)`` in [0, 1] for one label, on a private copy of the model.

        Slower than the one-pass CAMs of :meth:`analyse` (a backward pass, and a model copy); use it for the
        other methods (``gradcam++``, ``hirescam``, ``scorecam``...). See :func:`core.explain.cam_with_method`.
        """
        from core.explain import cam_with_method  # keeps pytorch-grad-cam off the import path of plain inference

        loaded = self.get(variant)
        return cam_with_method(loaded.model, self.model_input(image, loaded.name), self.taxonomy.index(label), method)
