"""Resumable checkpoints without pickle: weights in safetensors, everything else in JSON.

A run's ``checkpoints/`` folder holds ``last.safetensors`` (the model, via :func:`core.model.save_model`),
``last_ema.safetensors`` (the averaged weights, when an EMA is kept), ``last_optim.safetensors`` (optimizer
tensors and RNG states), ``last_state.json`` (loop counters, optimizer scalars, scheduler state; written
atomically) and ``best.safetensors``. :func:`save_training_state` / :func:`load_training_state` handle the
optimizer, scheduler and RNG part for any loop (training and pretraining).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from core.errors import HiCXRError
from core.model import HiCXRNet, load_model, save_model
from core.taxonomy import Taxonomy


class CheckpointError(HiCXRError, RuntimeError):
    """A checkpoint needed to resume is missing or does not fit the run."""


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and plain data (for JSON)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`optimizer_to_files`: an optimizer state dict."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("state."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def json_safe(value: Any) -> Any:
    """Scheduler state as JSON (floats, ints, strings and lists only; functions dropped)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return None


def save_training_state(ckpt: Path, optimizer: torch.optim.Optimizer, scheduler: Any, loop: dict[str, Any]) -> None:
    """Write ``last_optim.safetensors`` (optimizer tensors, RNG states) and ``last_state.json`` (atomically)."""
    ckpt.mkdir(parents=True, exist_ok=True)
    tensors, meta = optimizer_to_files(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(ckpt / "last_optim.safetensors"))
    payload = {"loop": loop, "optimizer": meta, "scheduler": json_safe(scheduler.state_dict())}
    tmp = ckpt / "last_state.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    tmp.replace(ckpt / "last_state.json")  # atomic: a crash mid-write never leaves a half state file


def load_training_state(ckpt: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG from :func:`save_training_state`'s files; return the loop dict."""
    needed = [ckpt / "last_optim.safetensors", ckpt / "last_state.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise CheckpointError(f"cannot resume: missing {', '.join(missing)} (was this run started?)")
    payload = json.loads((ckpt / "last_state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(ckpt / "last_optim.safetensors"))
    optimizer.load_state_dict(optimizer_from_files(tensors, payload["optimizer"]))
    sched_state = payload.get("scheduler") or {}
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        sched_state["lr_lambdas"] = [None] * len(optimizer.param_groups)
    scheduler.load_state_dict(sched_state)
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return payload["loop"]


def epochs_done(ckpt: Path) -> int:
    """Epochs finished by the run whose ``checkpoints/`` folder is ``ckpt`` (0 if it never saved one)."""
    state = ckpt / "last_state.json"
    if not state.is_file():
        return 0
    return int(json.loads(state.read_text(encoding="utf-8"))["loop"]["epoch"])


@dataclass
class LoopState:
    """What ``last_state.json`` holds besides the tensors."""

    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0
    global_step: int = 0
    seconds: float = 0.0
    seed: int = 0


def save_checkpoint(run_dir: Path, model: HiCXRNet, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: LoopState, best: bool, ema: torch.optim.swa_utils.AveragedModel | None = None) -> None:
    """Write ``last`` (model, optimizer + RNG tensors, JSON state) and, if ``best``, ``best.safetensors``.

    With an EMA, ``last_ema.safetensors`` holds the averaged weights and ``best`` is taken from them.
    """
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    save_model(model, ckpt / "last.safetensors")
    if ema is not None:
        save_model(ema.module, ckpt / "last_ema.safetensors")
    save_training_state(ckpt, optimizer, scheduler, state.__dict__)
    if best:
        save_model(model if ema is None else ema.module, ckpt / "best.safetensors")


def load_checkpoint(run_dir: Path, model: HiCXRNet, optimizer: torch.optim.Optimizer, scheduler: Any,
                    taxonomy: Taxonomy, ema: torch.optim.swa_utils.AveragedModel | None = None) -> LoopState:
    """Restore the ``last`` checkpoint into ``model``, ``optimizer``, ``scheduler`` and the RNG; return the state."""
    ckpt = run_dir / "checkpoints"
    if not (ckpt / "last.safetensors").is_file():
        raise CheckpointError(f"cannot resume: missing {ckpt / 'last.safetensors'} (was this run started?)")
    saved = load_model(ckpt / "last.safetensors", taxonomy)
    if saved.config.input_size != model.config.input_size or saved.config.in_channels != model.config.in_channels:
        raise CheckpointError(f"cannot resume: {ckpt / 'last.safetensors'} was trained with another input "
                              "size/channels")
    model.load_state_dict(saved.state_dict())
    if ema is not None:
        if not (ckpt / "last_ema.safetensors").is_file():
            raise CheckpointError(f"cannot resume: {ckpt / 'last_ema.safetensors'} is missing (was EMA off?)")
        ema.module.load_state_dict(load_model(ckpt / "last_ema.safetensors", taxonomy).state_dict())
        ema.n_averaged.fill_(1)
    return LoopState(**load_training_state(ckpt, optimizer, scheduler))
