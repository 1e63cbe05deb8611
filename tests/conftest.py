"""Shared fixtures: the real datasets (skipped when absent, required in CI) and small models and images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("FETALCLIP_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        message = f"{what} not found at {path} (set FETALCLIP_DATA to the folder holding hc18/ and fetal_planes_db/)"
        if os.environ.get("FETALCLIP_REQUIRE_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def hc18_dir() -> Path:
    return _require(shared_data_dir() / "hc18", "HC18 data")


@pytest.fixture(scope="session")
def fpdb_dir() -> Path:
    return _require(shared_data_dir() / "fetal_planes_db", "FETAL_PLANES_DB data")


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised fetalclip-tiny (fixed seed); treat as read-only."""
    from fetalclip.models import create_model

    return create_model("fetalclip-tiny", seed=0)


@pytest.fixture
def gray_image() -> np.ndarray:
    """A 2:3 grayscale image with structure, so preprocessing differences show up."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(120, 181), dtype=np.uint8)
    image[40:80, 60:120] = 255
    return image
