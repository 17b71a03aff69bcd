"""Optimisers and learning-rate schedules shared by training and pretraining (from an :class:`OptimConfig`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from core.config import OptimConfig


def build_optimizer(optim: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam; no decay on biases and norm weights."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=optim.lr)


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optim: OptimConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """Per-step LambdaLR for ``cosine``/``constant``, per-epoch ReduceLROnPlateau (on val AUROC) for ``plateau``.

    The cosine schedule spans ``epochs`` epochs, so a run stopped early (``train.keep_epoch``) has followed the
    same learning rates as the full run up to that epoch.
    """
    if optim.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=optim.plateau_factor, patience=optim.plateau_patience, min_lr=optim.min_lr)
    if optim.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    ratio = min(1.0, optim.min_lr / optim.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_lr_factor(step, total, warmup, ratio))
