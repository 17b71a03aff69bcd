"""Pretraining the DenseNet121 backbone on every radiograph we may use, before the hierarchical training.

Two objectives, alone or together (``method``):

* ``supervised``: one softmax head per labelled source (e.g. Kermany's normal / bacterial / viral pneumonia,
  the COVID-19 collection's findings), cross-entropy on each image's own source head;
* ``simclr``: contrastive learning (SimCLR, Chen et al. 2020): two random views of each image, a projection
  MLP, and the NT-Xent loss, which pulls the two views of an image together and pushes other images away. It
  needs no labels, so unlabelled images (NIH *training* images, never val or test) contribute too;
* ``both``: the sum of the two losses on every batch.

The result is ``<out_dir>/<name>/backbone.safetensors``, a HiCXR model file whose ``features.*`` weights
``model.pretrained`` loads (its classifier is untrained and ignored). It is written once, when the last epoch is
done (a fresh start of the same run removes the previous one): a training started from it mid-run would otherwise
learn from an unfinished backbone while its model card, read at export, described the finished one. The run is
resumable (``--resume``, with ``train.stop_after_epochs`` to slice long CPU runs), logs one line per epoch to
``metrics.csv`` (loss terms, held-out accuracy of the supervised heads, held-out NT-Xent loss) and shows tqdm
progress on a terminal.

A fixed share of each labelled source's patients (``holdout``) is kept out of training to monitor the heads;
sources are read from label tables (``csv`` + ``path_column``, optional ``label_column`` and row ``filter``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from core.card_sections import PretrainingInfo, PretrainingSource
from core.checkpoints import epochs_done, load_training_state, save_training_state
from core.config import (
    AugmentConfig,
    ConfigError,
    OptimConfig,
    apply_overrides,
    build_dataclass,
    read_yaml,
    resolve_path,
)
from core.contract import MIN_INPUT_SIZE, OUTPUT_STRIDES, InputContract, contract_of
from core.data import build_augment
from core.distributed import pick_device
from core.model import HiCXRNet, ModelConfig, save_model
from core.optim import build_optimizer, build_scheduler
from core.patient_halves import FIT_HALF, HELD_HALF
from core.preprocess import normalize
from core.pretrain_data import (
    PretrainDataset,
    PretrainError,
    SimCLRConfig,
    SourceConfig,
    load_sources,
    simclr_view,
)
from core.progress import append_row, progress
from core.taxonomy import load_taxonomy

log = logging.getLogger(__name__)

METHODS = ("supervised", "simclr", "both")
METRIC_COLUMNS = ("epoch", "loss", "ce", "ntxent", "holdout_accuracy", "holdout_ntxent", "lr", "seconds")


@dataclass
class PretrainLoop:
    """Loop settings."""

    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    out_dir: str = "runs"
    stop_after_epochs: int | None = None
    holdout: float = 0.1
    channels_last: bool = True


@dataclass
class PretrainModel(InputContract):
    """Backbone input contract (:class:`core.contract.InputContract`, the downstream model's) and output stride.

    The pretraining recipe's defaults are the NIH recipe's (``configs/nih_base.yaml``): 64 px at stride 8.
    """

    input_size: int = MIN_INPUT_SIZE
    output_stride: int = 8


@dataclass
class PretrainConfig:
    """The whole configuration of one pretraining run."""

    name: str = "pretrain"
    method: str = "supervised"
    sources: list[dict[str, Any]] = field(default_factory=list)
    model: PretrainModel = field(default_factory=PretrainModel)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=1e-4))
    train: PretrainLoop = field(default_factory=PretrainLoop)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)

    def source_configs(self) -> list[SourceConfig]:
        """The sources as typed records."""
        return [build_dataclass(SourceConfig, s, f"sources[{i}]", self.name) for i, s in enumerate(self.sources)]

    def run_dir(self) -> Path:
        """``<train.out_dir>/<name>``."""
        return resolve_path(self.train.out_dir) / self.name


def load_pretrain_config(path: str | Path, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a pretraining YAML (``base:`` allowed), apply ``key=value`` overrides, validate.

    Raises:
        ConfigError: unknown key, wrong type, bad value (the message names it).
    """
    path = Path(path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    data = apply_overrides(data, overrides or [])
    config = build_dataclass(PretrainConfig, data, "", str(path))
    if config.method not in METHODS:
        raise ConfigError(f"{path}: method = {config.method!r}; expected one of {', '.join(METHODS)}")
    if not config.sources:
        raise ConfigError(f"{path}: 'sources' lists no image source")
    sources = config.source_configs()
    for i, s in enumerate(sources):
        if s.patient_half is not None and (s.patient_half not in (FIT_HALF, HELD_HALF) or not s.patient_column):
            raise ConfigError(f"{path}: sources[{i}] ({s.name!r}): patient_half must be {FIT_HALF} or {HELD_HALF} "
                              "and needs a patient_column")
    if config.method == "supervised" and not any(s.label_column for s in sources):
        raise ConfigError(f"{path}: method 'supervised' needs at least one source with a label_column")
    if config.model.output_stride not in OUTPUT_STRIDES or config.model.input_size < MIN_INPUT_SIZE:
        raise ConfigError(f"{path}: model.output_stride must be one of {OUTPUT_STRIDES} and model.input_size >= "
                          f"{MIN_INPUT_SIZE}")
    if config.train.batch_size < 2 or not 0.0 <= config.train.holdout < 0.5:
        raise ConfigError(f"{path}: train.batch_size must be >= 2 and train.holdout in [0, 0.5)")
    return config


# ----------------------------------------------------------------------------------------------- model


class PretrainNet(nn.Module):
    """A :class:`HiCXRNet` backbone with a projection MLP (SimCLR) and one linear head per labelled source."""

    def __init__(self, backbone: HiCXRNet, heads: dict[str, int], projection: tuple[int, int] | None) -> None:
        super().__init__()
        self.backbone = backbone
        k = backbone.num_features
        self.heads = nn.ModuleDict({_key(name): nn.Linear(k, n) for name, n in heads.items()})
        self.projection = None
        if projection is not None:
            hidden, out = projection
            self.projection = nn.Sequential(nn.Linear(k, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                            nn.Linear(hidden, out))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled post-ReLU features ``(B, 1024)``."""
        return torch.flatten(self.backbone.pool(self.backbone.forward_features(x)), 1)


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss for two batches of projections (row ``i`` of each is the same image)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)


# ------------------------------------------------------------------------------------------------ loop


def _losses(net: PretrainNet, batch: tuple, config: PretrainConfig, names: list[str],
            device: torch.device) -> dict[str, torch.Tensor]:
    a, b, source, target = batch
    mcfg = net.backbone.config
    a = normalize(a.to(device), mcfg)
    use_simclr = config.method in ("simclr", "both")
    x = torch.cat([a, normalize(b.to(device), mcfg)]) if use_simclr else a
    if config.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    feats = net.pooled(x)
    n = a.shape[0]
    out: dict[str, torch.Tensor] = {"ce": feats.new_zeros(()), "ntxent": feats.new_zeros(()),
                                    "correct": feats.new_zeros(()), "labelled": feats.new_zeros(())}
    if config.method in ("supervised", "both"):
        source, target = source.to(device), target.to(device)
        total = feats.new_zeros(())
        for k, name in enumerate(names):
            if name not in net.heads:
                continue
            sel = (source == k) & (target >= 0)
            if sel.any():
                logits = net.heads[name](feats[:n][sel])
                total = total + F.cross_entropy(logits, target[sel], reduction="sum")
                out["correct"] = out["correct"] + (logits.argmax(1) == target[sel]).sum()
                out["labelled"] = out["labelled"] + sel.sum()
        out["ce"] = total / out["labelled"].clamp_min(1)
    if use_simclr:
        z = net.projection(feats)
        out["ntxent"] = nt_xent(z[:n], z[n:], config.simclr.temperature)
    out["loss"] = out["ce"] + out["ntxent"]
    return out


def pretrain(config: PretrainConfig, resume: bool = False) -> Path | None:
    """Run (or resume) a pretraining run; returns the path of ``backbone.safetensors``, or None when this call
    stopped before the last epoch (``train.stop_after_epochs``; the backbone is written when the run finishes).

    Raises:
        PretrainError: bad sources, nothing to resume, or a loss that is not finite.
    """
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.train.seed)
    np.random.seed(config.train.seed)
    device = pick_device(config.train.device)
    run_dir = config.run_dir()
    ckpt = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    backbone_file = run_dir / "backbone.safetensors"
    partial_file = run_dir / "backbone.partial.safetensors"
    if not resume:  # a fresh start: nothing of an earlier run of this name may be read as this one's
        for stale in (run_dir / "metrics.csv", backbone_file, partial_file):
            stale.unlink(missing_ok=True)
    (run_dir / "config.yaml").write_text(_yaml(config), encoding="utf-8")
    show = sys.stderr.isatty()
    images = load_sources(config.source_configs(), config.model.input_size, config.train.holdout, show)
    names = [s.name for s in config.source_configs()]
    two_views = config.method in ("simclr", "both")
    if config.method == "supervised":  # only labelled images carry a training signal
        train_rows = np.flatnonzero(~images.holdout & (images.target >= 0))
    else:
        train_rows = np.flatnonzero(~images.holdout)
    held_rows = np.flatnonzero(images.holdout)
    size = config.model.input_size
    view = simclr_view(config.simclr, size) if two_views else build_augment(AugmentConfig())
    loader = DataLoader(PretrainDataset(images, train_rows, view, two_views), batch_size=config.train.batch_size,
                        shuffle=True, drop_last=len(train_rows) > config.train.batch_size,
                        generator=torch.Generator().manual_seed(config.train.seed))
    held_loader = DataLoader(PretrainDataset(images, held_rows, simclr_view(config.simclr, size) if two_views
                                             else nn.Identity(), two_views), batch_size=128, shuffle=False)

    taxonomy = load_taxonomy()
    m = config.model
    backbone = HiCXRNet(ModelConfig.for_taxonomy(
        taxonomy, **contract_of(m, InputContract), output_stride=m.output_stride,
        extra={"pretrain": config.name, "method": config.method}))
    heads = {name: len(c) for name, c in images.classes.items()} if config.method != "simclr" else {}
    projection = (config.simclr.hidden_dim, config.simclr.projection_dim) if two_views else None
    net = PretrainNet(backbone, heads, projection).to(device)
    if config.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config.optim, net)
    scheduler = build_scheduler(config.optim, optimizer, len(loader), config.train.epochs)
    loop = {"epoch": 0, "global_step": 0, "seconds": 0.0}
    if resume:
        if not (ckpt / "last.safetensors").is_file():
            raise PretrainError(f"cannot resume: {ckpt / 'last.safetensors'} is missing (was this run started?)")
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(ckpt / "last.safetensors")))
        loop = load_training_state(ckpt, optimizer, scheduler)
        log.info("resumed %s at epoch %d", run_dir, loop["epoch"])
    log.info("pretraining %s (%s): %d training / %d held-out images, %d steps per epoch, %s", config.name,
             config.method, len(train_rows), len(held_rows), len(loader), device)
    done_this_call = 0
    for epoch in range(loop["epoch"] + 1, config.train.epochs + 1):
        t0 = time.perf_counter()
        net.train()
        loader.generator.manual_seed(config.train.seed * 100_003 + epoch)
        sums = np.zeros(3)
        seen = 0
        log_every = max(1, len(loader) // 5)
        for step, batch in enumerate(progress(loader, show, desc=f"epoch {epoch}", unit="batch"), 1):
            parts = _losses(net, batch, config, names, device)
            if not torch.isfinite(parts["loss"]):
                raise PretrainError(f"loss became {parts['loss'].item()} at epoch {epoch}; lower optim.lr")
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip or 1e9)
            optimizer.step()
            scheduler.step()
            loop["global_step"] += 1
            b = batch[0].shape[0]
            sums += b * np.array([parts["loss"].item(), parts["ce"].item(), parts["ntxent"].item()])
            seen += b
            if not show and step % log_every == 0 and step < len(loader):
                log.info("epoch %d: batch %d/%d  loss %.4f  %.1f s/batch", epoch, step, len(loader), sums[0] / seen,
                         (time.perf_counter() - t0) / step)
        held = _evaluate_holdout(net, held_loader, config, names, device)
        row = {"epoch": epoch, "loss": sums[0] / seen, "ce": sums[1] / seen, "ntxent": sums[2] / seen, **held,
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 1)}
        loop["epoch"] = epoch
        loop["seconds"] += row["seconds"]
        _save_net(net, ckpt / "last.safetensors")
        save_training_state(ckpt, optimizer, scheduler, loop)
        append_row(run_dir / "metrics.csv", row, METRIC_COLUMNS)
        log.info("epoch %d/%d  loss %.4f (ce %.4f, nt-xent %.4f)  held-out accuracy %s  held-out nt-xent %s  %.0fs",
                 epoch, config.train.epochs, row["loss"], row["ce"], row["ntxent"],
                 _fmt(row["holdout_accuracy"]), _fmt(row["holdout_ntxent"]), row["seconds"])
        done_this_call += 1
        if config.train.stop_after_epochs and done_this_call >= config.train.stop_after_epochs:
            log.info("stopping after %d epoch(s) as asked; continue with --resume", done_this_call)
            break
    if loop["epoch"] < config.train.epochs:
        return None
    # Written whole under another name, then renamed: a reader never sees half a file.
    save_model(net.backbone, partial_file).replace(backbone_file)
    return backbone_file


@torch.no_grad()
def _evaluate_holdout(net: PretrainNet, loader: DataLoader, config: PretrainConfig, names: list[str],
                      device: torch.device) -> dict[str, float]:
    """Held-out accuracy of the supervised heads and held-out NT-Xent (NaN where not applicable)."""
    if len(loader.dataset) == 0:
        return {"holdout_accuracy": math.nan, "holdout_ntxent": math.nan}
    net.eval()
    correct = labelled = 0.0
    ntx, batches = 0.0, 0
    generator_state = torch.get_rng_state()
    torch.manual_seed(12345)  # the same held-out views every epoch
    for batch in loader:
        parts = _losses(net, batch, config, names, device)
        correct += float(parts["correct"])
        labelled += float(parts["labelled"])
        if batch[0].shape[0] > 1:
            ntx += float(parts["ntxent"])
            batches += 1
    torch.set_rng_state(generator_state)
    return {"holdout_accuracy": correct / labelled if labelled else math.nan,
            "holdout_ntxent": ntx / batches if batches and config.method != "supervised" else math.nan}


def _save_net(net: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(path))


def _fmt(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.4f}"


def _yaml(config: PretrainConfig) -> str:
    import yaml

    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def completed_epochs(config: PretrainConfig) -> int:
    """Epochs a run has finished (0 if it never saved a checkpoint)."""
    return epochs_done(config.run_dir() / "checkpoints")


def backbone_provenance(path: str | Path) -> PretrainingInfo:
    """What the model card records about the backbone ``model.pretrained`` names (``path`` as configured).

    The hash identifies the file (for safetensors the hash of its tensors, :func:`core.registry.tensor_sha256`, so
    it matches however the header names the run); the run's method, sources, epochs and last held-out accuracy are
    read from the ``config.yaml`` and ``metrics.csv`` that :func:`pretrain` writes beside ``backbone.safetensors``.
    A backbone that is not there, or not from ``pretrain.py`` (a torchvision checkpoint), is recorded with what is
    known, never refused: the model is already trained.
    """
    import csv
    import hashlib

    from core.registry import RegistryError, tensor_sha256

    file = resolve_path(path)
    info = PretrainingInfo(backbone=str(path))
    if not file.is_file():
        return info
    try:
        if file.suffix == ".safetensors":
            info.sha256 = tensor_sha256(file)
        else:
            with file.open("rb") as f:
                info.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    except (OSError, RegistryError):
        return info
    try:
        run = load_pretrain_config(file.parent / "config.yaml")
        with (file.parent / "metrics.csv").open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ConfigError, csv.Error):
        return info
    info.run, info.method = run.name, run.method
    info.sources = [PretrainingSource(name=s.name, patient_half=s.patient_half, attribution=s.attribution)
                    for s in run.source_configs()]
    if rows:
        info.epochs = int(rows[-1]["epoch"])
        try:  # "nan" when the run had no supervised head
            accuracy = float(rows[-1].get("holdout_accuracy") or "nan")
        except ValueError:
            accuracy = math.nan
        info.holdout_accuracy = round(accuracy, 4) if math.isfinite(accuracy) else None
    return info
