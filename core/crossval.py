"""Patient-level k-fold cross-validation over the train and val splits (the test split is never touched).

``run_cv`` trains one model per fold (fold ``k`` held out, the other folds trained on; see
:func:`core.data.load_splits`) for a fixed number of epochs, with no early stopping, saving every epoch's
held-out logits. :func:`summarise_cv` then reads them back and gives, for every epoch:

* the macro AUROC of each fold on its own held-out patients (over the labels with at least
  ``train.min_val_positives`` positives in that fold), their mean and standard deviation across folds;
* the pooled out-of-fold (OOF) macro AUROC: every train+val image predicted once, by the model that did not see
  it, over the labels with at least ``min_val_positives`` positives in the pool.

The chosen epoch maximises the mean fold AUROC; the final model is then trained on train+val for that epoch with
the same schedule (``train.py --fit-from-cv``). Folds are resumable: a finished fold is skipped and an interrupted
one continues from its last checkpoint. Files in ``<out_dir>/<name>_cv<k>/``: ``fold<i>/`` (each a normal run),
``cv_summary.json``, ``cv_curve.png``, ``oof_logits.npy`` with ``oof_rows.csv`` (the chosen epoch's OOF logits,
used for calibration, operating points and the out-of-distribution threshold).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Config, resolve_path
from core.data import load_splits
from core.errors import HiCXRError
from core.labels import LabelSet
from core.metrics import macro_mean, per_label_auroc
from core.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

SUMMARY_FILE = "cv_summary.json"


class CVError(HiCXRError, RuntimeError):
    """Cross-validation cannot run or be summarised (missing folds, inconsistent runs)."""


def cv_dir(config: Config, folds: int) -> Path:
    """``<train.out_dir>/<name>_cv<k>``: where the folds and the summary go."""
    return resolve_path(config.train.out_dir) / f"{config.name}_cv{folds}"


def fold_config(config: Config, folds: int, fold: int) -> Config:
    """The config of one fold: fold ``fold`` held out, no early stopping, held-out logits saved every epoch."""
    data = replace(config.data, cv_folds=folds, cv_fold=fold, fit_on="train")
    train = replace(config.train, patience=config.train.epochs + 1, keep_epoch=None, save_val_logits=True,
                    out_dir=str(cv_dir(config, folds)))
    return replace(config, name=f"fold{fold}", data=data, train=train)


def _epochs_done(run_dir: Path) -> int:
    state = run_dir / "checkpoints" / "last_state.json"
    if not state.is_file():
        return 0
    return int(json.loads(state.read_text(encoding="utf-8"))["loop"]["epoch"])


def fold_finished(cv_folder: str | Path, fold: int) -> bool:
    """Whether fold ``fold`` of a cross-validation folder has trained all the epochs its config asks for."""
    from core.config import load_config

    fold_dir = Path(cv_folder) / f"fold{fold}"
    config_file = fold_dir / "config.yaml"
    return config_file.is_file() and _epochs_done(fold_dir) >= load_config(config_file).train.epochs


def run_cv(config: Config, folds: int = 5, taxonomy: Taxonomy | None = None,
           only: Sequence[int] | None = None) -> dict[str, Any]:
    """Train every fold (skipping finished ones, resuming interrupted ones), then summarise; returns the summary.

    ``only`` trains just those folds (0-based), so several processes or machines can share one CV: each runs its
    own folds with ``only``, and a last call without it finds them finished and writes the summary. The summary is
    written only once every fold is finished; until then the result says ``complete: false``.

    ``train.stop_after_epochs`` still slices the work: the call returns after that many epochs of the first
    unfinished fold (with ``complete: false`` in the result), and calling again continues.
    """
    from core.trainer import train  # heavy import only when training

    if folds < 2:
        raise CVError(f"cross-validation needs at least 2 folds, got {folds}")
    chosen = sorted(set(range(folds) if only is None else only))
    if not chosen or not all(0 <= fold < folds for fold in chosen):
        raise CVError(f"folds to train must be between 0 and {folds - 1}, got {list(only or [])}")
    taxonomy = taxonomy or load_taxonomy()
    out = cv_dir(config, folds)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.yaml")
    for fold in chosen:
        cfg = fold_config(config, folds, fold)
        done = _epochs_done(cfg.run_dir())
        if done >= config.train.epochs:
            log.info("fold %d/%d already trained (%d epochs)", fold + 1, folds, done)
            continue
        log.info("fold %d/%d: %s", fold + 1, folds, f"resuming at epoch {done + 1}" if done else "starting")
        train(cfg, resume=done > 0, taxonomy=taxonomy)
        if _epochs_done(cfg.run_dir()) < config.train.epochs:
            return {"complete": False, "cv_dir": str(out)}
    if any(_epochs_done(fold_config(config, folds, k).run_dir()) < config.train.epochs for k in range(folds)):
        return {"complete": False, "cv_dir": str(out)}
    summary = summarise_cv(config, folds, taxonomy)
    summary["complete"] = True
    return summary


def _fold_labels(config: Config, folds: int, fold: int, taxonomy: Taxonomy) -> LabelSet:
    return load_splits(fold_config(config, folds, fold), taxonomy)["val"]


def _selected(labels: LabelSet, min_positives: int) -> list[int]:
    pos = ((labels.targets == 1) & labels.mask).sum(axis=0)
    neg = ((labels.targets == 0) & labels.mask).sum(axis=0)
    return [j for j in range(labels.targets.shape[1]) if pos[j] >= min_positives and neg[j] >= 1]


def cv_probabilities(logits: np.ndarray, config: Config, taxonomy: Taxonomy) -> np.ndarray:
    """Probabilities of a CV's logits under its config (the max constraint where the model has it)."""
    import torch

    from core.model import output_probabilities

    descendants = torch.from_numpy(taxonomy.descendant_matrix) if config.model.constraint == "max" else None
    return output_probabilities(torch.from_numpy(logits), descendants).numpy()


