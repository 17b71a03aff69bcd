"""DenseNet121 model: shapes, explicit ReLU, safetensors round trip and refusal of mismatching files."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from core.model import ModelConfig, ModelLoadError, build_model, load_model, read_model_config, save_model
from core.taxonomy import taxonomy_from_dict


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig.for_taxonomy(input_size=64)).eval()


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 96, 128)])
def test_shapes_and_post_relu_features(model, shape):
    x = torch.randn(*shape)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (shape[0], 1024, shape[2] // 32, shape[3] // 32)
    assert feats.min() >= 0  # the explicit ReLU is part of forward_features
    assert logits.shape == (shape[0], 21)
    torch.testing.assert_close(model.forward_head(feats), logits)


def test_output_strides_16_and_8_give_finer_maps_with_the_same_weights():
    m16 = build_model(ModelConfig.for_taxonomy(output_stride=16)).eval()
    m8 = build_model(ModelConfig.for_taxonomy(output_stride=8)).eval()
    m8.load_state_dict(m16.state_dict())  # pooling layers have no weights: one checkpoint fits every stride
    with torch.no_grad():
        assert m16.forward_features(torch.randn(1, 1, 64, 96)).shape == (1, 1024, 4, 6)
        assert m8.forward_features(torch.randn(1, 1, 64, 96)).shape == (1, 1024, 8, 12)
    with pytest.raises(ValueError, match="output_stride"):
        build_model(ModelConfig.for_taxonomy(output_stride=4))


def test_input_contract_is_enforced(model):
    with pytest.raises(ValueError, match="at least 64x64"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="1 input channel"):
        model(torch.randn(1, 3, 64, 64))


def test_three_channel_config_builds():
    m = build_model(ModelConfig.for_taxonomy(in_channels=3)).eval()
    assert m.features.conv0.in_channels == 3
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 21)


def test_round_trip_is_exact_and_fp16_is_close(model, tmp_path):
    x = torch.randn(2, 1, 64, 64)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert not loaded.training
    assert read_model_config(path) == model.config
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        half = load_model(save_model(model, tmp_path / "h.safetensors", half=True))
        torch.testing.assert_close(half(x), model(x), atol=5e-2, rtol=5e-2)
    assert (tmp_path / "h.safetensors").stat().st_size < 0.6 * path.stat().st_size


def test_mismatching_files_are_refused_with_reasons(model, tmp_path):
    other = taxonomy_from_dict({"chexpert_labels": ["A"], "derived_labels": ["P"], "edges": {"P": ["A"]}})
    path = save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(ModelLoadError, match="output labels do not match"):
        load_model(path, taxonomy=other)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["classifier.weight"] = torch.zeros(5, 1024)
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"hicxr_config": model.config.to_json()})
    with pytest.raises(ModelLoadError, match=r"shape mismatch.*classifier\.weight: file \(5, 1024\)"):
        load_model(tmp_path / "bad.safetensors")

    del state["classifier.weight"]
    save_file(state, str(tmp_path / "missing.safetensors"), metadata={"hicxr_config": model.config.to_json()})
    with pytest.raises(ModelLoadError, match="1 missing tensor"):
        load_model(tmp_path / "missing.safetensors")

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelLoadError, match="not a HiCXR model"):
        load_model(tmp_path / "plain.safetensors")

    cfg = model.config.to_json().replace(model.config.taxonomy_hash, "0" * 16)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "hash.safetensors"),
              metadata={"hicxr_config": cfg})
    with pytest.raises(ModelLoadError, match="taxonomy hash 0000000000000000"):
        load_model(tmp_path / "hash.safetensors")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.safetensors")


class _Exploit:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Exploit.target),))


def test_pickle_files_are_never_unpickled(tmp_path):
    _Exploit.target = str(tmp_path / "pwned")
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"state": _Exploit()}))
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_model(evil)
    assert not (tmp_path / "pwned").exists()
