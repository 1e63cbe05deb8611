"""Small image-text data and a shrunken fetalclip-tiny (64-pixel input, 32-token text) for fast CPU training."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

LABELS = ("brain", "abdomen", "femur", "thorax")

# fetalclip-tiny at 64x64 input and 32 tokens: the same code paths at a fraction of the compute.
SMALL_MODEL = {"vision_cfg": {"image_size": 64}, "text_cfg": {"context_length": 32}}


def small_config(data, **settings):
    from fetalclip.train import make_config

    base = {
        "model": "fetalclip-tiny", "model_overrides": SMALL_MODEL, "data": data, "steps": 4, "batch_size": 8,
        "warmup_steps": 1, "lr": 1e-3, "progress": False, "device": "cpu",
    }
    base.update(settings)
    return make_config(None, base)


def write_pairs(folder, count: int = 24, captions: bool = False):
    """``count`` grey images whose bright block position encodes one of four views, two per patient."""
    rng = np.random.default_rng(0)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    rows = ["path,label,patient,pixel_spacing_mm,caption"]
    for i in range(count):
        k = i % len(LABELS)
        image = rng.integers(0, 60, (48, 64), dtype=np.uint8)
        image[5 + 8 * k: 17 + 8 * k, 4 + 12 * k: 20 + 12 * k] = 230
        Image.fromarray(image).save(folder / "imgs" / f"{i:03d}.png")
        caption = f"scan number {i} of the {LABELS[k]}" if captions else ""
        rows.append(f"imgs/{i:03d}.png,{LABELS[k]},p{i // 2},0.2,{caption}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return f"csv:{folder / 'pairs.csv'}"


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """Every training test on one thread (the root fixture); subprocesses get OMP_NUM_THREADS=1."""
    yield


@pytest.fixture
def pairs_spec(tmp_path):
    return write_pairs(tmp_path / "data")
