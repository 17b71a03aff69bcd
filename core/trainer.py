"""The training loop: HBCE loss, AdamW/Adam, warmup+cosine or plateau schedule, early stopping, checkpoints, DDP.

One call, :func:`train`, runs a whole experiment described by a :class:`core.config.Config`:

* data from :mod:`core.data` (train split augmented, val/test not), penalties from the TRAIN labels;
* loss :class:`core.loss.HierarchicalBCELoss` -- ``penalty: none`` (lam 0: plain masked BCE), ``fixed``,
  ``data_driven``, with ``violation: hard`` (paper) or ``soft`` (differentiable);
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
from core.config import Config
from core.data import XrayDataset, build_datasets
from core.distributed import (
    DeviceError,
    DistInfo,
    all_reduce_mean,
    autocast_context,
    broadcast_buffers,
    setup_distributed,
    unwrap,
)
from core.evaluate import predict_logits
from core.labels import LabelSet
from core.loss import HierarchicalBCELoss, MaxConstraintLoss
from core.metrics import per_label_auroc
from core.model import HiCXRNet, ModelConfig, build_model, constraint_matrix, load_model, output_probabilities
from core.optim import build_optimizer, build_scheduler
from core.penalties import data_driven_penalties, fixed_penalties, penalty_table
from core.preprocess import normalize
from core.progress import append_row, progress
from core.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "train_bce", "train_penalty", "val_loss", "val_macro_auroc", "lr", "seconds")


class TrainError(RuntimeError):
    """Training cannot start or continue (e.g. ``--resume`` without a checkpoint, no usable validation label)."""


# ------------------------------------------------------------------------------------------- components


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy; the same on every rank."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def build_penalties(config: Config, train_labels: LabelSet, taxonomy: Taxonomy) -> tuple[np.ndarray, float]:
    """Edge penalties and lambda for ``config.loss`` (data-driven ones from the TRAIN labels)."""
    loss = config.loss
    if loss.penalty == "none":
        return fixed_penalties(taxonomy, 0.0), 0.0
    if loss.penalty == "fixed":
        return fixed_penalties(taxonomy, loss.fixed_value), loss.lam
    return data_driven_penalties(train_labels.targets, train_labels.mask, taxonomy, alpha=loss.alpha), loss.lam


def build_loss(config: Config, train_labels: LabelSet, taxonomy: Taxonomy) -> tuple[nn.Module, list]:
    """The loss module and its penalty table (for the model card; empty for C-HMCNN's MCLoss)."""
    if config.loss.name == "mcloss":
        return MaxConstraintLoss(taxonomy), []
    penalties, lam = build_penalties(config, train_labels, taxonomy)
    loss = HierarchicalBCELoss(taxonomy, penalties, lam=lam, violation=config.loss.violation)
    table = penalty_table(penalties, taxonomy, train_labels.targets, train_labels.mask)
    return loss, table


def model_config_for(config: Config, taxonomy: Taxonomy) -> ModelConfig:
    """The :class:`ModelConfig` stored with the weights."""
    m = config.model
    return ModelConfig.for_taxonomy(
        taxonomy, input_size=m.input_size, in_channels=m.in_channels, dropout=m.dropout, mean=m.mean, std=m.std,
        output_stride=m.output_stride, constraint=m.constraint,
        extra={"run": config.name, "loss": config.loss.penalty, "violation": config.loss.violation},
    )


# ----------------------------------------------------------------------------------------------- epochs


def train_one_epoch(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any, config: Config, info: DistInfo, scaler: torch.amp.GradScaler | None, state: LoopState,
    show: bool, ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> dict[str, float]:
    """One pass over the training loader; returns mean loss, BCE and penalty (averaged over ranks).

    With ``train.mixup`` = alpha > 0, each batch is mixed with a shuffled copy of itself with a weight drawn from
    Beta(alpha, alpha): images and targets are mixed, and an entry is known only where both images know it.
    """
    model.train()
    mcfg = unwrap(model).config
    sums = np.zeros(3)
    n = 0
    per_step = not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    # Without a terminal (nohup, CI logs) there is no bar: log a plain line about every fifth of the epoch instead.
    log_every = max(1, len(loader) // 5) if show and not sys.stderr.isatty() else 0
    t0 = time.perf_counter()
    for step, (x, y, m, _) in enumerate(progress(loader, show, desc=f"epoch {state.epoch}", unit="batch"), 1):
        x = normalize(x.to(info.device, non_blocking=True), mcfg)
        y, m = y.to(info.device, non_blocking=True), m.to(info.device, non_blocking=True)
        if config.train.mixup > 0:
            x, y, m = mixup_batch(x, y, m, config.train.mixup)
        if config.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(info.device, config.train.amp):
            logits = model(x)
        parts = loss_fn.components(logits.float(), y, m)
        loss = parts["bce"] + loss_fn.lam * parts["penalty"]
        if not torch.isfinite(loss):
            raise TrainError(f"loss became {loss.item()} at step {state.global_step}; lower optim.lr")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if config.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if per_step:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(unwrap(model))
        state.global_step += 1
        b = x.shape[0]
        sums += b * np.array([loss.item(), parts["bce"].item(), parts["penalty"].item()])
        n += b
        if log_every and step % log_every == 0 and step < len(loader):
            log.info("epoch %d: batch %d/%d  loss %.4f  %.1f s/batch", state.epoch, step, len(loader),
                     sums[0] / n, (time.perf_counter() - t0) / step)
    means = (sums / max(n, 1)).tolist()
    loss_mean, bce_mean, pen_mean = all_reduce_mean(means, info)
    return {"train_loss": loss_mean, "train_bce": bce_mean, "train_penalty": pen_mean}


def selected_val_labels(labels: LabelSet, min_positives: int) -> list[int]:
    """Labels whose validation AUROC is worth monitoring: >= ``min_positives`` known positives and a negative."""
    known = labels.mask
    pos = ((labels.targets == 1) & known).sum(axis=0)
    neg = ((labels.targets == 0) & known).sum(axis=0)
    return [j for j in range(labels.targets.shape[1]) if pos[j] >= min_positives and neg[j] >= 1]


def mixup_batch(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
                alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix a batch with a shuffled copy of itself (weight ~ Beta(alpha, alpha)); a label stays known only where
    both images know it."""
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], device=x.device)
    mixed_x = lam * x + (1.0 - lam) * x[perm]
    mixed_y = lam * y + (1.0 - lam) * y[perm]
    return mixed_x, mixed_y, m & m[perm]


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
    run_dir = config.run_dir()
    show = info.is_main
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and (run_dir / "metrics.csv").exists():
            # A fresh run must not append to an old run's history.
            (run_dir / "metrics.csv").unlink()
        config.save(run_dir / "config.yaml")
    datasets = datasets or build_datasets(config, taxonomy, progress=info.is_main and sys.stderr.isatty())
    train_ds, val_ds = datasets["train"], datasets["val"]
    selected = selected_val_labels(val_ds.labels, config.train.min_val_positives)
    if not selected:
        raise TrainError(
            f"no label has >= {config.train.min_val_positives} known positives in the validation split "
            f"({len(val_ds)} images); lower train.min_val_positives or use a larger validation split"
        )
    monitored = [taxonomy.labels[j] for j in selected]
    loss_fn, table = build_loss(config, train_ds.labels, taxonomy)
    loss_fn = loss_fn.to(info.device)

    seed_everything(config.train.seed)  # identical initial weights on every rank and every (re)start
    model = build_model(model_config_for(config, taxonomy), config.model.pretrained).to(info.device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = make_loader(train_ds, config, info, train=True)
    val_loader = make_loader(val_ds, config, info, train=False)
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
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    ddp_model: nn.Module = model
    if info.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

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
    descendants = constraint_matrix(model.config, taxonomy)
    eval_model: nn.Module = ddp_model if ema is None else ema.module
    for epoch in _epochs(state.epoch + 1, last_epoch, show and not stopped):
        if stopped:
            break
        t0 = time.perf_counter()
        state.epoch = epoch
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        elif train_loader.generator is not None:
            # Shuffle order depends on (seed, epoch) only, so a resumed run sees the same batches as an unbroken one.
            train_loader.generator.manual_seed(config.train.seed * 100_003 + epoch)
        row: dict[str, float] = {"epoch": epoch}
        row.update(train_one_epoch(ddp_model, train_loader, loss_fn, optimizer, scheduler, config, info, scaler,
                                   state, show, ema))
        broadcast_buffers(model, info)
        if ema is not None:
            broadcast_buffers(ema.module, info)
        logits, idx = predict_logits(eval_model, val_loader, info, config.train.amp)
        row.update(validation_metrics(logits, val_ds.labels.subset(idx), loss_fn, selected, descendants))
        if config.train.save_val_logits and info.is_main:
            _save_val_logits(run_dir / "val_logits", epoch, logits, val_ds.labels.subset(idx))
            if ema is not None:  # the raw weights too, so one CV run measures what the EMA adds
                raw, raw_idx = predict_logits(ddp_model, val_loader, info, config.train.amp)
                _save_val_logits(run_dir / "val_logits_raw", epoch, raw, val_ds.labels.subset(raw_idx))
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(row["val_macro_auroc"])
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["seconds"] = round(time.perf_counter() - t0, 2)
        state.seconds += row["seconds"]
        metric = row["val_macro_auroc"]
        improved = not math.isnan(metric) and metric > state.best_metric
        if fixed_epoch is not None:
            improved = epoch == fixed_epoch
        if improved:
            state.best_metric, state.best_epoch, state.epochs_since_best = metric, epoch, 0
        else:
            state.epochs_since_best += 1
        history.append(row)
        if info.is_main:
            append_row(run_dir / "metrics.csv", row, METRIC_COLUMNS)
            save_checkpoint(run_dir, model, optimizer, scheduler, state, best=improved, ema=ema)
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch":
                        writer.add_scalar(key, value, epoch)
            log.info("epoch %d/%d  loss %.4f (bce %.4f, penalty %.4f)  val loss %.4f  val macro AUROC %.4f%s  "
                     "lr %.2e  %.0fs", epoch, config.train.epochs, row["train_loss"], row["train_bce"],
                     row["train_penalty"], row["val_loss"], metric, " *" if improved else "", row["lr"],
                     row["seconds"])
        if info.distributed:
            dist.barrier()
        if config.train.stop_after_epochs and len(history) >= config.train.stop_after_epochs:
            if info.is_main:
                log.info("stopping after %d epoch(s) as asked (train.stop_after_epochs); continue with --resume",
                         len(history))
            break
        if fixed_epoch is None and state.epochs_since_best >= config.train.patience:
            if info.is_main:
                log.info("early stop: no val AUROC gain for %d epochs (best %.4f at epoch %d)",
                         config.train.patience, state.best_metric, state.best_epoch)
            stopped = True
            break
    if writer is not None:
        writer.close()
    best_path = run_dir / "checkpoints" / "best.safetensors"
    if info.distributed:
        dist.barrier()
    if not best_path.exists():
        raise TrainError(f"{best_path}: no best checkpoint (no epoch ran, or val AUROC was never defined)")
    best = load_model(best_path, taxonomy, device=info.device)
    model = model.to(memory_format=torch.contiguous_format).eval()
    return TrainResult(config, run_dir, best, best_path, state, table, datasets, monitored, history, info, model)
