"""Pretrain the DenseNet121 backbone on every radiograph available (thin CLI over :mod:`core.pretrain`).

Examples::

    python pretrain.py --config configs/pretrain_supervised.yaml
    python pretrain.py --config configs/pretrain_simclr.yaml --set train.stop_after_epochs=2   # slice a CPU run
    python pretrain.py --config configs/pretrain_simclr.yaml --resume                          # ... and continue

Writes ``runs/<name>/`` (``config.yaml``, ``metrics.csv``, ``checkpoints/``, ``backbone.safetensors``). Use the
backbone with ``train.py --config configs/nih_bce.yaml --set model.pretrained=runs/<name>/backbone.safetensors``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from core.config import resolve_path
from core.errors import HiCXRError


def main(argv: Sequence[str] | None = None) -> int:
    """Run pretraining; returns the exit status (2 for a config or data problem)."""
    parser = argparse.ArgumentParser(description="Pretrain the HiCXR backbone (supervised, SimCLR or both).")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/pretrain_supervised.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from runs/<name>/checkpoints/last")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from core.pretrain import completed_epochs, load_pretrain_config, pretrain

    path = Path(args.config)
    if not path.exists():
        path = resolve_path(args.config)
    try:
        config = load_pretrain_config(path, args.overrides)
        backbone = pretrain(config, resume=args.resume)
    except HiCXRError as exc:  # config, data, checkpoint, device...: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if backbone is None:
        print(f"stopped after epoch {completed_epochs(config)} of {config.train.epochs}; the backbone is written "
              f"when the run finishes: continue with --resume")
    else:
        print(f"backbone: {backbone}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
