"""Registry: variants found in a weights folder, broken files reported with reasons, default selection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_weights_dir

from core.registry import (
    REPO_ROOT,
    RegistryError,
    default_variant,
    get_variant,
    list_variants,
    resolve_weights_dir,
    scan_weights,
)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("reg"), variants=("bce", "hbce_fixed", "hbce_soft"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_lists_variants_with_card_metrics(good_dir: Path, taxonomy) -> None:
    variants = list_variants(good_dir)
    assert [v.name for v in variants] == ["bce", "hbce_fixed", "hbce_soft"]
    soft = variants[2]
    assert soft.weights_path == good_dir / "hbce_soft.safetensors"
    assert soft.card_path == good_dir / "hbce_soft.json"
    assert soft.labels == list(taxonomy.labels)
    assert soft.input_size == 64
    assert soft.test_macro_auroc == pytest.approx(0.72)
    assert soft.card.macro_auroc("val") is None
    per_label = soft.per_label_auroc("test")
    assert list(per_label) == list(taxonomy.labels) and per_label["Cardiomegaly"] == pytest.approx(0.72)
    assert soft.card.temperature() is None
    assert "hbce_soft" in soft.description and "0.720" in soft.description


def test_default_is_best_test_auroc_unless_declared(good_dir: Path, tmp_path: Path) -> None:
    assert default_variant(good_dir) == "hbce_soft"
    folder = _copy(good_dir, tmp_path / "w")
    (folder / "default.json").write_text(json.dumps({"default": "bce"}))
    assert default_variant(folder) == "bce"
    assert "default" not in [v.name for v in list_variants(folder)]
    assert scan_weights(folder).problems == []
    # A default naming a missing variant, or a broken default.json, falls back to the metric rule.
    (folder / "default.json").write_text(json.dumps({"default": "nope"}))
    assert default_variant(folder) == "hbce_soft"
    (folder / "default.json").write_text("{broken")
    assert default_variant(folder) == "hbce_soft"


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert list_variants(tmp_path / "empty") == []
    assert default_variant(tmp_path / "empty") is None
    scan = scan_weights(tmp_path / "absent")
    assert scan.variants == [] and "does not exist" in scan.problems[0].reason


def test_relative_dir_resolves_against_repo_root() -> None:
    assert resolve_weights_dir("weights") == REPO_ROOT / "weights"
    assert resolve_weights_dir(Path("/x/y")) == Path("/x/y")


def test_broken_variants_are_skipped_with_reasons(good_dir: Path, tmp_path: Path) -> None:
    folder = _copy(good_dir, tmp_path / "w")
    (folder / "bce.safetensors").unlink()  # card without weights
    (folder / "hbce_fixed.json").unlink()  # weights without card
    (folder / "hbce_soft.json").write_text('{"variant": "hbce_soft", ')  # malformed JSON
    (folder / "junk.safetensors").write_bytes(b"not safetensors at all")
    (folder / "junk.json").write_text(json.dumps({"variant": "junk"}))

    scan = scan_weights(folder)
    assert scan.variants == []
    reasons = {p.name: p.reason for p in scan.problems}
    assert set(reasons) == {"bce", "hbce_fixed", "hbce_soft", "junk"}
    assert "model card without weights" in reasons["bce"] and "bce.safetensors" in reasons["bce"]
    assert "weights without a model card" in reasons["hbce_fixed"] and "hbce_fixed.json" in reasons["hbce_fixed"]
    assert "not valid JSON" in reasons["hbce_soft"] and "hbce_soft.json" in reasons["hbce_soft"]
    assert "junk.safetensors" in reasons["junk"] and "safetensors" in reasons["junk"]
    assert list_variants(folder) == []
    with pytest.raises(RegistryError, match="model card without weights"):
        list_variants(folder, strict=True)
    with pytest.raises(RegistryError, match=r"not valid JSON.*usable variants: none"):
        get_variant("hbce_soft", folder)
    with pytest.raises(RegistryError, match="no variant 'missing'"):
        get_variant("missing", folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(variant="other"), "card says variant 'other'"),
        (lambda c: c["preprocessing"].update(input_size=320), r"preprocessing.input_size = 320.*says 64"),
        (lambda c: c.update(calibration={"temperature": [1.0] * 3, "applied": True}), "must list 21 numbers"),
        (lambda c: c.update(calibration={"temperature": [0.0] * 21, "applied": True}), "positive numbers"),
        (lambda c: c.update(metrics=[1, 2]), "'metrics' must be an object"),
        (lambda c: [c.clear(), c.update(variant="bce")], None),
    ],
)
def test_card_checked_against_weights(good_dir: Path, tmp_path: Path, edit, message) -> None:
    folder = _copy(good_dir, tmp_path / "w")
    card_path = folder / "bce.json"
    card = json.loads(card_path.read_text())
    edit(card)
    card_path.write_text(json.dumps(card))
    if message is None:  # a minimal card is accepted: the weights header carries the model contract
        assert get_variant("bce", folder).test_macro_auroc is None
        return
    with pytest.raises(RegistryError, match=message):
        get_variant("bce", folder)
    assert "bce" not in [v.name for v in list_variants(folder)]


def test_card_not_an_object(good_dir: Path, tmp_path: Path) -> None:
    folder = _copy(good_dir, tmp_path / "w")
    (folder / "bce.json").write_text("[1, 2, 3]")
    with pytest.raises(RegistryError, match="must be a JSON object, got list"):
        get_variant("bce", folder)


def test_temperature_is_exposed_only_while_applied(tmp_path: Path) -> None:
    temps = [1.0 + 0.1 * i for i in range(21)]
    folder = make_weights_dir(tmp_path, variants=("bce",), temperatures={"bce": temps})
    assert get_variant("bce", folder).card.temperature() is not None
    card = json.loads((folder / "bce.json").read_text())
    card["calibration"]["applied"] = False  # kept for the record: inference must not divide by it
    (folder / "bce.json").write_text(json.dumps(card))
    variant = get_variant("bce", folder)
    assert variant.card.temperature() is None and variant.card.calibration.temperature == pytest.approx(temps)
    card["calibration"]["temperature"] = temps[:20]  # one short of the 21 outputs
    (folder / "bce.json").write_text(json.dumps(card))
    with pytest.raises(RegistryError, match="must list 21 numbers, got 20"):
        get_variant("bce", folder)


def test_identical_tensors_and_aliases_are_one_model(tmp_path: Path) -> None:
    folder = make_weights_dir(tmp_path, variants=("bce", "hbce_soft_data"))
    # A copy under another name (what the paper's hard-penalty training produces) holds the same tensors.
    shutil.copy(folder / "bce.safetensors", folder / "hbce_fixed.safetensors")
    card = json.loads((folder / "bce.json").read_text())
    (folder / "hbce_fixed.json").write_text(json.dumps({**card, "variant": "hbce_fixed"}))
    card["aliases"] = ["hbce_data"]
    (folder / "bce.json").write_text(json.dumps(card))
    scan = scan_weights(folder)
    assert scan.identical_groups() == [["bce", "hbce_fixed"]]
    assert scan.distinct_names() == ["bce", "hbce_soft_data"]
    assert scan.same_as("bce") == ["hbce_data", "hbce_fixed"]
    assert "bce ≡ hbce_data" in get_variant("bce", folder).description
    # An alias resolves to its model; a missing name still names the usable ones.
    assert get_variant("hbce_data", folder).name == "bce"
    with pytest.raises(RegistryError, match="usable variants"):
        get_variant("nope", folder)
