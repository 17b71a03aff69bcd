"""The torchxrayvision converter: HiCXR's outputs and maps equal torchxrayvision's own on real images.

torchxrayvision's trained weights cannot be downloaded here, so its DenseNet is built with ``weights=None`` and
randomised (:func:`core.import_model.random_txv`); the conversion does not depend on the weights' values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.import_model import (
    ImportModelError,
    convert,
    label_map,
    load_txv,
    main,
    parse_source,
    random_txv,
    txv_outputs,
)
from core.inference import Predictor
from core.model import load_model, save_model

xrv = pytest.importorskip("torchxrayvision")

IMAGES = ("nih/images/00000013_005.png", "nih/images/00000317_003.png",
          "dicom/txv_SIIM_CR_MONO2_JPEG_baseline_chestPA.dcm")


def txv_input(path: Path) -> torch.Tensor:
    """An image prepared exactly as torchxrayvision's README does: normalize, XRayCenterCrop, XRayResizer(224).

    8-bit PNGs are read with Pillow (as skimage.io would); the DICOM's pixels through HiCXR's reader scaled back
    to 0..255, the range torchxrayvision's normalize is told.
    """
    from PIL import Image
    from torchvision import transforms

    from core.imaging import read_image

    if path.suffix == ".png":
        img = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    else:
        img = read_image(path).pixels * np.float32(255.0)
    img = xrv.datasets.normalize(img, 255)[None]
    img = transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])(img)
    return torch.from_numpy(img)[None]


@pytest.fixture(scope="module")
def txv_model() -> nn.Module:
    return random_txv("densenet121-res224-all", seed=3)


@pytest.fixture(scope="module")
def predictor(txv_model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """The converted model, saved as safetensors and loaded back as the dashboard loads it (float32 here)."""
    path = tmp_path_factory.mktemp("txv") / "txv_random.safetensors"
    save_model(convert(txv_model, txv_outputs("densenet121-res224-all")), path)
    return Predictor.from_model(load_model(path), "txv_random", mc_samples=3)


def test_label_map_follows_the_documented_table(taxonomy) -> None:
    full = {s.label: s for s in label_map(txv_outputs("densenet121-res224-all"), taxonomy)}
    assert full["Pleural Effusion"].outputs == ("Effusion",) and full["Pleural Effusion"].kind == "direct"
    assert full["Lung Opacity"].outputs == ("Lung Opacity",)  # a direct output shadows Infiltration
    assert full["Lung Lesion"].outputs == ("Lung Lesion",)
    assert full["Pleural Other"].kind == "nih" and full["Pleural Other"].outputs == ("Pleural_Thickening",)
    assert full["Enlarged Cardiomediastinum"].kind == "direct"  # its own output, not the max with Cardiomegaly
    assert full["Consolidation"].outputs == ("Consolidation",)
    assert full["Cardiac"].kind == "derived"
    assert set(full["Cardiac"].outputs) == {"Enlarged Cardiomediastinum", "Cardiomegaly"}
    assert set(full["Missing Lung Tissue"].outputs) == {"Atelectasis", "Pneumothorax", "Pleural_Thickening"}
    assert full["Other"].outputs == ("Fracture",)
    assert {s.label for s in full.values() if s.kind == "none"} == {"No Finding", "Support Devices", "Uncertain"}
    nih = {s.label: s for s in label_map(txv_outputs("densenet121-res224-nih"), taxonomy)}
    assert nih["Lung Lesion"].kind == "nih" and set(nih["Lung Lesion"].outputs) == {"Mass", "Nodule"}
    assert nih["Lung Opacity"].outputs == ("Infiltration",)
    assert nih["Fracture"].kind == "none"
    # A parent of Cardiomegaly in the taxonomy: derived from it when the weights have no output of its own.
    assert nih["Enlarged Cardiomediastinum"].kind == "derived"
    assert nih["Enlarged Cardiomediastinum"].outputs == ("Cardiomegaly",)
    assert nih["Cardiac"].outputs == ("Cardiomegaly",)
    used = {n for s in nih.values() for n in s.outputs}
    assert not used & {"Emphysema", "Fibrosis", "Hernia"}


def test_preprocessing_equals_torchxrayvisions(predictor: Predictor, shared_data: Path) -> None:
    """HiCXR's input contract for the import reproduces torchxrayvision's pipeline (crop, resize, scaling)."""
    from core.imaging import read_image

    for rel in IMAGES:
        ours = predictor.model_input(read_image(shared_data / rel))
        theirs = txv_input(shared_data / rel)
        assert ours.shape == theirs.shape == (1, 1, 224, 224)
        # 1e-2 in [-1024, 1024] units: float32 rounding of the two orders of operations.
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-2, err_msg=rel)


def test_probabilities_equal_torchxrayvisions(predictor: Predictor, txv_model: nn.Module, shared_data: Path,
                                              taxonomy) -> None:
    outputs = txv_outputs("densenet121-res224-all")
    sources = {s.label: s for s in label_map(outputs, taxonomy)}
    spread = []
    for rel in IMAGES:
        analysis = predictor.analyse(shared_data / rel)
        with torch.no_grad():
            theirs = txv_model(txv_input(shared_data / rel))[0].numpy()  # apply_sigmoid: probabilities
        for j, label in enumerate(analysis.labels):
            source = sources[label]
            if not source.outputs:
                continue
            expected = max(theirs[outputs.index(n)] for n in source.outputs)
            assert abs(analysis.probability[j] - expected) < 1e-4, f"{rel}: {label}"
            assert analysis.mc_std[j] == 0.0  # no dropout in the imported model
        spread.append(analysis.probability)
    assert np.ptp(np.stack(spread), axis=0).max() > 1e-2, "the random model must give different outputs per image"


@pytest.mark.slow
def test_gradcam_agrees_with_pytorch_grad_cam(predictor: Predictor, txv_model: nn.Module, shared_data: Path,
                                              taxonomy) -> None:
    """Each mapped label's map equals pytorch-grad-cam's Grad-CAM of its source output on the txv model itself."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Exposed(nn.Module):
        """torchxrayvision's forward with its functional ReLU as a module (a hook point); same submodules."""

        def __init__(self, txv: nn.Module) -> None:
            super().__init__()
            self.features, self.relu, self.classifier = txv.features, nn.ReLU(), txv.classifier

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.relu(self.features(x))
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(a, 1), 1))

    outputs = txv_outputs("densenet121-res224-all")
    sources = {s.label: s for s in label_map(outputs, taxonomy)}
    exposed = Exposed(txv_model).eval()
    rel = IMAGES[0]
    x = txv_input(shared_data / rel)
    with torch.no_grad():
        np.testing.assert_allclose(torch.sigmoid(exposed(x)).numpy(), txv_model(x).numpy(), atol=1e-6)
        raw = exposed(x)[0].numpy()
    analysis = predictor.analyse(shared_data / rel)
    # Maps at the feature resolution, as HiCXR's (pytorch-grad-cam's scale_cam_image skips the resize for None).
    feature_gradcam = type("FeatureGradCAM", (GradCAM,), {"get_target_width_height": lambda self, x: None})
    cam = feature_gradcam(model=exposed, target_layers=[exposed.relu])
    compared, done = 0, set()
    try:
        for j, label in enumerate(analysis.labels):
            source = sources[label]
            if not source.outputs:
                assert analysis.cams[j].max() == 0.0
                continue
            k = max((outputs.index(n) for n in source.outputs), key=lambda i: raw[i])
            ours = analysis.cams[j]
            assert ours.shape == (7, 7)
            if ours.max() == 0 or k in done or len(done) >= 5:
                continue
            theirs = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(k)])[0]
            done.add(k)
            # pytorch-grad-cam min-max scales; do the same to ours and the maps coincide.
            shifted = ours - ours.min()
            np.testing.assert_allclose(shifted / shifted.max(), theirs, atol=1e-4, err_msg=label)
            compared += 1
    finally:
        cam.activations_and_grads.release()
    assert compared >= 5


