"""The training loop: HBCE loss, AdamW/Adam, warmup+cosine or plateau schedule, early stopping, checkpoints, DDP.

One call, :func:`train`, runs a whole experiment described by a :class:`core.config.Config`:

* data from :mod:`core.data` (train split augmented, val/test not), penalties from the TRAIN labels;
* the loss :func:`core.loss.build_loss` builds from ``config.loss`` (HBCE with ``penalty: none`` (plain masked
  BCE), ``fixed`` or ``data_driven`` and ``violation: hard`` or ``soft``; or C-HMCNN's MCLoss), minimising its
  :class:`core.loss.LossTerms` total and logging its terms;
* early stopping on the validation macro AUROC over the labels with at least ``train.min_val_positives`` known
  positives (and one known negative) in val -- on small validation sets the others' AUROCs are noise;
* files in ``<out_dir>/<name>/``: ``config.yaml`` (resolved), ``metrics.csv`` (one row per epoch),
  ``checkpoints/{best,last}.safetensors`` (model, via :func:`core.model.save_model`),
  ``checkpoints/last_optim.safetensors`` (optimizer tensors and RNG states) and ``checkpoints/last_state.json``
  (epoch, best metric, patience counter, scheduler state). No pickle anywhere, so ``--resume`` reads only
  safetensors and JSON.
* DDP when launched by ``torchrun`` (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA, a ``DistributedSampler``,
  identical seeds on every rank, validation predictions gathered from all ranks (sampler padding removed), and
  only rank 0 writes files or logs.

AMP (bfloat16 autocast, or float16 with a gradient scaler where bfloat16 is unsupported) is used on CUDA only.
Process groups live in :mod:`core.distributed`, checkpoint files in :mod:`core.checkpoints`, optimisers and
schedules in :mod:`core.optim`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from core.card_sections import PenaltyRow
from core.checkpoints import CheckpointError, LoopState, load_checkpoint, save_checkpoint
from core.config import Config, resolve_path
from core.contract import contract_of
from core.data import XrayDataset, build_datasets
from core.distributed import (
    DeviceError,
    DistInfo,
    broadcast_buffers,
    setup_distributed,
)
from core.epoch import TrainError, train_one_epoch
from core.evaluate import predict_logits
from core.labels import LabelSet
from core.loss import build_loss
from core.metrics import per_label_auroc
from core.model import HiCXRNet, ModelConfig, build_model, constraint_matrix, load_model, output_probabilities
from core.optim import build_optimizer, build_scheduler
from core.progress import append_row, progress
from core.source_prior import source_priors
from core.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "train_bce", "train_penalty", "val_loss", "val_macro_auroc", "lr", "seconds")


# ------------------------------------------------------------------------------------------- components


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy; the same on every rank."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def model_config_for(config: Config, taxonomy: Taxonomy) -> ModelConfig:
    """The :class:`ModelConfig` stored with the weights."""
    return ModelConfig.for_taxonomy(
        taxonomy, **contract_of(config.model),
        extra={"run": config.name, "loss": config.loss.penalty, "violation": config.loss.violation},
    )


# ----------------------------------------------------------------------------------------------- epochs


def selected_val_labels(labels: LabelSet, min_positives: int) -> list[int]:
    """Labels whose validation AUROC is worth monitoring: >= ``min_positives`` known positives and a negative."""
    known = labels.mask
    pos = ((labels.targets == 1) & known).sum(axis=0)
    neg = ((labels.targets == 0) & known).sum(axis=0)
    return [j for j in range(labels.targets.shape[1]) if pos[j] >= min_positives and neg[j] >= 1]


def validation_metrics(logits: np.ndarray, labels: LabelSet, loss_fn: nn.Module,
                       selected: list[int], descendants: torch.Tensor | None = None) -> dict[str, float]:
    """Validation loss (same loss as training) and macro AUROC over the ``selected`` labels.

    ``descendants``: the model's max-constraint matrix (C-HMCNN), so the AUROC is that of its real outputs.
    """
    device = next(iter(loss_fn.buffers())).device
    z = torch.from_numpy(logits).to(device)
    y = torch.from_numpy(labels.targets).to(device)
    m = torch.from_numpy(labels.mask).to(device)
    with torch.no_grad():
        val_loss = float(loss_fn(z, y, m))
    probs = output_probabilities(torch.from_numpy(logits), descendants).numpy()
    aurocs = per_label_auroc(labels.targets[:, selected], probs[:, selected], labels.mask[:, selected])
    defined = [a for a in aurocs if a is not None]
    return {"val_loss": val_loss, "val_macro_auroc": float(np.mean(defined)) if defined else float("nan")}


def make_loader(dataset: XrayDataset, config: Config, info: DistInfo, train: bool) -> DataLoader:
    """DataLoader (with a DistributedSampler under DDP); shuffled and drop_last for training."""
    sampler = None
    if info.distributed:
        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=train,
                                     seed=config.train.seed, drop_last=False)
    generator = torch.Generator().manual_seed(config.train.seed + 7919 * info.rank)
    workers = config.data.num_workers
    # drop_last only when the training set has more than one batch: a tiny run must still take a step.
    bs = config.train.batch_size if train else config.train.eval_batch_size
    per_rank = math.ceil(len(dataset) / info.world_size)
    return DataLoader(
        dataset, batch_size=bs, shuffle=train and sampler is None, sampler=sampler, num_workers=workers,
        pin_memory=info.device.type == "cuda", drop_last=train and per_rank > bs, generator=generator,
        persistent_workers=workers > 0,
    )


# -------------------------------------------------------------------------------------------------- run


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    config: Config
    run_dir: Path
    model: HiCXRNet
    best_path: Path
    state: LoopState
    penalty_table: list[PenaltyRow]
    datasets: dict[str, XrayDataset]
    val_labels_monitored: list[str]
    history: list[dict[str, float]]
    info: DistInfo
    last_model: HiCXRNet


def _save_val_logits(folder: Path, epoch: int, logits: np.ndarray, labels: LabelSet) -> None:
    """``<folder>/epoch_NNN.npy`` (rows in the val set's order) and, once, ``<folder>/rows.txt`` (paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"epoch_{epoch:03d}.npy", logits.astype(np.float32), allow_pickle=False)
    rows = folder / "rows.txt"
    if not rows.exists():
        rows.write_text("\n".join(labels.paths) + "\n", encoding="utf-8")


def _tensorboard(run_dir: Path, enabled: bool):
    """A SummaryWriter when TensorBoard is installed (it is optional and not in requirements), else None."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _epochs(start: int, stop: int, show: bool) -> Iterator[int]:
    yield from progress(range(start, stop + 1), show, desc="epochs", unit="epoch", initial=start - 1,
                         total=stop)


@dataclass
class _Run:
    """What a run holds while its epochs go by: the model (and its DDP wrapper and EMA), optimiser, loaders, state."""

    model: HiCXRNet
    ddp_model: nn.Module
    ema: torch.optim.swa_utils.AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    train_loader: DataLoader
    val_loader: DataLoader
    state: LoopState

    @property
    def eval_model(self) -> nn.Module:
        """The weights validated and kept: the EMA when there is one."""
        return self.ddp_model if self.ema is None else self.ema.module


def _prepare_run_dir(config: Config, resume: bool, info: DistInfo) -> Path:
    """``<out_dir>/<name>`` with the resolved config written (rank 0); a fresh run forgets an old history."""
    run_dir = config.run_dir()
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and (run_dir / "metrics.csv").exists():
            (run_dir / "metrics.csv").unlink()
        config.save(run_dir / "config.yaml")
    return run_dir


def _source_offsets(config: Config, train_labels: LabelSet, info: DistInfo) -> torch.Tensor | None:
    """The training rows' per-source logit offsets (``loss.source_offsets``), logged per source; None when off."""
    if not config.loss.source_offsets:
        return None
    try:
        priors = source_priors(train_labels, config.data.source_column, config.loss.source_prior_strength)
    except KeyError as exc:
        raise TrainError(f"loss.source_offsets: {exc.args[0]} (data.source_column)") from None
    if info.is_main:
        log.info("per-source logit offsets (strength %g), largest per source:\n  %s",
                 config.loss.source_prior_strength, "\n  ".join(priors.summary(train_labels.labels)))
    return torch.from_numpy(priors.row_offsets()).to(info.device)


def _monitored(val_ds: XrayDataset, config: Config) -> list[int]:
    """The validation labels early stopping watches; :class:`TrainError` when there is none."""
    selected = selected_val_labels(val_ds.labels, config.train.min_val_positives)
    if not selected:
        raise TrainError(
            f"no label has >= {config.train.min_val_positives} known positives in the validation split "
            f"({len(val_ds)} images); lower train.min_val_positives or use a larger validation split"
        )
    return selected


def _build_run(config: Config, info: DistInfo, taxonomy: Taxonomy, datasets: dict[str, XrayDataset],
               run_dir: Path, resume: bool) -> _Run:
    """Model, EMA, loaders, optimiser and schedule, restored from the last checkpoint when resuming."""
    seed_everything(config.train.seed)  # identical initial weights on every rank and every (re)start
    # A relative backbone path is read from the repository root, like every other path of a config.
    backbone = resolve_path(config.model.pretrained) if config.model.pretrained else None
    model = build_model(model_config_for(config, taxonomy), backbone).to(info.device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = make_loader(datasets["train"], config, info, train=True)
    val_loader = make_loader(datasets["val"], config, info, train=False)
    optimizer = build_optimizer(config.optim, model)
    scheduler = build_scheduler(config.optim, optimizer, len(train_loader), config.train.epochs)
    state = LoopState(seed=config.train.seed)
    ema = None
    if config.train.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.train.ema_decay), use_buffers=True)
    if resume:
        try:
            state = load_checkpoint(run_dir, model, optimizer, scheduler, taxonomy, ema)
        except CheckpointError as exc:
            raise TrainError(str(exc)) from None
        log.info("resumed %s at epoch %d (best val macro AUROC %.4f at epoch %d)",
                 run_dir, state.epoch, state.best_metric, state.best_epoch)
    else:
        torch.manual_seed(config.train.seed + 7919 * info.rank)  # augmentation streams differ per rank
    use_scaler = (info.device.type == "cuda" and config.train.amp and not torch.cuda.is_bf16_supported())
    ddp_model: nn.Module = model
    if info.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    return _Run(model, ddp_model, ema, optimizer, scheduler, torch.amp.GradScaler("cuda") if use_scaler else None,
                train_loader, val_loader, state)


