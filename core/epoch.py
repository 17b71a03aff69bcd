"""One pass over the training data: forward, the loss's terms, backward, clip, step, EMA (mixup optional).

Kept apart from the loop in :mod:`core.trainer` (run set-up, validation, checkpoints, early stopping) so each stays
readable; the loss is whatever :func:`core.loss.build_loss` built, minimised through its
:class:`core.loss.LossTerms` total.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.checkpoints import LoopState
from core.config import Config
from core.distributed import DistInfo, all_reduce_mean, autocast_context, unwrap
from core.errors import HiCXRError
from core.preprocess import normalize
from core.progress import progress

log = logging.getLogger("core.trainer")


class TrainError(HiCXRError, RuntimeError):
    """Training cannot start or continue (e.g. ``--resume`` without a checkpoint, no usable validation label)."""


def train_one_epoch(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any, config: Config, info: DistInfo, scaler: torch.amp.GradScaler | None, state: LoopState,
    show: bool, ema: torch.optim.swa_utils.AveragedModel | None = None, offsets: torch.Tensor | None = None,
) -> dict[str, float]:
    """One pass over the training loader; returns mean loss, BCE and penalty (averaged over ranks).

    ``offsets``: ``(n_rows, n_labels)`` added to the logits of each batch row (by its dataset index) before the
    loss, the per-source priors of :mod:`core.source_prior`; never to what the model outputs elsewhere.

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
    for step, (x, y, m, rows) in enumerate(progress(loader, show, desc=f"epoch {state.epoch}", unit="batch"), 1):
        x = normalize(x.to(info.device, non_blocking=True), mcfg)
        y, m = y.to(info.device, non_blocking=True), m.to(info.device, non_blocking=True)
        if config.train.mixup > 0:
            x, y, m = mixup_batch(x, y, m, config.train.mixup)
        if config.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(info.device, config.train.amp):
            logits = model(x)
        logits = logits.float()
        if offsets is not None:
            logits = logits + offsets[rows.to(offsets.device)]
        terms = loss_fn.terms(logits, y, m)
        loss = terms.total
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
        sums += b * np.array([loss.item(), terms.data.item(), terms.penalty.item()])
        n += b
        if log_every and step % log_every == 0 and step < len(loader):
            log.info("epoch %d: batch %d/%d  loss %.4f  %.1f s/batch", state.epoch, step, len(loader),
                     sums[0] / n, (time.perf_counter() - t0) / step)
    means = (sums / max(n, 1)).tolist()
    loss_mean, bce_mean, pen_mean = all_reduce_mean(means, info)
    return {"train_loss": loss_mean, "train_bce": bce_mean, "train_penalty": pen_mean}


def mixup_batch(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
                alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix a batch with a shuffled copy of itself (weight ~ Beta(alpha, alpha)); a label stays known only where
    both images know it."""
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], device=x.device)
    mixed_x = lam * x + (1.0 - lam) * x[perm]
    mixed_y = lam * y + (1.0 - lam) * y[perm]
    return mixed_x, mixed_y, m & m[perm]
