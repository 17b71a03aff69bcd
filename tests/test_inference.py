"""Predictor on real NIH PNGs and DICOMs with small random-init variants (64 px)."""

from __future__ import annotations

import copy
import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_test_model, make_weights_dir

from core.analysis import find_violations
from core.head import class_activation_maps, dropout_masks
from core.imaging import EmptyFileError, ImageError, read_image
from core.inference import Predictor
from core.registry import RegistryError

NIH_PNGS = ("00000317_003.png", "00000344_002.png", "00000348_000.png")
DICOMS = ("txv_SIIM_CR_MONO2_JPEG_baseline_chestPA.dcm", "fodicom_CR-MONO1-10-chest.dcm")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("inf"))


@pytest.fixture(scope="module")
def predictor(weights: Path) -> Predictor:
    torch.set_num_threads(1)
    return Predictor(weights, "all")


@pytest.fixture(scope="module")
def files(shared_data: Path) -> list[Path]:
    return [shared_data / "nih" / "images" / n for n in NIH_PNGS] + [shared_data / "dicom" / n for n in DICOMS]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_default_and_all_variants(weights: Path, predictor: Predictor) -> None:
    assert predictor.variant_names == ["bce", "hbce_soft"]
    assert Predictor(weights).variant_names == ["hbce_soft"]  # best test macro AUROC in the cards
    assert predictor.get("bce").variant.card_path == weights / "bce.json"
    with pytest.raises(KeyError, match="not loaded; loaded: bce, hbce_soft"):
        predictor.get("hbce_data")
    with pytest.raises(RegistryError, match="no variant 'hbce_data'"):
        Predictor(weights, ["hbce_data"])


def test_no_usable_variant(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    with pytest.raises(RegistryError, match="no usable model variant"):
        Predictor(tmp_path / "w")


def test_analysis_on_real_pngs_and_dicoms(predictor: Predictor, files: list[Path], taxonomy) -> None:
    n_labels = taxonomy.num_labels
    for path in files:
        results = predictor.analyse_all(path)
        assert set(results) == {"bce", "hbce_soft"}
        expected = read_image(path)
        for name, a in results.items():
            assert a.model_id == name
            assert a.labels == list(taxonomy.labels)
            for arr in (a.probability, a.mc_mean, a.mc_std):
                assert arr.shape == (n_labels,) and arr.dtype == np.float32
            assert np.all((a.probability >= 0) & (a.probability <= 1))
            assert np.all((a.mc_mean >= 0) & (a.mc_mean <= 1))
            assert np.all(a.mc_std > 0)  # dropout 0.5: every label varies across masks
            assert a.mc_samples == 10
            assert a.cams.shape == (n_labels, 2, 2)  # 64 px / 32
            assert a.cams.min() >= 0 and np.allclose(a.cams.max(axis=(1, 2))[a.cams.max(axis=(1, 2)) > 0], 1.0)
            assert a.image.shape == expected.pixels.shape and np.array_equal(a.image, expected.pixels)
            assert a.image_metadata == expected.metadata.to_dict()
            assert a.image_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
            assert set(a.timings) == {"decode", "preprocess", "backbone", "mc", "cam", "total"}
            assert a.timings["total"] == pytest.approx(sum(v for k, v in a.timings.items() if k != "total"))
            assert a.violations == find_violations(a.mc_mean, taxonomy, 0.5)
        assert not np.allclose(results["bce"].probability, results["hbce_soft"].probability)


def test_deterministic_probability_is_the_eval_forward(predictor: Predictor, files: list[Path]) -> None:
    image = read_image(files[0])
    model = predictor.get("bce").model
    with torch.no_grad():
        logits = model(predictor.model_input(image, "bce"))
    a = predictor.analyse(image, "bce")
    np.testing.assert_allclose(a.probability, torch.sigmoid(logits)[0].numpy(), rtol=1e-5, atol=1e-6)
    assert a.image_sha256 == hashlib.sha256(image.pixels.tobytes()).hexdigest()


def test_bytes_and_path_inputs_agree(predictor: Predictor, files: list[Path]) -> None:
    by_path = predictor.analyse(files[3])
    by_bytes = predictor.analyse(files[3].read_bytes())
    np.testing.assert_array_equal(by_path.mc_mean, by_bytes.mc_mean)
    assert by_path.image_sha256 == by_bytes.image_sha256


def test_seeded_reproducibility(predictor: Predictor, files: list[Path]) -> None:
    image = read_image(files[1])
    a, b = predictor.analyse(image, seed=7), predictor.analyse(image, seed=7)
    np.testing.assert_array_equal(a.mc_mean, b.mc_mean)
    np.testing.assert_array_equal(a.mc_std, b.mc_std)
    c = predictor.analyse(image, seed=8)
    assert not np.array_equal(a.mc_mean, c.mc_mean)
    np.testing.assert_array_equal(a.probability, c.probability)  # the deterministic pass does not use the seed


def test_mc_std_zero_without_sampling_spread(predictor: Predictor, files: list[Path]) -> None:
    image = read_image(files[0])
    one = predictor.analyse(image, mc_samples=1)
    assert one.mc_samples == 1 and np.all(one.mc_std == 0)
    no_dropout = Predictor.from_model(make_test_model(seed=3, dropout=0.0), "nodrop")
    a = no_dropout.analyse(image, mc_samples=10)
    assert np.all(a.mc_std == 0)
    np.testing.assert_allclose(a.mc_mean, a.probability, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="mc_samples must be >= 1"):
        predictor.analyse(image, mc_samples=0)


def test_mc_mean_matches_independent_dropout_passes(predictor: Predictor, files: list[Path]) -> None:
    """The engine's masks vs torch's own nn.Dropout in train mode on a private copy (global RNG)."""
    image = read_image(files[2])
    n = 4000
    a = predictor.analyse(image, "hbce_soft", mc_samples=n, seed=1)
    private = copy.deepcopy(predictor.get("hbce_soft").model).eval()
    private.dropout.train()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(123)
        feats = private.forward_features(predictor.model_input(image, "hbce_soft"))
        probs = torch.sigmoid(torch.cat([private.forward_head(feats) for _ in range(n)])).numpy()
    np.testing.assert_allclose(a.mc_mean, probs.mean(0), atol=0.02)
    np.testing.assert_allclose(a.mc_std, probs.std(0), atol=0.02)
    assert np.abs(a.mc_mean - a.probability).max() > 0.01  # sigmoid is non-linear: MC mean is not the eval output


def test_dropout_masks() -> None:
    m = dropout_masks(2000, 1024, 0.5, seed=0)
    assert set(np.unique(m.numpy())) == {0.0, 2.0}
    assert abs(float((m > 0).float().mean()) - 0.5) < 0.01
    assert torch.equal(m, dropout_masks(2000, 1024, 0.5, seed=0))
    assert torch.equal(dropout_masks(3, 4, 0.0, 0), torch.ones(3, 4))


def test_model_untouched_and_unhooked(predictor: Predictor, files: list[Path]) -> None:
    model = predictor.get("bce").model
    before = _state(model)
    predictor.analyse(files[0], "bce")
    list(predictor.iter_analyses(files[:2]))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in model.modules())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


