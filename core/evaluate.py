"""Evaluate exported variants on a labelled image set: per-label table, summaries, ROC/reliability plots, JSON.

Usage::

    python -m core.evaluate --weights weights/hbce_soft [weights/bce ...] \\
        --csv ../shared/data/nih/labels.csv --images ../shared/data/nih/images [--split test] [--out DIR]

``--weights`` takes the variant prefix (``weights/NAME`` for ``weights/NAME.safetensors`` + ``weights/NAME.json``);
the card's temperatures are used when the card says ``calibration.applied``. Inference is batched, without
augmentation or Monte-Carlo dropout, at each model's own input size. With several variants the per-label AUROC
table has one column per variant; ``--paired`` compares each later variant with the first on the same images
instead (the macro AUROC difference with a paired patient-level bootstrap CI).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.card import CardError, ModelCard, write_json
from core.card_sections import SplitMetrics
from core.config import DataConfig, resolve_path
from core.data import DataError, XrayDataset, split_table
from core.distributed import DistInfo, autocast_context, gather_rows, unwrap
from core.errors import HiCXRError
from core.labels import LabelSet
from core.metrics import evaluate_predictions
from core.model import HiCXRNet, ModelLoadError, constraint_matrix, load_model, output_probabilities
from core.paired import PairedComparison, paired_comparison, report
from core.plots import plot_calibration, plot_roc
from core.preprocess import Fit, normalize
from core.progress import progress
from core.taxonomy import Taxonomy, load_taxonomy


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, info: DistInfo, amp: bool = True,
                   show: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, L)`` and dataset row indices ``(N,)`` for ``loader`` (eval mode, no augmentation).

    Under DDP every rank predicts its shard; the shards are gathered and the sampler's padding (repeated rows)
    removed, so each rank returns every row exactly once, in row order.
    """
    model.eval()
    mcfg = unwrap(model).config
    logits, indices = [], []
    for x, _, _, idx in progress(loader, show, desc="predict", unit="batch"):
        x = normalize(x.to(info.device, non_blocking=True), mcfg)
        with autocast_context(info.device, amp):
            logits.append(model(x).float())
        indices.append(idx.to(info.device))
    z = torch.cat(logits) if logits else torch.empty(0, len(mcfg.labels), device=info.device)
    i = torch.cat(indices) if indices else torch.empty(0, dtype=torch.long, device=info.device)
    z, i = gather_rows(z, info), gather_rows(i, info)
    i_np = i.cpu().numpy()
    _, first = np.unique(i_np, return_index=True)
    return z.cpu().numpy()[first], i_np[first]