def _run_epoch(run: _Run, epoch: int, config: Config, info: DistInfo, loss_fn: nn.Module, val_ds: XrayDataset,
               selected: list[int], descendants: torch.Tensor | None, run_dir: Path, show: bool,
               offsets: torch.Tensor | None = None) -> dict[str, float]:
    """Train one epoch, validate, step a plateau schedule; the epoch's metrics row."""
    t0 = time.perf_counter()
    run.state.epoch = epoch
    loader = run.train_loader
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif loader.generator is not None:
        # Shuffle order depends on (seed, epoch) only, so a resumed run sees the same batches as an unbroken one.
        loader.generator.manual_seed(config.train.seed * 100_003 + epoch)
    row: dict[str, float] = {"epoch": epoch}
    row.update(train_one_epoch(run.ddp_model, loader, loss_fn, run.optimizer, run.scheduler, config, info,
                               run.scaler, run.state, show, run.ema, offsets))
    broadcast_buffers(run.model, info)
    if run.ema is not None:
        broadcast_buffers(run.ema.module, info)
    logits, idx = predict_logits(run.eval_model, run.val_loader, info, config.train.amp)
    row.update(validation_metrics(logits, val_ds.labels.subset(idx), loss_fn, selected, descendants))
    if config.train.save_val_logits and info.is_main:
        _save_val_logits(run_dir / "val_logits", epoch, logits, val_ds.labels.subset(idx))
        if run.ema is not None:  # the raw weights too, so one CV run measures what the EMA adds
            raw, raw_idx = predict_logits(run.ddp_model, run.val_loader, info, config.train.amp)
            _save_val_logits(run_dir / "val_logits_raw", epoch, raw, val_ds.labels.subset(raw_idx))
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(row["val_macro_auroc"])
    row["lr"] = run.optimizer.param_groups[0]["lr"]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    run.state.seconds += row["seconds"]
    return row


