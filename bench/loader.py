"""Benchmark: does the streaming loader keep up with a training step at 320 px, and do big label tables index fast?

Builds a synthetic tree of ``--files`` images laid out like MIMIC-CXR-JPG (or CheXpert) -- hard links to the real
pediatric JPEGs in ``../shared/data/other/kermany`` (at most 320 px, like CheXpert-v1.0-small), or with
``--large`` to one full-size JPEG made from a real 2,128 x 2,000 DICOM chest film (like MIMIC-CXR-JPG's) -- and
measures, in ``--rounds`` paired rounds (loader, then step):

* the training loader streaming from disk (cache off): decode, resize to ``--size``, augment, collate, with the
  config's ``data.num_workers`` (or ``--workers``) DataLoader worker processes;
* one training step of DenseNet121 at ``--size`` on a batch of ``--batch`` (forward, HBCE-soft loss, backward,
  AdamW).

On CPU both are measured in CPU time, because on a shared machine wall time mostly measures the other processes:
the loader's CPU time per image (its workers', read when they exit, plus this process's) gives what ``W`` workers
deliver on ``W`` cores; the step's CPU time divided by torch's thread count gives its images/s on those threads.
On CUDA both are wall time (after synchronising). Wall-clock figures are printed too. Last line::

    loader_over_step=<loader images/s with the configured workers / training step images/s>   (goal >= 1)

Before that, ``--table-rows`` (default 400,000) times reading, joining, labelling and splitting a MIMIC-style
table set of that many images (no files needed), and a table says which full-size datasets fit the cache budget.

    python bench/loader.py [--config configs/mimic_hbce_soft.yaml] [--layout mimic|chexpert] [--files 2000]
                           [--size 320] [--batch 8] [--workers W] [--rounds 3] [--large] [--draft]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import REPO_ROOT, load_config, resolve_path  # noqa: E402
from core.data import build_datasets, cache_bytes, split_table  # noqa: E402
from core.datasets.miniature import (  # noqa: E402
    mimic_tables,
    write_chexpert_tree,
    write_mimic_tables,
    write_mimic_tree,
)
from core.imaging import read_image, to_uint8  # noqa: E402
from core.loss import build_loss  # noqa: E402
from core.model import build_model  # noqa: E402
from core.optim import build_optimizer  # noqa: E402
from core.preprocess import normalize  # noqa: E402
from core.taxonomy import load_taxonomy  # noqa: E402
from core.trainer import model_config_for  # noqa: E402

SHARED = REPO_ROOT.parent / "shared" / "data"
LARGE_DICOM = SHARED / "dicom" / "pljd_966_fixed_DX_MONO1_J2KR_chestPA.dcm"
#: Full-size datasets (images, as released) for the cache-budget table.
FULL_SIZE = {"CheXpert-v1.0-small train.csv": 223_414, "MIMIC-CXR-JPG, all views": 377_110,
             "MIMIC-CXR-JPG, frontal (about)": 243_000, "NIH ChestX-ray14": 112_120,
             "NIH subset (../shared)": 1_571}


def _cpu() -> float:
    """CPU seconds of this process and of its exited, waited-for children (DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _sources(args: argparse.Namespace, folder: Path) -> list[Path]:
    """The image files the tree links to: real kermany JPEGs, or one full-size JPEG from a real DICOM."""
    if args.large:
        big = folder / "full_size_chest.jpg"
        # MIMIC-CXR-JPG was made the same way: DICOM -> 8-bit -> JPEG at quality 95.
        from PIL import Image

        Image.fromarray(to_uint8(read_image(LARGE_DICOM).pixels)).save(big, quality=95)
        return [big] * args.files
    files = sorted((SHARED / "other" / "kermany" / "images").glob("*.jpeg"))
    return [files[i % len(files)] for i in range(args.files)]


def time_table(rows: int, folder: Path) -> None:
    """Read, join, label and split a MIMIC-style table set of ``rows`` images; print the times."""
    t0 = time.perf_counter()
    tables = mimic_tables(rows, seed=1)
    csv = write_mimic_tables(folder / "table", tables)
    made = time.perf_counter() - t0
    cfg = load_config(resolve_path("configs/mimic_hbce_soft.yaml"), [f"data.csv={csv}", f"data.images={folder}"])
    for views in ("frontal", "all"):
        cfg.data.views = views
        t0, c0 = time.perf_counter(), time.process_time()
        labels, assignment = split_table(cfg.data)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        train = labels.subset(assignment == "train")
        sub = time.perf_counter() - t0
        arrays = (labels.targets.nbytes + labels.mask.nbytes) / 2**20
        meta = labels.metadata.memory_usage(deep=True).sum() / 2**20
        paths = sum(sys.getsizeof(p) for p in labels.paths) / 2**20
        print(f"table: {rows:,} images ({len(tables.chexpert):,} studies), views {views}: {len(labels):,} rows read, "
              f"joined, labelled and split in {wall:.2f} s wall / {cpu:.2f} s CPU (train subset {len(train):,} rows "
              f"in {sub:.2f} s); label set: {arrays:.0f} MB label arrays, {meta:.0f} MB metadata, {paths:.0f} MB "
              "path strings")
    print(f"table: writing the synthetic CSVs took {made:.1f} s")


def measure_loader(ds, batch: int, workers: int, seed: int) -> tuple[float, float, int]:
    """One pass over ``ds`` as the trainer's loader makes it (shuffled, drop_last), workers not persistent so
    their CPU time is counted when they exit. Returns (wall s, CPU s, images)."""
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    n, wall, cpu = 0, time.perf_counter(), _cpu()
    it = iter(loader)
    for x, *_ in it:
        n += x.shape[0]
    del it  # joins the workers, so RUSAGE_CHILDREN includes them
    return time.perf_counter() - wall, _cpu() - cpu, n


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/mimic_hbce_soft.yaml")
    parser.add_argument("--layout", choices=["mimic", "chexpert"], default="mimic")
    parser.add_argument("--files", type=int, default=2000, help="image files in the synthetic tree")
    parser.add_argument("--size", type=int, default=320, help="input size")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the loader and of the training step")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    parser.add_argument("--rounds", type=int, default=3, help="paired (loader, step) rounds")
    parser.add_argument("--loader-images", type=int, default=512, help="images the loader serves per round")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per round")
    parser.add_argument("--large", action="store_true", help="full-size JPEGs (2,128 x 2,000) instead of <=320 px")
    parser.add_argument("--draft", action="store_true", help="set data.jpeg_draft (reduced-scale JPEG decoding)")
    parser.add_argument("--table-rows", type=int, default=400_000, help="rows of the table-indexing test (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the step")
    parser.add_argument("--root", default=None, help="folder for the synthetic tree (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    taxonomy = load_taxonomy()
    tmp = tempfile.TemporaryDirectory(prefix="hicxr-bench-", dir=args.root)
    folder = Path(tmp.name)

    cfg = load_config(resolve_path(args.config))
    workers = cfg.data.num_workers if args.workers is None else args.workers
    print(f"device {device}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, input {args.size} px, "
          f"batch {args.batch}, {workers} loader workers, {'full-size' if args.large else '<=320 px'} JPEGs"
          f"{', jpeg_draft' if args.draft else ''}")
    budget = cfg.data.cache_budget_mb
    for name, n in FULL_SIZE.items():
        need = cache_bytes(n, args.size)
        print(f"cache at {args.size} px, {name}: {n:,} images -> {need / 1e9:.1f} GB: "
              f"{'cached' if need <= budget * 2**20 else 'streamed'} (data.cache_budget_mb {budget:.0f})")
    if args.table_rows:
        time_table(args.table_rows, folder)

    t0 = time.perf_counter()
    sources = _sources(args, folder)
    tree = folder / args.layout
    csv = (write_mimic_tree(tree, sources) if args.layout == "mimic"
           else write_chexpert_tree(tree, sources, valid_images=min(200, args.files // 10)))
    print(f"tree: {args.files:,} hard-linked files laid out like {args.layout} in {time.perf_counter() - t0:.1f} s")
    overrides = [f"data.csv={csv}", f"data.images={tree}", f"model.input_size={args.size}", "data.cache=false",
                 f"data.num_workers={workers}", f"train.batch_size={args.batch}", "data.views=all",
                 f"data.jpeg_draft={str(args.draft).lower()}"]
    cfg = load_config(resolve_path(args.config), overrides)
    t0 = time.perf_counter()
    ds = build_datasets(cfg, taxonomy, splits=("train",), progress=False)["train"]
    print(f"dataset: {len(ds):,} training images indexed and their files checked in {time.perf_counter() - t0:.2f} s "
          f"(streaming: cached={ds.cached})")
    if args.loader_images < len(ds):
        ds = torch.utils.data.Subset(ds, range(args.loader_images))

    torch.manual_seed(0)
    model = build_model(model_config_for(cfg, taxonomy)).to(device).train()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, model)
    loss_fn = build_loss(cfg, ds.dataset.labels if isinstance(ds, torch.utils.data.Subset) else ds.labels,
                         taxonomy)[0].to(device)
    x, y, m, _ = next(iter(DataLoader(ds, batch_size=args.batch)))
    x = normalize(x.to(device), model.config).contiguous(memory_format=torch.channels_last)
    y, m = y.to(device), m.to(device)

    def step() -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        loss = loss_fn(model(x), y, m)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    step()  # warm-up: allocator, kernels, optimizer state
    threads = torch.get_num_threads()
    ratios, loader_rates, step_rates = [], [], []
    for r in range(args.rounds):
        lw, lc, n = measure_loader(ds, args.batch, workers, seed=r)
        steps = [step() for _ in range(args.steps)]
        sw, sc = statistics.median(s[0] for s in steps), statistics.median(s[1] for s in steps)
        cpu_per_image = lc / n
        if device.type == "cpu":
            loader_ips = max(workers, 1) / cpu_per_image  # each worker (or this process) on its own core
            step_ips = args.batch / (sc / threads)
        else:
            loader_ips, step_ips = n / lw, args.batch / sw
        ratios.append(loader_ips / step_ips)
        loader_rates.append(loader_ips)
        step_rates.append(step_ips)
        print(f"round {r + 1}: loader {n} images in {lw:.1f} s wall ({n / lw:.0f} images/s here), "
              f"{cpu_per_image * 1000:.1f} ms CPU per image -> {loader_ips:.0f} images/s with {workers} workers; "
              f"step {sw:.2f} s wall / {sc:.2f} s CPU on {threads} threads -> {step_ips:.2f} images/s; "
              f"ratio {ratios[-1]:.1f}")
    print(f"loader: {statistics.median(loader_rates):.0f} images/s at {args.size} px with {workers} workers "
          f"({'CPU time, own cores' if device.type == 'cpu' else 'wall'}; median of {args.rounds})")
    print(f"training step: {statistics.median(step_rates):.2f} images/s (DenseNet121, {args.size} px, batch "
          f"{args.batch}, {device})")
    print(f"loader_over_step={statistics.median(ratios):.2f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
