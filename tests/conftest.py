"""Shared fixtures: paths to the real data in ../shared/data and the default taxonomy."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.taxonomy import Taxonomy, load_taxonomy

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Every key an exported model card has (the schema of core/card.py, written by core/export.py).
CARD_KEYS = ("variant", "created", "model", "taxonomy", "preprocessing", "loss", "penalty_table", "calibration",
             "training", "data", "metrics", "reproduce", "intended_use", "limitations", "training_positives",
             "labels_not_learnt", "labels_not_learnt_rule", "operating_points", "ood", "tensor_sha256")


def write_tiny_nih_csv(shared_data: Path, path: Path, thumbnails: int, larger: int, val: int, test: int) -> Path:
    """A small real NIH label table: train rows (64 px thumbnails and larger images), then val and test rows."""
    import pandas as pd

    df = pd.read_csv(shared_data / "nih" / "labels.csv")
    train = df[df.split == "train"]
    rows = pd.concat([train[train.stored_size == "64x64"].head(thumbnails),
                      train[train.stored_size != "64x64"].head(larger),
                      df[df.split == "val"].head(val), df[df.split == "test"].head(test)])
    rows.to_csv(path, index=False)
    return path
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (CI puts it there)."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.fail(f"real data not found at {path}: the tests need ../shared beside the repository")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` (paper facts and the official model's test predictions)."""
    return SHARED / "reference"


@pytest.fixture(scope="session")
def taxonomy() -> Taxonomy:
    """The packaged 21-label taxonomy."""
    return load_taxonomy()


# ------------------------------------------------------------------------------ small model variants on disk

NIH_SOURCE = {
    "name": "NIH ChestX-ray14",
    "url": "https://nihcc.app.box.com/v/ChestXray-NIHCC",
    "licence": "no restrictions; attribution required",
    "citation": "Wang X. et al., ChestX-ray8, CVPR 2017",
}


def make_model_card(model, variant: str, *, test_macro_auroc: float | None = None,
                    temperature: list[float] | None = None, not_learnt: tuple[str, ...] = (),
                    operating_points: dict[str, float] | None = None) -> dict:
    """A model card following the project schema for ``model`` (metrics are placeholders unless given).

    ``not_learnt`` labels get 0 training positives; ``operating_points`` maps labels to thresholds, and the card's
    ``call_evidence`` declares exactly those labels callable at them (every other label reads "no call").
    """
    from datetime import date

    from core.taxonomy import load_taxonomy

    config = model.config
    taxonomy = load_taxonomy()

    def split(auroc: float | None) -> dict:
        per_label = {label: {"auroc": auroc, "auroc_ci": None} for label in config.labels}
        return {"macro_auroc": auroc, "per_label": per_label}

    metrics = {"val": split(None), "test": split(test_macro_auroc)}
    return {
        "variant": variant,
        "created": date.today().isoformat(),
        "model": {k: getattr(config, k) for k in ("labels", "taxonomy_hash", "backbone", "in_channels", "input_size",
                                                   "dropout", "mean", "std", "extra")},
        "taxonomy": {"name": taxonomy.name, "hash": taxonomy.hash, "edges": taxonomy.to_dict()["edges"]},
        "preprocessing": {"input_size": config.input_size, "in_channels": config.in_channels, "mean": config.mean,
                          "std": config.std, "resize": "squash, antialiased bilinear", "input": "grayscale in [0,1]"},
        "loss": {"lambda": 0.0 if variant == "bce" else 1.0,
                 "penalty_source": "none" if variant == "bce" else "data_driven",
                 "violation": "soft" if variant.endswith("soft") else "hard", "fixed_value": None},
        "penalty_table": [],
        "calibration": ({"temperature": temperature, "fitted_on": "val", "applied": True}
                        if temperature is not None else None),
        "training": {"config": {}, "epochs_run": 0, "best_epoch": 0, "best_val_macro_auroc": None, "seconds": 0.0},
        "data": {"train_images": 0, "val_images": 0, "test_images": 0, "sources": [NIH_SOURCE],
                 "attribution": "NIH Clinical Center"},
        "metrics": metrics,
        "reproduce": "random-init test model",
        "training_positives": {label: 0 if label in not_learnt else 50 for label in config.labels},
        "labels_not_learnt": list(not_learnt),
        "labels_not_learnt_rule": "fewer than 10 known positive training images",
        "operating_points": {label: {"threshold": t, "target_sensitivity": 0.8, "sensitivity": 0.8,
                                     "specificity": 0.5, "positives": 20, "negatives": 100}
                             for label, t in (operating_points or {}).items()},
        "call_evidence": {"source": "test fixture", "labels": {
            label: {"auroc": 0.8, "auroc_ci": [0.7, 0.9], "ci_method": "test fixture", "positives": 20,
                    "negatives": 100, "threshold": t, "sensitivity": 0.8, "specificity": 0.8, "callable": True}
            for label, t in (operating_points or {}).items()}},
        "intended_use": "tests only",
        "limitations": "random weights: the outputs mean nothing",
    }


