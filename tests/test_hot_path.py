"""The dashboard's hot path (issue 21, item 6): a rerun reads no weights file, loading a variant opens it once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_weights_dir

import core.model
import core.registry
from core.inference import Predictor
from core.registry import scan_weights


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    folder = make_weights_dir(tmp_path_factory.mktemp("hot"), variants=("bce", "hbce_soft_data"))
    for name in ("bce", "hbce_soft_data"):  # as core.export writes it
        card = json.loads((folder / f"{name}.json").read_text())
        card["tensor_sha256"] = core.registry.tensor_sha256(folder / f"{name}.safetensors")
        (folder / f"{name}.json").write_text(json.dumps(card))
    return folder


def test_identical_models_come_from_the_cards_hash_without_reading_weights(weights_dir, monkeypatch) -> None:
    scan = scan_weights(weights_dir)
    assert all(v.card.tensor_sha256 for v in scan.variants)

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed on the display path")

    monkeypatch.setattr(core.registry, "tensor_sha256", no_hashing)
    for _ in range(3):  # what one rerun of the sidebar asks, three times
        assert scan.distinct_names() == ["bce", "hbce_soft_data"]
        assert [scan.same_as(n) for n in scan.names()] == [[], []]
        assert scan.default_name in scan.names()


def test_a_card_without_the_hash_falls_back_to_hashing_once(weights_dir, monkeypatch) -> None:
    scan = scan_weights(weights_dir)
    for v in scan.variants:
        object.__setattr__(v.card, "tensor_sha256", None)
    calls = []
    real = core.registry.tensor_sha256
    monkeypatch.setattr(core.registry, "tensor_sha256", lambda p: calls.append(p) or real(p))
    scan.distinct_names()
    scan.same_as("bce")
    scan.identical_groups()
    assert len(calls) == len(scan.variants)  # once per file and scan, not once per question


def test_loading_a_variant_opens_its_weights_file_once(weights_dir, monkeypatch) -> None:
    opened: list[str] = []
    real = core.model.safe_open

    def counting(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(core.model, "safe_open", counting)
    predictor = Predictor(weights_dir, variants=[])
    predictor.load("bce")
    assert opened == ["bce.safetensors"]
    predictor.load("bce")
    assert opened == ["bce.safetensors"]
