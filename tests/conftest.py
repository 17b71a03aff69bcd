"""Shared fixtures: paths to the real data in ../shared/data and the default taxonomy."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.taxonomy import Taxonomy, load_taxonomy

REPO_ROOT = Path(__file__).resolve().parents[1]
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