def _keep_best(state: LoopState, row: dict[str, float], fixed_epoch: int | None) -> bool:
    """Update the best epoch (the fixed one, or the best validation AUROC so far); whether this epoch is it."""
    metric, epoch = row["val_macro_auroc"], int(row["epoch"])
    if fixed_epoch is not None:
        improved = epoch == fixed_epoch
    else:
        improved = not math.isnan(metric) and metric > state.best_metric
    if improved:
        state.best_metric, state.best_epoch, state.epochs_since_best = metric, epoch, 0
    else:
        state.epochs_since_best += 1
    return improved


def _record_epoch(run_dir: Path, run: _Run, row: dict[str, float], improved: bool, writer: Any,
                  config: Config) -> None:
    """metrics.csv, the checkpoints, TensorBoard and the log line of one epoch (rank 0 only)."""
    append_row(run_dir / "metrics.csv", row, METRIC_COLUMNS)
    save_checkpoint(run_dir, run.model, run.optimizer, run.scheduler, run.state, best=improved, ema=run.ema)
    if writer is not None:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, row["epoch"])
    log.info("epoch %d/%d  loss %.4f (bce %.4f, penalty %.4f)  val loss %.4f  val macro AUROC %.4f%s  "
             "lr %.2e  %.0fs", row["epoch"], config.train.epochs, row["train_loss"], row["train_bce"],
             row["train_penalty"], row["val_loss"], row["val_macro_auroc"], " *" if improved else "", row["lr"],
             row["seconds"])


