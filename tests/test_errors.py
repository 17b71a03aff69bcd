"""One error base: every error the project raises on purpose is a HiCXRError, and the command lines answer it with
a message and exit status 2, never a traceback."""

from __future__ import annotations

import importlib

import pytest

from core.errors import HiCXRError

ERRORS = [("core.card", "CardError"), ("core.checkpoints", "CheckpointError"), ("core.config", "ConfigError"),
          ("core.crossval", "CVError"), ("core.data", "DataError"), ("core.datasets.splits", "SplitError"),
          ("core.distributed", "DeviceError"), ("core.imaging", "ImageError"), ("core.labels", "LabelError"),
          ("core.model", "ModelLoadError"), ("core.pretrain_data", "PretrainError"),
          ("core.registry", "RegistryError"), ("core.taxonomy", "TaxonomyError"), ("core.trainer", "TrainError")]


@pytest.mark.parametrize(("module", "name"), ERRORS)
def test_every_project_error_is_a_hicxr_error(module, name):
    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, HiCXRError)
    # ...and still what callers caught before (ValueError or RuntimeError)
    assert issubclass(error, (ValueError, RuntimeError))


def test_a_checkpoint_error_in_pretraining_is_a_message_not_a_traceback(monkeypatch, tmp_path, capsys):
    import pretrain as cli
    from core import pretrain as core_pretrain
    from core.checkpoints import load_training_state

    def resume_from_nothing(config, resume=False):
        # The real failure: resuming from a checkpoints folder without the optimizer state.
        return load_training_state(tmp_path, None, None)

    monkeypatch.setattr(core_pretrain, "pretrain", resume_from_nothing)
    code = cli.main(["--config", "configs/pretrain_supervised.yaml", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot resume: missing") and "last_state.json" in err


def test_export_without_a_config_is_a_message(tmp_path, capsys):
    from core.export import main

    assert main([str(tmp_path / "nothing")]) == 2
    assert "no --config given and no existing card" in capsys.readouterr().err
