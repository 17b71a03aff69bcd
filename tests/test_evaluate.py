"""core.evaluate CLI and core.export temperature scaling, on real NIH test images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from core.calibration import apply_temperature, fit_temperature
from core.card import write_json as write_model_card
from core.evaluate import main, predict_dataset
from core.imaging import read_image
from core.labels import read_label_csv
from core.model import ModelConfig, build_model, save_model
from core.preprocess import to_model_input


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine's 2 cores are shared; oversubscribed threads crawl
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(shared_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    df = pd.read_csv(shared_data / "nih" / "labels.csv")
    rows = pd.concat([df[df.split == "val"].head(10), df[df.split == "test"].head(24)])
    path = tmp_path_factory.mktemp("tiny") / "labels.csv"
    rows.to_csv(path, index=False)
    return path, shared_data / "nih" / "images"


@pytest.fixture(scope="module")
def variants(tmp_path_factory, taxonomy) -> Path:
    """Two variants with the same weights: ``scaled`` applies temperature 3, ``raw`` has calibration not applied."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_model(ModelConfig.for_taxonomy(taxonomy, input_size=64)).eval()
    save_model(model, folder / "scaled.safetensors")
    shutil.copy(folder / "scaled.safetensors", folder / "raw.safetensors")
    temps = [3.0] * taxonomy.num_labels
    write_model_card({"variant": "scaled", "calibration": {"temperature": temps, "applied": True}},
                     folder / "scaled.json")
    write_model_card({"variant": "raw", "calibration": {"temperature": temps, "applied": False}},
                     folder / "raw.json")
    return folder


def test_fit_temperature_recovers_a_known_scale_on_real_labels(tiny, taxonomy):
    labels = read_label_csv(tiny[0])
    y, m = labels.targets, labels.mask
    rng = np.random.default_rng(0)
    # Calibrated logits for the real label matrix, then made 4x over-confident: the fit must undo the factor.
    z_true = np.where(y == 1, 1.5, -1.5) + rng.normal(0, 1.5, y.shape)
    noisy = np.tile(z_true, (40, 1))
    y_big = (rng.random(noisy.shape) < apply_temperature(noisy, None)).astype(float)
    t = fit_temperature(4.0 * noisy, y_big, np.tile(m, (40, 1)))
    fitted = np.tile(m, (40, 1)).sum(0) > 0
    np.testing.assert_allclose(t[fitted], 4.0, rtol=0.15)
    assert np.all((t >= 0.05) & (t <= 20.0))
    # Columns without both classes (or with too few of one) keep T = 1.
    y_one_class = np.zeros_like(y_big)
    assert np.all(fit_temperature(noisy, y_one_class) == 1.0)


def test_temperature_never_changes_the_ranking(taxonomy):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (50, 3))
    p, q = apply_temperature(z, None), apply_temperature(z, [0.3, 5.0, 1.0])
    y = (rng.random((50, 3)) < p).astype(int)
    for j in range(3):
        assert roc_auc_score(y[:, j], p[:, j]) == pytest.approx(roc_auc_score(y[:, j], q[:, j]))


def test_evaluate_cli_compares_variants_with_the_inference_contract(tiny, variants, tmp_path, taxonomy, capsys):
    csv, images = tiny
    out = tmp_path / "report"
    code = main(["--weights", str(variants / "scaled"), str(variants / "raw"), "--csv", str(csv), "--images",
                 str(images), "--split", "test", "--out", str(out), "--n-boot", "20"])
    text = capsys.readouterr().out
    assert code == 0
    header = next(line for line in text.splitlines() if line.startswith("label (AUROC)"))
    assert "scaled" in header and "raw" in header
    report = json.loads((out / "metrics.json").read_text())
    scaled, raw = report["results"]["scaled"], report["results"]["raw"]
    assert scaled["n_images"] == raw["n_images"] == 24
    assert scaled["temperature_applied"] and not raw["temperature_applied"]
    assert scaled["macro_auroc"] == pytest.approx(raw["macro_auroc"])  # temperature keeps the ranking
    assert scaled["ece"] != pytest.approx(raw["ece"])
    assert (out / "roc_scaled.png").stat().st_size < 200_000 and (out / "calibration.png").is_file()
    # The numbers are those of single-image inference through core.preprocess (the one input contract).
    from core.model import load_model

    model = load_model(variants / "raw.safetensors", taxonomy)
    labels = read_label_csv(csv).subset(np.arange(10, 34))
    with torch.no_grad():
        probs = torch.sigmoid(torch.cat([model(to_model_input(read_image(images / p).pixels, model.config))
                                         for p in labels.paths])).numpy()
    for j, label in enumerate(taxonomy.labels):
        known = labels.mask[:, j]
        ys = labels.targets[known, j]
        if len(np.unique(ys)) == 2:
            assert raw["per_label"][label]["auroc"] == pytest.approx(roc_auc_score(ys, probs[known, j]), abs=1e-6)


def test_predict_dataset_keeps_row_order(tiny, variants, taxonomy):
    from core.data import XrayDataset
    from core.model import load_model

    csv, images = tiny
    labels = read_label_csv(csv).subset(np.arange(6))
    model = load_model(variants / "raw.safetensors", taxonomy)
    ds = XrayDataset(labels, images, 64, progress=False)
    logits = predict_dataset(model, ds, batch_size=4)
    with torch.no_grad():
        one = model(to_model_input(read_image(images / labels.paths[5]).pixels, model.config)).numpy()
    np.testing.assert_allclose(logits[5], one[0], atol=1e-4)


def test_evaluate_cli_names_missing_weights_and_columns(tiny, variants, tmp_path, capsys):
    csv, images = tiny
    code = main(["--weights", str(tmp_path / "ghost"), "--csv", str(csv), "--images", str(images)])
    assert code == 2 and "ghost.safetensors" in capsys.readouterr().err
    pd.read_csv(csv).drop(columns=["Finding Labels"]).to_csv(tmp_path / "broken.csv", index=False)
    code = main(["--weights", str(variants / "raw"), "--csv", str(tmp_path / "broken.csv"), "--images",
                 str(images)])
    err = capsys.readouterr().err
    assert code == 2 and "broken.csv" in err


def test_paired_cli_gives_zero_for_the_same_ranking_and_names_same_named_variants_apart(tiny, variants, tmp_path,
                                                                                       capsys):
    csv, images = tiny
    twin = tmp_path / "retrained"
    twin.mkdir()
    for suffix in (".safetensors", ".json"):  # another folder's variant of the same name
        shutil.copy(variants / f"scaled{suffix}", twin / f"scaled{suffix}")
    code = main(["--paired", "--weights", str(variants / "scaled"), str(variants / "raw"), str(twin / "scaled"),
                 "--csv", str(csv), "--images", str(images), "--split", "all", "--n-boot", "50"])
    captured = capsys.readouterr()
    text = captured.out
    assert code == 0, captured.err
    summaries = [line for line in text.splitlines() if line.startswith("macro AUROC")]
    assert len(summaries) == 2  # raw against scaled, retrained/scaled against scaled
    assert "scaled" in summaries[0] and "raw" in summaries[0] and "retrained/scaled" in summaries[1]
    # Temperature and a copy of the weights change no ranking: the difference and its interval are exactly 0.
    assert all("difference +0.000 (paired patient bootstrap 95% CI +0.000 to +0.000" in s for s in summaries)
    with pytest.raises(SystemExit):
        main(["--paired", "--weights", str(variants / "raw"), "--csv", str(csv), "--images", str(images)])
