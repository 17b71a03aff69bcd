"""Benchmark: cost of the hierarchical loss in a training step, and whether the data loader keeps up.

Prints timings, then as its last two lines::

    loader_over_step=<images/s of the cached, augmented loader / images/s of a training step>   (goal >= 3)
    hbce_over_bce=<median HBCE-soft step time / median BCE step time>                            (goal <= 1.03)

Both steps run in the same process on the same real NIH batch, interleaved in adjacent pairs (alternating which
goes first); ``hbce_over_bce`` is the median over ``--reps`` pairs of (HBCE step time / BCE step time in the same
pair). On CPU the step time is this process's CPU time (``time.process_time``), because on a shared machine wall
time mostly measures the other processes (pre-emption swings a 2 s step by +-50 %); on CUDA it is wall time after
synchronising. Wall-clock medians are printed too.

    python bench/train_step.py [--config configs/nih_hbce_soft_data.yaml] [--size S] [--batch B] [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import load_config, resolve_path  # noqa: E402
from core.data import XrayDataset, build_augment, load_splits  # noqa: E402
from core.distributed import DistInfo  # noqa: E402
from core.loss import build_loss  # noqa: E402
from core.model import build_model  # noqa: E402
from core.optim import build_optimizer  # noqa: E402
from core.preprocess import normalize  # noqa: E402
from core.taxonomy import load_taxonomy  # noqa: E402
from core.trainer import make_loader, model_config_for  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/nih_hbce_soft_data.yaml")
    parser.add_argument("--size", type=int, default=None, help="input size (default: the config's)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions of each step kind")
    parser.add_argument("--images", type=int, default=256, help="training images to cache for the loader test")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    taxonomy = load_taxonomy()
    overrides = [f"model.input_size={args.size}"] if args.size else []
    overrides += [f"train.batch_size={args.batch}"] if args.batch else []
    cfg = load_config(resolve_path(args.config), overrides)
    args.size, args.batch = cfg.model.input_size, cfg.train.batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch threads {torch.get_num_threads()}, input {args.size}px "
          f"(stride {cfg.model.output_stride}), batch {args.batch}")

    train_labels = load_splits(cfg, taxonomy)["train"]
    subset = train_labels.subset(list(range(min(args.images, len(train_labels)))))
    t0 = time.perf_counter()
    ds = XrayDataset(subset, resolve_path(cfg.data.images), args.size, augment=build_augment(cfg.data.augment),
                     cache=True, progress=False)
    print(f"cached {len(ds)} real NIH training images in {time.perf_counter() - t0:.1f}s")

    # Loader throughput: cached uint8 -> float -> augmentation -> collate, as the trainer's loader does it.
    loader = make_loader(ds, cfg, DistInfo(device=device), train=True)
    n, t0 = 0, time.perf_counter()
    for _ in range(2):
        for x, *_ in loader:
            n += x.shape[0]
    loader_ips = n / (time.perf_counter() - t0)
    print(f"loader: {loader_ips:.0f} images/s ({cfg.data.num_workers} workers, augmentation on)")

    x, y, m, _ = next(iter(loader))
    torch.manual_seed(0)
    model = build_model(model_config_for(cfg, taxonomy)).to(device).train()
    x = normalize(x.to(device), model.config)
    y, m = y.to(device), m.to(device)
    opt = build_optimizer(cfg.optim, model)
    bce_cfg = load_config(resolve_path("configs/nih_bce.yaml"))
    losses = {"bce": build_loss(bce_cfg, train_labels, taxonomy)[0].to(device),
              "hbce_soft": build_loss(cfg, train_labels, taxonomy)[0].to(device)}

    def step(kind: str) -> tuple[float, float]:
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        loss = losses[kind](model(x), y, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    for kind in losses:  # warm-up: allocator, kernels, first optimizer state
        step(kind)
    wall: dict[str, list[float]] = {"bce": [], "hbce_soft": []}
    cpu: dict[str, list[float]] = {"bce": [], "hbce_soft": []}
    for r in range(args.reps):
        order = ("bce", "hbce_soft") if r % 2 == 0 else ("hbce_soft", "bce")
        for kind in order:
            w, c = step(kind)
            wall[kind].append(w)
            cpu[kind].append(c)
    times = cpu if device.type == "cpu" else wall
    med = {k: statistics.median(v) for k, v in wall.items()}
    pair_ratios = [h / b for h, b in zip(times["hbce_soft"], times["bce"], strict=True)]
    paired = statistics.median(pair_ratios)
    clock = "CPU time" if device.type == "cpu" else "wall time"
    print(f"per-pair hbce/bce ({clock}):", " ".join(f"{r:.3f}" for r in pair_ratios))
    for k, v in wall.items():
        print(f"{k:>9} step: wall median {med[k] * 1000:.1f} ms (min {min(v) * 1000:.1f}, max {max(v) * 1000:.1f}), "
              f"CPU-time median {statistics.median(cpu[k]) * 1000:.1f} ms, n={len(v)}")
    # The loss alone, to show where any difference comes from.
    with torch.no_grad():
        logits = model(x)
    for kind, fn in losses.items():
        _sync(device)
        t = time.perf_counter()
        for _ in range(100):
            fn(logits, y, m)
        _sync(device)
        print(f"{kind:>9} loss alone: {(time.perf_counter() - t) * 10:.3f} ms")
    step_ips = args.batch / med["bce"]
    print(f"training step: {step_ips:.1f} images/s")
    print(f"wall-clock ratio of medians (at the mercy of other processes): {med['hbce_soft'] / med['bce']:.4f}")
    print(f"loader_over_step={loader_ips / step_ips:.2f}")
    print(f"hbce_over_bce={paired:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