def make_test_model(seed: int = 0, input_size: int = 64, dropout: float = 0.5):
    """A seeded random-init model whose head outputs are spread (logits of a few units), in eval mode.

    The global RNG is left as it was.
    """
    import torch

    from core.model import ModelConfig, build_model

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(ModelConfig.for_taxonomy(input_size=input_size, dropout=dropout))
        with torch.no_grad():
            # Random init gives logits near 0 (probabilities near 0.5); a larger head spreads them so thresholds,
            # violations and MC spread are exercised.
            model.classifier.weight.mul_(4.0)
            model.classifier.bias.normal_(0.0, 1.5)
    return model.eval()


def make_weights_dir(tmp_path: Path, variants: tuple[str, ...] = ("bce", "hbce_soft"), input_size: int = 64,
                     dropout: float = 0.5, temperatures: dict[str, list[float]] | None = None,
                     default: str | None = None, not_learnt: tuple[str, ...] = (),
                     operating_points: dict[str, float] | None = None) -> Path:
    """Write small random-init variants (``<name>.safetensors`` + ``<name>.json``) into ``tmp_path/weights``.

    Variant ``i`` gets seed ``i`` and a placeholder test macro AUROC of ``0.7 + 0.01 * i`` (so the last one is the
    best by metric); ``temperatures`` adds applied calibration per variant; ``default`` writes ``default.json``.
    """
    import json

    from core.model import save_model

    folder = Path(tmp_path) / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(variants):
        model = make_test_model(seed=i, input_size=input_size, dropout=dropout)
        save_model(model, folder / f"{name}.safetensors")
        card = make_model_card(model, name, test_macro_auroc=0.7 + 0.01 * i,
                               temperature=(temperatures or {}).get(name), not_learnt=not_learnt,
                               operating_points=operating_points)
        (folder / f"{name}.json").write_text(json.dumps(card, indent=1))
    if default is not None:
        (folder / "default.json").write_text(json.dumps({"default": default}))
    return folder


@pytest.fixture
def tiny_weights_dir(tmp_path: Path) -> Path:
    """``tmp_path/weights`` with two small random variants, ``bce`` and ``hbce_soft`` (64 px)."""
    return make_weights_dir(tmp_path)


@pytest.fixture(autouse=True, scope="session")
def _audit_log_outside_repo(tmp_path_factory):
    """Dashboards run by the tests (AppTest and servers) write their audit trail to a temporary file."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HICXR_AUDIT_LOG", str(tmp_path_factory.mktemp("audit") / "audit.jsonl"))
    yield
    mp.undo()


# ------------------------------------------------------------------------------ the development PACS (Orthanc)


@pytest.fixture(scope="session")
def dev_pacs(shared_data: Path):
    """A real Orthanc (loopback, free port, generated credentials, DICOMweb) seeded with the real DICOMs of
    ``../shared/data/dicom``, NIH films wrapped as made-up DX studies, a CT, an SR-only and a lateral-only study;
    stopped by its pid at the end of the session."""
    from core.pacs.devserver import start_seeded

    pacs = start_seeded(shared_data, nih_count=3)
    yield pacs
    pacs.stop()