def summarise_cv(config: Config, folds: int, taxonomy: Taxonomy | None = None,
                 logits_folder: str = "val_logits") -> dict[str, Any]:
    """Per-epoch fold and pooled OOF AUROCs, the chosen epoch, and the OOF logits of that epoch (written to disk).

    ``logits_folder="val_logits_raw"`` summarises the raw weights of an EMA run instead (written with a ``_raw``
    suffix), so one run measures what the averaging adds.

    Raises:
        CVError: a fold is missing, or its held-out rows do not match the fold assignment.
    """
    taxonomy = taxonomy or load_taxonomy()
    out = cv_dir(config, folds)
    min_pos = config.train.min_val_positives
    fold_sets: list[LabelSet] = []
    fold_logits: list[dict[int, np.ndarray]] = []
    for fold in range(folds):
        labels = _fold_labels(config, folds, fold, taxonomy)
        folder = out / f"fold{fold}" / logits_folder
        rows_file = folder / "rows.txt"
        if not rows_file.is_file():
            raise CVError(f"{folder}: no held-out logits; run the fold first")
        rows = rows_file.read_text(encoding="utf-8").splitlines()
        if rows != list(labels.paths):
            raise CVError(f"{rows_file}: held-out rows differ from fold {fold}'s assignment (data changed?)")
        epochs = {int(p.stem.split("_")[1]): np.load(p, allow_pickle=False) for p in sorted(folder.glob("epoch_*.npy"))}
        fold_sets.append(labels)
        fold_logits.append(epochs)
    common = sorted(set.intersection(*(set(e) for e in fold_logits)))
    if not common:
        raise CVError(f"{out}: the folds share no finished epoch")
    pooled_targets = np.concatenate([s.targets for s in fold_sets])
    pooled_mask = np.concatenate([s.mask for s in fold_sets])
    pooled_sel = _selected_from(pooled_targets, pooled_mask, min_pos)
    per_epoch = []
    for epoch in common:
        fold_values = []
        for labels, logits in zip(fold_sets, fold_logits, strict=True):
            probs = cv_probabilities(logits[epoch], config, taxonomy)
            sel = _selected(labels, min_pos)
            fold_values.append(macro_mean(per_label_auroc(labels.targets[:, sel], probs[:, sel],
                                                          labels.mask[:, sel])))
        pooled = cv_probabilities(np.concatenate([lg[epoch] for lg in fold_logits]), config, taxonomy)
        oof = macro_mean(per_label_auroc(pooled_targets[:, pooled_sel], pooled[:, pooled_sel],
                                         pooled_mask[:, pooled_sel]))
        defined = [v for v in fold_values if v is not None]
        per_epoch.append({
            "epoch": epoch,
            "fold_macro_auroc": fold_values,
            "mean": float(np.mean(defined)) if defined else None,
            "std": float(np.std(defined, ddof=1)) if len(defined) > 1 else None,
            "oof_macro_auroc": oof,
        })
    best = max(per_epoch, key=lambda r: (r["mean"] is not None, r["mean"] or 0.0))
    chosen = best["epoch"]
    oof_logits = np.concatenate([lg[chosen] for lg in fold_logits]).astype(np.float32)
    oof_probs = cv_probabilities(oof_logits, config, taxonomy)
    per_label = per_label_auroc(pooled_targets, oof_probs, pooled_mask)
    positives = ((pooled_targets == 1) & pooled_mask).sum(axis=0)
    suffix = "" if logits_folder == "val_logits" else "_raw"
    np.save(out / f"oof_logits{suffix}.npy", oof_logits, allow_pickle=False)
    with (out / f"oof_rows{suffix}.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "fold"])
        for fold, labels in enumerate(fold_sets):
            writer.writerows([p, fold] for p in labels.paths)
    summary = {
        "name": config.name,
        "folds": folds,
        "images": int(len(pooled_targets)),
        "epochs": common,
        "per_epoch": per_epoch,
        "chosen_epoch": chosen,
        "cv_macro_auroc_mean": best["mean"],
        "cv_macro_auroc_std": best["std"],
        "cv_fold_macro_auroc": best["fold_macro_auroc"],
        "oof_macro_auroc": best["oof_macro_auroc"],
        "oof_labels": [taxonomy.labels[j] for j in pooled_sel],
        "oof_per_label_auroc": {label: per_label[j] for j, label in enumerate(taxonomy.labels)},
        "oof_positives": {label: int(positives[j]) for j, label in enumerate(taxonomy.labels)},
        "rule": (f"fold AUROC: macro over labels with >= {min_pos} positives in the held-out fold; OOF: all "
                 f"train+val images predicted by the fold model that did not see them, macro over labels with >= "
                 f"{min_pos} positives; chosen epoch: highest mean fold AUROC"),
    }
    summary["weights"] = "raw" if suffix else "as trained (EMA where train.ema_decay > 0)"
    (out / SUMMARY_FILE.replace(".json", f"{suffix}.json")).write_text(json.dumps(summary, indent=1),
                                                                       encoding="utf-8")
    plot_cv_curve(summary, out / f"cv_curve{suffix}.png")
    return summary


def _selected_from(targets: np.ndarray, mask: np.ndarray, min_positives: int) -> list[int]:
    pos = ((targets == 1) & mask).sum(axis=0)
    neg = ((targets == 0) & mask).sum(axis=0)
    return [j for j in range(targets.shape[1]) if pos[j] >= min_positives and neg[j] >= 1]


def load_cv_summary(folder: str | Path) -> dict[str, Any]:
    """Read ``cv_summary.json`` from a cross-validation folder; :class:`CVError` if it is missing."""
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        raise CVError(f"{path}: no cross-validation summary (run `train.py --cv K` first)")
    return json.loads(path.read_text(encoding="utf-8"))


def fit_overrides(folder: str | Path) -> list[str]:
    """Config overrides that fit the final model as the cross-validation in ``folder`` chose it.

    Train on train+val, stop at the chosen epoch, and keep the CV's schedule length: the learning rate at epoch
    ``k`` of a cosine schedule depends on how many epochs it spans, so the chosen epoch means the same only under
    the same ``train.epochs`` (a CV run with ``--epochs 12`` must not be fitted with a config's 15).

    Raises:
        CVError: the folder has no summary or no saved config.
    """
    import yaml

    summary = load_cv_summary(folder)
    saved = Path(folder) / "config.yaml"
    if not saved.is_file():
        raise CVError(f"{saved}: missing (the cross-validation saves its config there; run it again)")
    try:
        epochs = int(yaml.safe_load(saved.read_text(encoding="utf-8"))["train"]["epochs"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise CVError(f"{saved}: no readable train.epochs ({type(exc).__name__})") from None
    return ["data.fit_on=train+val", f"train.epochs={epochs}", f"train.keep_epoch={int(summary['chosen_epoch'])}"]


def plot_cv_curve(summary: dict[str, Any], path: str | Path) -> Path:
    """Mean fold macro AUROC (band: +-1 std), each fold, and the pooled OOF AUROC per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["per_epoch"]
    epochs = [r["epoch"] for r in rows]
    mean = np.array([r["mean"] if r["mean"] is not None else np.nan for r in rows])
    std = np.array([r["std"] if r["std"] is not None else 0.0 for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    for k in range(summary["folds"]):
        vals = [r["fold_macro_auroc"][k] if r["fold_macro_auroc"][k] is not None else np.nan for r in rows]
        ax.plot(epochs, vals, color="0.75", lw=0.8, label="folds" if k == 0 else None)
    ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color="C0")
    ax.plot(epochs, mean, color="C0", lw=2, label="mean of folds (+-1 sd)")
    ax.plot(epochs, [r["oof_macro_auroc"] for r in rows], color="C1", lw=1.5, ls="--", label="pooled out-of-fold")
    ax.axvline(summary["chosen_epoch"], color="k", ls=":", lw=1, label=f"chosen epoch {summary['chosen_epoch']}")
    ax.set(xlabel="epoch", ylabel="macro AUROC", title=f"{summary['name']}: {summary['folds']}-fold CV")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def load_oof(config: Config, cv_folder: str | Path, taxonomy: Taxonomy | None = None
             ) -> tuple[np.ndarray, LabelSet, np.ndarray]:
    """The chosen epoch's out-of-fold logits ``(N, L)``, their labels (folds concatenated) and fold numbers.

    Raises:
        CVError: the folder has no summary or logits, or its rows no longer match the data.
    """
    taxonomy = taxonomy or load_taxonomy()
    folder = Path(cv_folder)
    summary = load_cv_summary(folder)
    folds = int(summary["folds"])
    logits_path = folder / "oof_logits.npy"
    if not logits_path.is_file():
        raise CVError(f"{logits_path}: missing (re-run the cross-validation summary)")
    logits = np.load(logits_path, allow_pickle=False)
    sets = [_fold_labels(config, folds, k, taxonomy) for k in range(folds)]
    fold_of = np.concatenate([np.full(len(s), k) for k, s in enumerate(sets)])
    labels = _concat(sets)
    with (folder / "oof_rows.csv").open(encoding="utf-8") as f:
        rows = [r["path"] for r in csv.DictReader(f)]
    if rows != list(labels.paths) or len(logits) != len(labels):
        raise CVError(f"{folder}: out-of-fold rows differ from the current fold assignment (data or config changed)")
    return logits, labels, fold_of


def fold_weights(cv_folder: str | Path, fold: int) -> Path:
    """The final weights of a fold model (the EMA weights when the run kept them)."""
    ckpt = Path(cv_folder) / f"fold{fold}" / "checkpoints"
    for name in ("last_ema.safetensors", "last.safetensors"):
        if (ckpt / name).is_file():
            return ckpt / name
    raise CVError(f"{ckpt}: no fold weights")


def _concat(sets: list[LabelSet]) -> LabelSet:
    import pandas as pd

    return LabelSet(paths=[p for s in sets for p in s.paths], targets=np.concatenate([s.targets for s in sets]),
                    mask=np.concatenate([s.mask for s in sets]), labels=sets[0].labels,
                    metadata=pd.concat([s.metadata for s in sets], ignore_index=True))
