"""The shipped variants in weights/: complete model cards whose test figures the weights really reproduce."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from conftest import CARD_KEYS, REPO_ROOT

from core.evaluate import evaluate_variants
from core.registry import default_variant, scan_weights

VARIANTS = ("bce", "hbce_fixed", "hbce_data", "hbce_soft")


@pytest.fixture(scope="module")
def scan():
    return scan_weights(REPO_ROOT / "weights")


def test_all_four_variants_ship_with_complete_cards(scan, taxonomy):
    assert scan.problems == []
    assert sorted(scan.names()) == sorted(VARIANTS)
    for variant in scan.variants:
        card = variant.card.to_dict()
        assert all(k in card for k in CARD_KEYS), [k for k in CARD_KEYS if k not in card]
        assert card["taxonomy"]["hash"] == taxonomy.hash
        assert "train.py --config configs/nih_" in card["reproduce"]
        test = card["metrics"]["test"]
        assert test["n_images"] == 122 and test["macro_auroc_ci"] is not None
        assert len(card["penalty_table"]) == 20
        assert "NIH Clinical Center" in card["data"]["attribution"]


def test_default_is_best_by_test_macro_auroc(scan):
    best = max(scan.variants, key=lambda v: v.test_macro_auroc)
    assert default_variant(REPO_ROOT / "weights") == best.name


def test_weights_reproduce_their_cards_test_figures(scan, shared_data):
    prefixes = [REPO_ROOT / "weights" / name for name in VARIANTS]
    results = evaluate_variants(prefixes, shared_data / "nih" / "labels.csv", shared_data / "nih" / "images",
                                split="test", n_boot=0)
    for variant in scan.variants:
        card_test = variant.card.split_metrics("test")
        got = results[variant.name]
        # fp16 storage moves probabilities by ~1e-3 at most: ranks (AUROC) barely change
        assert got["macro_auroc"] == pytest.approx(card_test["macro_auroc"], abs=2e-3), variant.name
        assert got["ece"] == pytest.approx(card_test["ece"], abs=5e-3), variant.name


@pytest.mark.slow
def test_cli_analyses_every_dicom_and_other_image(tmp_path, shared_data):
    out = tmp_path / "results.csv"
    files = sorted(p for d in ("dicom", "other") for p in (shared_data / d).rglob("*")
                   if p.is_file() and p.suffix.lower() in (".dcm", ".png", ".jpg", ".jpeg"))
    proc = subprocess.run([sys.executable, "-m", "core.predict", str(shared_data / "dicom"),
                           str(shared_data / "other"), "--variant", "all", "--out", str(out), "--no-progress"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(files) * len(VARIANTS)
    assert all(r["error"] == "" for r in rows)
    assert all(0.0 <= float(r["Abnormal"]) <= 1.0 for r in rows)
