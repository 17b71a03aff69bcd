"""Devices and process groups: single process, or DDP under ``torchrun`` (gloo on CPU, nccl on CUDA).

Nothing here reads the environment at import time; :func:`setup_distributed` reads ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` when called. AMP (bfloat16 autocast, or float16 where bfloat16 is unsupported) is used on CUDA only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from core.errors import HiCXRError


class DeviceError(HiCXRError, RuntimeError):
    """The requested device is not available."""


@dataclass
class DistInfo:
    """Process-group facts of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's local rank) when available, else CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DeviceError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup_distributed(device_choice: str) -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (read at call time), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device_choice))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's BatchNorm running statistics to every rank (each rank updated its own during the epoch)."""
    if not info.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def all_reduce_mean(values: list[float], info: DistInfo) -> list[float]:
    if not info.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return (t / info.world_size).tolist()


def gather_rows(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equally sized per-rank tensors (DistributedSampler pads every rank to the same length)."""
    if not info.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def autocast_context(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA (float16 where bf16 is unsupported); a no-op context on CPU."""
    if device.type != "cuda" or not enabled:
        return torch.autocast(device_type="cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def cleanup_distributed() -> None:
    """Leave the process group (call once at the end of a torchrun worker)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
