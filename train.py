"""Train a HiCXR variant from a YAML config (thin CLI over :mod:`core.trainer`).

Examples::

    python train.py --config configs/nih_hbce_soft_data.yaml --export weights/hbce_soft
    python train.py --config configs/nih_bce.yaml --set optim.lr=1e-4 --set train.batch_size=16
    python train.py --config configs/nih_bce.yaml --resume           # continue runs/nih_bce/ from its last epoch
    torchrun --nproc_per_node=2 train.py --config configs/nih_hbce_soft_data.yaml   # DDP (gloo on CPU, nccl on GPU)
    python train.py --config configs/nih_hbce_soft_data.yaml --cv 5     # patient-level 5-fold CV over train+val
    python train.py --config configs/nih_bce.yaml --cv 5 --fold 0 --fold 2   # only those folds (share a CV)
    python train.py --config configs/nih_hbce_soft_data.yaml --fit-from-cv runs/nih_hbce_soft_cv5 --export weights/X

Writes ``runs/<name>/`` (``config.yaml``, ``metrics.csv``, ``checkpoints/``); with ``--export weights/VARIANT``
also ``weights/VARIANT.safetensors`` (fp16), ``weights/VARIANT.json`` (model card with test metrics) and the
ROC and calibration plots.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from core.config import load_config, resolve_path
from core.errors import HiCXRError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description="Train a HiCXR variant from a YAML config.")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/nih_hbce_soft_data.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from runs/<name>/checkpoints/last")
    parser.add_argument("--export", metavar="weights/VARIANT", help="export the best model and its model card")
    parser.add_argument("--epochs", type=int, help="shorthand for --set train.epochs=N")
    parser.add_argument("--name", help="shorthand for --set name=NAME (the run folder)")
    parser.add_argument("--cv", type=int, metavar="K", help="patient-level K-fold cross-validation over train+val "
                        "(resumable; writes runs/<name>_cvK/ with cv_summary.json); no export")
    parser.add_argument("--fold", type=int, action="append", metavar="I",
                        help="with --cv: train only fold I (0-based; repeatable), so processes or machines can share "
                        "one CV; a last --cv run without --fold summarises once every fold is finished")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME",
                        help="with --export: another name of the exported model (repeatable)")
    parser.add_argument("--fit-from-cv", metavar="DIR", help="train on train+val for the epoch chosen by the "
                        "cross-validation in DIR (same schedule), e.g. runs/nih_hbce_soft_cv5")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run training (and export); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.name:
        overrides.append(f"name={args.name}")
    config_path = Path(args.config)
    if not config_path.exists():  # also accept a path relative to the repository root
        config_path = resolve_path(args.config)
    try:
        config = load_config(config_path, overrides)
    except HiCXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Heavy imports (torch) only once the config is known to be valid: config mistakes are answered at once.
    from core.crossval import fit_overrides, run_cv
    from core.distributed import cleanup_distributed
    from core.trainer import train

    try:
        if args.cv:
            summary = run_cv(config, args.cv, only=args.fold)
            if summary.get("complete"):
                print(f"{args.cv}-fold CV of {config.name}: macro AUROC {summary['cv_macro_auroc_mean']:.4f} "
                      f"+- {summary['cv_macro_auroc_std']:.4f} (folds), pooled out-of-fold "
                      f"{summary['oof_macro_auroc']:.4f}, at epoch {summary['chosen_epoch']}")
            elif args.fold:
                print(f"fold(s) {', '.join(map(str, args.fold))} trained; run --cv {args.cv} without --fold to "
                      "summarise once every fold is finished")
            else:
                print("CV paused (train.stop_after_epochs); run the same command again to continue")
            return 0
        if args.fit_from_cv:
            overrides += fit_overrides(resolve_path(args.fit_from_cv))
            config = load_config(config_path, overrides)
        result = train(config, resume=args.resume)
        if args.export and result.info.is_main:
            from core.export import export_variant

            card = export_variant(result, resolve_path(args.export), argv, cv_dir=args.fit_from_cv,
                                  aliases=args.alias)
            test = card.split_metrics("test")
            print(f"exported {args.export}: test macro AUROC {test.macro_auroc}, "
                  f"weighted AUROC {test.weighted_auroc}, ECE {test.ece}")
    except HiCXRError as exc:  # every error of the project: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
