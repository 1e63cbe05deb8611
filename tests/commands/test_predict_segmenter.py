"""`fetalclip predict --segmenter DIR --head FILE`: biometry and probe-head scores on the terminal, in JSON and CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fetalclip.cli import app


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model):
    """The tiny model saved as a folder, a decoder trained briefly on phantom heads, an image and a clip head."""
    import torch

    from fetalclip.data.datasets import open_dataset
    from fetalclip.tasks.features import FeatureCache
    from fetalclip.tasks.heads import ProbeHead, save_head
    from fetalclip.tasks.segmentation import run_segmentation, save_decoder, segmentation_data

    root = tmp_path_factory.mktemp("predict-seg")
    tiny_model.save(root / "model")
    dataset = open_dataset("sim:12,size=96,per_patient=2,classes=brain")
    cache = FeatureCache(tiny_model, None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data, originals = segmentation_data(cache, dataset, size=32, merge_labels=True)
        _, best, _ = run_segmentation(data, originals, epochs=8, lr=1e-2, channels=[8] * 5, seed=3)
    finally:
        torch.set_num_threads(threads)
    save_decoder(root / "seg", best.decoder, {"model": str(root / "model"), "name": tiny_model.name,
                                              "fingerprint": cache.fingerprint, "taps": cache.blocks(dataset).taps},
                 extra={"size": 32})
    rng = np.random.default_rng(0)
    encoder = {"name": tiny_model.name, "fingerprint": cache.fingerprint}
    dim = tiny_model.embed_dim
    save_head(ProbeHead("plane-probe", "image", ["a", "b", "c"], rng.normal(size=(3, dim)).astype(np.float32),
                        np.zeros(3, np.float32), dim, encoder), root / "image.safetensors")
    save_head(ProbeHead("chd", "clip", ["normal", "chd"], rng.normal(size=(2, 3 * dim)).astype(np.float32),
                        np.zeros(2, np.float32), dim, encoder, frames=3), root / "clip.safetensors")
    scans = root / "scans"
    scans.mkdir()
    for i in range(2):
        Image.fromarray(dataset[i]["image"]).save(scans / f"head{i}.png")
    return root


def test_predict_with_segmenter_and_heads_writes_json_and_csv(saved):
    runner = CliRunner()
    args = ["predict", str(saved / "scans"), "--model", str(saved / "model"), "--segmenter", str(saved / "seg"),
            "--head", str(saved / "image.safetensors"), "--view", "brain", "--spacing", "0.2"]
    result = runner.invoke(app, [*args, "--out", str(saved / "answers.json"), "--head-mask"])
    assert result.exit_code == 0, result.output
    assert "HC " in result.output or "biometry:" in result.output
    assert "plane-probe:" in result.output
    document = json.loads((saved / "answers.json").read_text())
    assert document["segmenter"] == str(saved / "seg")
    first = document["predictions"][0]
    assert first["biometry"]["mask"]["format"] == "rle-row-major" and first["heads"]["plane-probe"]["label"] in "abc"
    assert first["biometry"]["hc_mm"] is None or first["biometry"]["hc_mm"] > 0
    result = runner.invoke(app, [*args, "--out", str(saved / "answers.csv")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((saved / "answers.csv").open()))
    assert len(rows) == 2 and {"hc_mm", "fit_ok", "hc_percentile", "head:plane-probe"} <= set(rows[0])
    # No spacing: the table says why there are no measurements.
    result = runner.invoke(app, ["predict", str(saved / "scans" / "head0.png"), "--model", str(saved / "model"),
                                 "--segmenter", str(saved / "seg"), "--view", "brain"])
    assert result.exit_code == 0 and "no pixel spacing" in result.output


def test_sweep_with_a_clip_head(saved):
    result = CliRunner().invoke(app, ["predict", str(saved / "scans"), "--sweep", "--model", str(saved / "model"),
                                      "--head", str(saved / "clip.safetensors"), "--out", str(saved / "sweep.json")])
    assert result.exit_code == 0, result.output
    assert "chd:" in result.output
    sweep = json.loads((saved / "sweep.json").read_text())["sweeps"][0]
    assert set(sweep["heads"]["chd"]["probabilities"]) == {"normal", "chd"}


def test_a_head_for_other_weights_is_refused(saved, tmp_path):
    from fetalclip.models import create_model

    create_model("fetalclip-tiny", seed=1).save(tmp_path / "other")
    result = CliRunner().invoke(app, ["predict", str(saved / "scans"), "--model", str(tmp_path / "other"),
                                      "--head", str(saved / "image.safetensors")])
    assert result.exit_code != 0 and "train the head again" in str(result.exception)