@torch.no_grad()
def predict_outputs(model: HiCXRNet, dataset: XrayDataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, L)`` and global-average-pooled features ``(N, K)`` for every row of ``dataset``, in row order.

    Eval mode, no augmentation (the dataset's own augmentation is bypassed), no Monte-Carlo dropout.
    """
    model.eval()
    device = next(model.parameters()).device
    logits, pooled = [], []
    for start in range(0, len(dataset), batch_size):
        rows = range(start, min(start + batch_size, len(dataset)))
        x = normalize(torch.stack([dataset.image(i) for i in rows]).to(device), model.config)
        features = model.forward_features(x)
        pooled_batch = torch.flatten(model.pool(features), 1)
        logits.append(model.label_logits(model.classifier(pooled_batch)).float().cpu())
        pooled.append(pooled_batch.float().cpu())
    k, n_labels = model.num_features, len(model.config.labels)
    return (torch.cat(logits).numpy() if logits else np.zeros((0, n_labels), np.float32),
            torch.cat(pooled).numpy() if pooled else np.zeros((0, k), np.float32))


def predict_dataset(model: HiCXRNet, dataset: XrayDataset, batch_size: int = 64) -> np.ndarray:
    """Logits ``(N, L)`` of ``model`` for every row of ``dataset`` in row order (eval mode, no augmentation)."""
    return predict_outputs(model, dataset, batch_size)[0]


def variant_paths(prefix: str | Path) -> tuple[Path, Path]:
    """``weights/NAME`` (or ``weights/NAME.safetensors``) -> (weights file, model card file)."""
    prefix = Path(prefix)
    if prefix.suffix in (".safetensors", ".json"):
        prefix = prefix.with_suffix("")
    return Path(f"{prefix}.safetensors"), Path(f"{prefix}.json")


def load_variant(prefix: str | Path, taxonomy: Taxonomy,
                 device: str | torch.device = "cpu") -> tuple[HiCXRNet, np.ndarray | None, ModelCard | None]:
    """The model, its applied temperatures (or None) and its card (``None`` when there is no card).

    Raises:
        ModelLoadError: the weights do not load, or the card is malformed or contradicts them.
    """
    weights, card_path = variant_paths(prefix)
    model = load_model(weights, taxonomy, device=device)
    if not card_path.is_file():
        return model, None, None
    try:
        card = ModelCard.read(card_path)
        card.check_against(model.config, card_path.name)
    except CardError as exc:
        raise ModelLoadError(str(exc)) from None
    return model, card.temperature(), card


def format_table(results: dict[str, SplitMetrics], labels: Sequence[str]) -> str:
    """Plain-text table: per-label AUROC [CI] (one column per variant), then AP/ECE/positives and summaries."""
    names = list(results)
    single = len(names) == 1
    width = max(len(x) for x in labels) + 2
    lines = []
    if single:
        r = results[names[0]]
        lines.append(f"{'label':<{width}}{'AUROC':>7} {'95% CI':>15} {'AP':>6} {'ECE':>6} {'pos':>5} {'known':>6}")
        for label in labels:
            p = r.label(label)
            ci = p.auroc_ci
            lines.append(
                f"{label:<{width}}{_f(p.auroc):>7} {(f'{ci[0]:.2f}-{ci[1]:.2f}' if ci else ''):>15} "
                f"{_f(p.average_precision):>6} {_f(p.ece):>6} {p.positives:>5} {p.known:>6}"
            )
    else:
        col = max(12, *(len(n) + 1 for n in names))
        lines.append(f"{'label (AUROC)':<{width}}" + "".join(f"{n:>{col}}" for n in names) + f"{'pos':>6}")
        for label in labels:
            pos = results[names[0]].label(label).positives
            lines.append(f"{label:<{width}}" + "".join(f"{_f(results[n].label(label).auroc):>{col}}"
                                                     for n in names) + f"{pos:>6}")
    lines.append("")
    summary = [("macro AUROC", "macro_auroc"), ("macro AUROC (14 CheXpert)", "macro_auroc_chexpert"),
               ("weighted AUROC", "weighted_auroc"), ("macro AP", "macro_ap"), ("ECE (pooled)", "ece"),
               ("violation rate", "violation_rate")]
    col = max(12, *(len(n) + 1 for n in names))
    lines.append(f"{'summary':<{width}}" + "".join(f"{n:>{col}}" for n in names))
    for title, key in summary:
        lines.append(f"{title:<{width}}" + "".join(f"{_f(getattr(results[n], key)):>{col}}" for n in names))
    ci_row = [results[n].macro_auroc_ci for n in names]
    if any(ci_row):
        lines.append(f"{'macro AUROC 95% CI':<{width}}" + "".join(
            f"{(f'{c[0]:.3f}-{c[1]:.3f}' if c else ''):>{col}}" for c in ci_row))
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def variant_probabilities(
    prefixes: Sequence[str | Path], labels: LabelSet, images: str | Path, batch_size: int = 64,
    taxonomy: Taxonomy | None = None,
) -> dict[str, tuple[np.ndarray, XrayDataset, ModelCard | None, bool]]:
    """Each variant's probabilities on ``labels`` (its card's temperatures applied when it says so).

    Returns name -> (probabilities ``(N, L)``, the dataset they were computed on, the card, temperature applied).
    Variants with the same input contract share one decoded dataset.
    """
    taxonomy = taxonomy or load_taxonomy()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    datasets: dict[tuple[int, Fit], XrayDataset] = {}
    out: dict[str, tuple[np.ndarray, XrayDataset, ModelCard | None, bool]] = {}
    for prefix in prefixes:
        name = variant_paths(prefix)[0].stem
        if name in out:  # two folders' variants of the same name (e.g. a retrained bce against the shipped one)
            name = f"{variant_paths(prefix)[0].parent.name}/{name}"
        model, temperature, card = load_variant(prefix, taxonomy, device)
        key = (model.config.input_size, Fit.of(model.config))
        if key not in datasets:
            datasets[key] = XrayDataset(labels, images, key[0], cache=True, progress=sys.stderr.isatty(), fit=key[1])
        ds = datasets[key]
        logits = predict_dataset(model, ds, batch_size)
        if temperature is not None:
            logits = logits / temperature
        probs = output_probabilities(torch.from_numpy(logits), constraint_matrix(model.config, taxonomy)).numpy()
        out[name] = (probs, ds, card, temperature is not None)
    return out


def split_labels(csv: str | Path, images: str | Path, split: str, taxonomy: Taxonomy,
                 data: DataConfig | None = None) -> LabelSet:
    """The rows of ``split`` (or ``all``) of a label table, in each release's own layout and official split.

    Raises:
        DataError: the split has no row.
    """
    data = data or DataConfig(csv=str(csv), images=str(images))
    labels, assignment = split_table(data, taxonomy)
    if split != "all":
        labels = labels.subset(assignment == split)
        if len(labels) == 0:
            raise DataError(f"{resolve_path(csv)}: no rows in split {split!r}")
    return labels


def evaluate_variants(
    prefixes: Sequence[str | Path], csv: str | Path, images: str | Path, split: str = "test",
    out: str | Path | None = None, n_boot: int = 1000, batch_size: int = 64, taxonomy: Taxonomy | None = None,
    data: DataConfig | None = None,
) -> dict[str, SplitMetrics]:
    """Evaluate each variant on ``split`` of ``csv`` and (if ``out``) write plots and ``metrics.json``.

    Raises:
        LabelError, DataError, ModelLoadError: with a message naming the file, column or variant.
    """
    taxonomy = taxonomy or load_taxonomy()
    labels = split_labels(csv, images, split, taxonomy, data)
    out_dir = Path(out) if out else None
    results: dict[str, SplitMetrics] = {}
    predicted = variant_probabilities(prefixes, labels, resolve_path(images), batch_size, taxonomy)
    for name, (probs, ds, _, applied) in predicted.items():
        y, m = ds.labels.targets, ds.labels.mask
        results[name] = evaluate_predictions(y, probs, taxonomy, m, groups=ds.groups, n_boot=n_boot)
        results[name].temperature_applied = applied
        if out_dir is not None:
            plot_roc(y, probs, m, taxonomy.labels, out_dir / f"roc_{name}.png", title=f"{name}: ROC ({split})")
    if out_dir is not None:
        any_ds = next(iter(predicted.values()))[1]
        plot_calibration(any_ds.labels.targets, {n: p[0] for n, p in predicted.items()}, any_ds.labels.mask,
                         out_dir / "calibration.png", title=f"Reliability ({split}, all known labels pooled)")
        write_json({"split": split, "csv": str(resolve_path(csv)),
                    "results": {n: r.to_dict() for n, r in results.items()}}, out_dir / "metrics.json")
    return results


def paired_against_first(prefixes: Sequence[str | Path], csv: str | Path, images: str | Path, split: str = "test",
                         n_boot: int = 1000, batch_size: int = 64) -> list[PairedComparison]:
    """Each later variant against the first on the same images of ``split``: per-label and macro AUROC and the
    paired patient-level bootstrap CI of the difference (:mod:`core.paired`), over the labels both learnt with at
    least 5 positives and negatives there."""
    taxonomy = load_taxonomy()
    labels = split_labels(csv, images, split, taxonomy)
    predicted = variant_probabilities(prefixes, labels, resolve_path(images), batch_size, taxonomy)
    (first, (base, ds, base_card, _)), *others = predicted.items()
    results = []
    for name, (probs, _, card, _) in others:
        not_learnt = {lab for c in (base_card, card) if c is not None for lab in c.labels_not_learnt}
        learnt = np.array([lab not in not_learnt for lab in taxonomy.labels])
        results.append(paired_comparison(base, probs, ds.labels.targets, ds.labels.mask, ds.groups, taxonomy.labels,
                                         learnt, names=(first, name), n_boot=n_boot, note=f"{split} split"))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="+", required=True, help="variant prefixes, e.g. weights/hbce_soft")
    parser.add_argument("--csv", required=True, help="label table (NIH or CheXpert format)")
    parser.add_argument("--images", required=True, help="image folder the table's paths are relative to")
    parser.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    parser.add_argument("--out", default=None, help="folder for plots and metrics.json")
    parser.add_argument("--n-boot", type=int, default=1000, help="patient-level bootstrap resamples for CIs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--paired", action="store_true",
                        help="instead of the table: each later variant against the first on the same images, with "
                             "a paired patient-level bootstrap CI of the macro AUROC difference")
    args = parser.parse_args(argv)
    if args.paired:
        if len(args.weights) < 2:
            parser.error("--paired needs at least two variants")
        return report(lambda: paired_against_first(args.weights, args.csv, args.images, args.split, args.n_boot,
                                                   args.batch_size))
    try:
        results = evaluate_variants(args.weights, args.csv, args.images, args.split, args.out, args.n_boot,
                                    args.batch_size)
    except HiCXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results, list(load_taxonomy().labels)))
    if args.out:
        print(f"\nwrote {Path(args.out) / 'metrics.json'} and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())