def _stop_now(config: Config, state: LoopState, epochs_this_call: int, fixed_epoch: int | None,
              info: DistInfo) -> bool:
    """Whether to end the loop: asked to pause (``train.stop_after_epochs``) or early stopping."""
    if config.train.stop_after_epochs and epochs_this_call >= config.train.stop_after_epochs:
        if info.is_main:
            log.info("stopping after %d epoch(s) as asked (train.stop_after_epochs); continue with --resume",
                     epochs_this_call)
        return True
    if fixed_epoch is None and state.epochs_since_best >= config.train.patience:
        if info.is_main:
            log.info("early stop: no val AUROC gain for %d epochs (best %.4f at epoch %d)",
                     config.train.patience, state.best_metric, state.best_epoch)
        return True
    return False


def train(config: Config, resume: bool = False, taxonomy: Taxonomy | None = None,
          datasets: dict[str, XrayDataset] | None = None) -> TrainResult:
    """Run (or resume) the experiment described by ``config``; see the module docstring.

    Args:
        config: The resolved configuration.
        resume: Continue from ``<run_dir>/checkpoints/last*`` (epoch numbering continues).
        taxonomy: Output taxonomy (the packaged one by default).
        datasets: Pre-built ``{"train", "val", "test"}`` datasets (tests, benchmarks); built from the config
            otherwise.

    Returns:
        :class:`TrainResult` with the best model loaded (float32, eval mode).
    """
    taxonomy = taxonomy or load_taxonomy()
    try:
        info = setup_distributed(config.train.device)
    except DeviceError as exc:
        raise TrainError(str(exc)) from None
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    run_dir = _prepare_run_dir(config, resume, info)
    datasets = datasets or build_datasets(config, taxonomy, progress=info.is_main and sys.stderr.isatty())
    train_ds, val_ds = datasets["train"], datasets["val"]
    selected = _monitored(val_ds, config)
    monitored = [taxonomy.labels[j] for j in selected]
    loss_fn, table = build_loss(config, train_ds.labels, taxonomy)
    loss_fn = loss_fn.to(info.device)
    offsets = _source_offsets(config, train_ds.labels, info)
    run = _build_run(config, info, taxonomy, datasets, run_dir, resume)
    state = run.state
    if info.is_main:
        log.info("run %s: %d train / %d val images, %s, monitoring val AUROC of %d labels: %s", config.name,
                 len(train_ds), len(val_ds), info.device, len(monitored), ", ".join(monitored))
    writer = _tensorboard(run_dir, info.is_main)
    history: list[dict[str, float]] = []
    # A fixed epoch (chosen by cross-validation, or because val is trained on) replaces early stopping.
    fixed_epoch = config.train.keep_epoch or (config.train.epochs if config.data.fit_on == "train+val" else None)
    last_epoch = fixed_epoch or config.train.epochs
    stopped = fixed_epoch is None and state.epochs_since_best >= config.train.patience
    stopped = stopped or state.epoch >= last_epoch
    descendants = constraint_matrix(run.model.config, taxonomy)
    for epoch in _epochs(state.epoch + 1, last_epoch, info.is_main and not stopped):
        if stopped:
            break
        row = _run_epoch(run, epoch, config, info, loss_fn, val_ds, selected, descendants, run_dir, info.is_main,
                         offsets)
        improved = _keep_best(state, row, fixed_epoch)
        history.append(row)
        if info.is_main:
            _record_epoch(run_dir, run, row, improved, writer, config)
        if info.distributed:
            dist.barrier()
        if _stop_now(config, state, len(history), fixed_epoch, info):
            break
    if writer is not None:
        writer.close()
    best_path = run_dir / "checkpoints" / "best.safetensors"
    if info.distributed:
        dist.barrier()
    if not best_path.exists():
        raise TrainError(f"{best_path}: no best checkpoint (no epoch ran, or val AUROC was never defined)")
    best = load_model(best_path, taxonomy, device=info.device)
    model = run.model.to(memory_format=torch.contiguous_format).eval()
    return TrainResult(config, run_dir, best, best_path, state, table, datasets, monitored, history, info, model)