def test_thread_safety(predictor: Predictor, files: list[Path]) -> None:
    data = files[0].read_bytes()
    reference = predictor.analyse_all(data)
    results: list = [None] * 4
    errors: list = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = predictor.analyse_all(data)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        for name in reference:
            np.testing.assert_array_equal(r[name].mc_mean, reference[name].mc_mean)
            np.testing.assert_array_equal(r[name].mc_std, reference[name].mc_std)
            np.testing.assert_array_equal(r[name].probability, reference[name].probability)
            np.testing.assert_array_equal(r[name].cams, reference[name].cams)


def test_temperature_applied_from_card(tmp_path: Path, files: list[Path]) -> None:
    temps = [0.5 + 0.25 * i for i in range(21)]
    folder = make_weights_dir(tmp_path, variants=("bce",), temperatures={"bce": temps})
    calibrated = Predictor(folder, "bce")
    image = read_image(files[0])
    model = calibrated.get().model
    with torch.no_grad():
        logits = model(calibrated.model_input(image))[0]
    a = calibrated.analyse(image)
    np.testing.assert_allclose(a.probability, torch.sigmoid(logits / torch.tensor(temps)).numpy(), rtol=1e-5, atol=1e-6)
    assert a.extra["temperature_applied"] is True
    plain = Predictor.from_model(model, "same-weights-no-calibration").analyse(image)
    assert not np.allclose(a.probability, plain.probability)
    # The MC samples are calibrated too: a temperature of 1 everywhere would give the plain result.
    assert not np.allclose(a.mc_mean, plain.mc_mean)
    np.testing.assert_array_equal(a.cams, plain.cams)  # a positive scale does not move a normalised CAM