def test_unknown_name_and_failed_download_give_clear_messages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ImportModelError, match="known: .*densenet121-res224-all"):
        parse_source("txv:densenet121-res224-nope")
    with pytest.raises(ImportModelError, match="expected txv:NAME"):
        parse_source("hub:whatever")
    assert main(["txv:densenet121-res224-all", "--export", "/nonexistent/x", "--weights-file", "/no/such.pt"]) == 2
    assert "weights file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_download_failure_says_how_to_convert_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Here the download fails (no internet): the message names the URL and the offline flag."""
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty torchxrayvision cache
    with pytest.raises(ImportModelError, match="--weights-file"):
        load_txv("densenet121-res224-chex")


def test_local_weights_file_is_loaded_by_torchxrayvisions_loader(tmp_path: Path, txv_model: nn.Module) -> None:
    """A torchxrayvision-format file (a pickled model, as its release ships) converts offline."""
    path = tmp_path / "my-download.pt"
    torch.save(txv_model, path)
    loaded = load_txv("densenet121-res224-all", path)
    x = torch.randn(1, 1, 224, 224) * 500
    with torch.no_grad():
        ours = convert(loaded, txv_outputs("densenet121-res224-all"))(x)
        expected = txv_model.classifier(txv_model.features2(x))
    np.testing.assert_allclose(ours[0, 0].item(), expected[0, 0].item(), rtol=1e-5)


@pytest.mark.slow
def test_import_cli_exports_a_variant_the_dashboard_loads(tmp_path: Path, shared_data: Path) -> None:
    """``python -m core.import_model ... --random-init --export``: safetensors + a card by the export path on a
    small real NIH table; the registry and Predictor load it without torchxrayvision's loader."""
    from conftest import write_tiny_nih_csv

    from core.card import ModelCard
    from core.registry import list_variants

    csv = write_tiny_nih_csv(shared_data, tmp_path / "labels.csv", 10, 10, 16, 20)
    prefix = tmp_path / "weights" / "txv_random"
    code = main(["txv:densenet121-res224-chex", "--random-init", "--export", str(prefix), "--set", f"data.csv={csv}",
                 "--set", "eval.n_boot=20", "--set", "eval.ood_outliers_max=20"])
    assert code == 0
    card = ModelCard.read(f"{prefix}.json")
    assert card.imported is not None and card.imported.randomly_initialised
    assert card.imported.weights == "densenet121-res224-chex"
    assert "RANDOMLY INITIALISED" in card.limitations
    assert card.preprocessing.crop == "center" and card.preprocessing.input_size == 224
    assert {"Abnormal", "Opacity", "No Finding", "Support Devices", "Uncertain", "Pleural Other"} <= set(
        card.labels_not_learnt)
    assert "Cardiomegaly" not in card.labels_not_learnt
    assert card.split_metrics("test").macro_auroc is not None
    (variant,) = list_variants(prefix.parent)
    analysis = Predictor(prefix.parent, "all").analyse(shared_data / IMAGES[0])
    assert analysis.model_id == variant.name and analysis.extra["input_size"] == 224
