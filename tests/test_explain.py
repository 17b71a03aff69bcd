"""One-pass CAMs vs pytorch-grad-cam on real images; other CAM methods; overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from conftest import make_test_model
from gradcam_reference import CAM_METHODS, cam_with_method

from core.explain import contact_sheet, overlay, upsample
from core.imaging import read_image
from core.inference import Predictor


@pytest.fixture(scope="module")
def predictor(shared_data: Path) -> Predictor:
    """A 128 px random model whose label maps are mixed-sign, like a trained model's.

    With random weights, ``W_l . A`` is dominated by the image-wide mean feature, so a quarter of the maps are
    negative everywhere (all zero after the ReLU) and the rest positive everywhere. Removing the mean-feature
    direction (estimated on two other real images) from each weight row leaves the spatial structure, so the
    comparison below covers partly-zero maps too.
    """
    model = make_test_model(seed=5, input_size=128)
    predictor = Predictor.from_model(model, "m128")
    with torch.no_grad():
        x = torch.cat([predictor.model_input(read_image(shared_data / "nih/images" / name))
                       for name in ("00000348_000.png", "00000001_000.png")])
        mean_feature = model.forward_features(x).mean(dim=(0, 2, 3))
        w = model.classifier.weight
        w -= (w @ mean_feature)[:, None] * mean_feature[None] / mean_feature.dot(mean_feature)
    return predictor


@pytest.mark.slow  # pytorch-grad-cam once per label (21 backward passes per image)
@pytest.mark.parametrize(
    "relpath", ["nih/images/00000317_003.png", "dicom/txv_SIIM_CR_MONO2_JPEG_baseline_chestPA.dcm"], ids=["png", "dcm"]
)
def test_one_pass_cam_equals_gradcam(predictor: Predictor, shared_data: Path, relpath: str) -> None:
    """Grad-CAM of each logit at the post-ReLU layer is W_l . A / (h*w): the one-pass CAM up to scale."""
    image = read_image(shared_data / relpath)
    analysis = predictor.analyse(image)
    n = len(analysis.labels)
    reference = cam_with_method(predictor.get().model, predictor.model_input(image), list(range(n)), "gradcam")
    assert reference.shape == analysis.cams.shape == (n, 4, 4)
    both_zero = partly_zero = 0
    for label in range(n):
        ours, theirs = analysis.cams[label], reference[label]
        if ours.max() == 0 and theirs.max() == 0:
            both_zero += 1
            continue
        partly_zero += bool((ours == 0).any())
        r = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
        assert r >= 0.99, f"{analysis.labels[label]}: Pearson r = {r:.4f}"
        # pytorch-grad-cam min-max scales; do the same to ours and the maps coincide.
        shifted = ours - ours.min()
        np.testing.assert_allclose(shifted / shifted.max(), theirs, atol=1e-4)
    assert both_zero <= 2, f"{both_zero} of {n} labels have all-zero maps"
    assert partly_zero >= 5  # the ReLU is exercised, not only all-positive maps


def test_gradcam_leaves_shared_model_alone(predictor: Predictor, shared_data: Path) -> None:
    model = predictor.get().model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image = read_image(shared_data / "nih/images/00000348_000.png")
    cam_with_method(model, predictor.model_input(image), 1, "gradcam")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.slow  # one pytorch-grad-cam run per method
@pytest.mark.parametrize("method", CAM_METHODS)
def test_other_methods(predictor: Predictor, shared_data: Path, method: str) -> None:
    image = read_image(shared_data / "nih/images/00000317_003.png")
    x = predictor.model_input(image)
    cam = cam_with_method(predictor.get().model, x, predictor.taxonomy.index("Pleural Effusion"), method)
    assert cam.shape == (4, 4) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() <= 1 and cam.max() > cam.min()


def test_input_resolution_and_errors(predictor: Predictor, shared_data: Path) -> None:
    x = predictor.model_input(read_image(shared_data / "nih/images/00000317_003.png"))
    full = cam_with_method(predictor.get().model, x, 0, "gradcam", output="input")
    assert full.shape == (128, 128) and 0 <= full.min() and full.max() <= 1
    with pytest.raises(ValueError, match="unknown CAM method 'scorecam'"):
        cam_with_method(predictor.get().model, x, 0, "scorecam")
    with pytest.raises(ValueError, match="expected one image"):
        cam_with_method(predictor.get().model, torch.cat([x, x]), 0)


def test_overlay_blending() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((40, 60), dtype=np.float32)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0
    gray = np.repeat(np.rint(image * 255)[..., None], 3, axis=2).astype(np.uint8)

    out = overlay(image, cam, "jet", opacity=0.5)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(image, cam, opacity=0.0), gray)
    np.testing.assert_array_equal(overlay(image, cam, threshold=1.01), gray)  # everything below: transparent
    # Opacity 1, no threshold: the colormap itself, on the bilinearly upsampled map.
    expected = np.rint(matplotlib.colormaps["viridis"](upsample(cam, (40, 60)))[..., :3] * 255)
    np.testing.assert_allclose(overlay(image, cam, "viridis", opacity=1.0), expected, atol=1)
    # The hot cell is top-left: that is where the overlay is red (jet at 1.0) rather than blue.
    assert out[0, 0, 0] > out[0, 0, 2] and out[-1, -1, 2] > out[-1, -1, 0]
    # Threshold: cold areas keep the plain image, hot ones are tinted.
    partial = overlay(image, cam, opacity=0.5, threshold=0.5)
    np.testing.assert_array_equal(partial[-1, -1], gray[-1, -1])
    assert not np.array_equal(partial[0, 0], gray[0, 0])


def test_overlay_errors() -> None:
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        overlay(image, np.zeros((2, 2)), colormap="nope")
    with pytest.raises(ValueError, match="opacity must be in"):
        overlay(image, np.zeros((2, 2)), opacity=2)
    with pytest.raises(ValueError, match="2-D grayscale"):
        overlay(np.zeros((8, 8, 3)), np.zeros((2, 2)))


def test_upsample_constant_and_contact_sheet(predictor: Predictor, shared_data: Path) -> None:
    np.testing.assert_allclose(upsample(np.full((3, 3), 0.25), (30, 17)), 0.25, atol=1e-6)
    a = predictor.analyse(shared_data / "nih/images/00000344_002.png")
    sheet = contact_sheet(a, labels=["Cardiomegaly", "Pleural Effusion", "Abnormal"], tile=64, columns=2)
    assert sheet.shape == (2 * (64 + 16), 2 * 64, 3) and sheet.dtype == np.uint8
    assert sheet[16:80, :64].std() > 0  # a tile was painted
    assert np.all(sheet[80 + 16:, 64:] == 0)  # the unused fourth slot stays black