def test_find_violations_hand_made(taxonomy) -> None:
    probs = np.full(taxonomy.num_labels, 0.1)
    probs[taxonomy.index("Pneumonia")] = 0.9  # parents: Fluid Accumulation and Consolidation, both low
    probs[taxonomy.index("Cardiac")] = 0.8  # parent Abnormal low
    probs[taxonomy.index("Lung Opacity")] = 0.5  # exactly at the threshold: not a violation
    found = {(v.parent, v.child) for v in find_violations(probs, taxonomy, 0.5)}
    assert found == {("Fluid Accumulation", "Pneumonia"), ("Consolidation", "Pneumonia"), ("Abnormal", "Cardiac")}
    v = next(v for v in find_violations(probs, taxonomy) if v.child == "Cardiac")
    assert v.parent_probability == pytest.approx(0.1) and v.child_probability == pytest.approx(0.8)
    probs[taxonomy.index("Abnormal")] = 0.95
    assert ("Abnormal", "Cardiac") not in {(v.parent, v.child) for v in find_violations(probs, taxonomy)}
    assert find_violations(probs, taxonomy, threshold=0.99) == []
    with pytest.raises(ValueError, match="expected 21 probabilities"):
        find_violations(probs[:5], taxonomy)


def test_violations_at_custom_threshold(predictor: Predictor, files: list[Path], taxonomy) -> None:
    a = predictor.analyse(files[0], threshold=0.3)
    # The rule written out: the parent's MC mean below 0.3 while the child's is above it.
    p = dict(zip(taxonomy.labels, a.mc_mean, strict=True))
    expected = {(parent, child) for parent, child in taxonomy.edges if p[parent] < 0.3 < p[child]}
    assert a.threshold == 0.3 and {(v.parent, v.child) for v in a.violations} == expected
    assert all(v.parent_probability == pytest.approx(p[v.parent]) for v in a.violations)


def test_cams_are_relu_of_weighted_features(predictor: Predictor, files: list[Path]) -> None:
    loaded = predictor.get("bce")
    x = predictor.model_input(read_image(files[0]), "bce")
    with torch.no_grad():
        feats = loaded.model.forward_features(x)
    w = loaded.model.classifier.weight
    raw = torch.relu((w[None, :, :, None, None] * feats[:, None]).sum(2))  # (1, L, h, w), written out longhand
    expected = raw / raw.amax(dim=(2, 3), keepdim=True).clamp_min(1e-30)
    np.testing.assert_allclose(class_activation_maps(feats, w).numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
    zero = class_activation_maps(torch.zeros(1, 1024, 2, 2), w)
    assert torch.equal(zero, torch.zeros_like(zero))  # all-zero maps stay zero, no NaN
    # Relative maps: min-max of the signed map, written out longhand, even where the ReLU map is empty.
    signed = (w[None, :, :, None, None] * feats[:, None]).sum(2)
    low, high = signed.amin(dim=(2, 3), keepdim=True), signed.amax(dim=(2, 3), keepdim=True)
    relative = class_activation_maps(feats, w, relative=True)
    np.testing.assert_allclose(relative.numpy(), ((signed - low) / (high - low)).numpy(), rtol=1e-4, atol=1e-5)
    assert torch.equal(class_activation_maps(torch.zeros(1, 1024, 2, 2), w, relative=True), zero)
    analysis = predictor.analyse(files[0], "bce")
    np.testing.assert_allclose(analysis.relative_cams, relative[0].numpy(), rtol=1e-4, atol=1e-5)


def test_batch_matches_single_and_reports_bad_files(predictor: Predictor, files: list[Path]) -> None:
    sources = [files[0], b"", files[3], b"this is not an image", files[1]]
    items = list(predictor.iter_analyses(sources, batch_size=2))
    assert [i.index for i in items] == [0, 1, 2, 3, 4]
    assert items[1].error and "empty" in items[1].error and items[1].analyses == {}
    assert items[3].error and "not an image" in items[3].error
    for item in (items[0], items[2], items[4]):
        assert item.error is None and set(item.analyses) == {"bce", "hbce_soft"}
        single = predictor.analyse_all(item.source)
        for name, a in item.analyses.items():
            np.testing.assert_allclose(a.probability, single[name].probability, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.mc_mean, single[name].mc_mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.cams, single[name].cams, rtol=1e-4, atol=1e-5)


def test_bad_input_raises_image_error(predictor: Predictor, tmp_path: Path) -> None:
    with pytest.raises(EmptyFileError):
        predictor.analyse(b"")
    with pytest.raises(ImageError, match="not found"):
        predictor.analyse(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="expected bytes, a path or an XrayImage"):
        predictor.analyse(12345)  # type: ignore[arg-type]
