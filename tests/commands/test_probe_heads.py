"""``fetalclip probe classify|clips --save-head``: the saved head is the probe's, bound to the encoder's weights."""

from __future__ import annotations

import json

import numpy as np

from fetalclip.data.datasets import open_dataset
from fetalclip.tasks.heads import load_head


def test_classify_saves_the_head_it_trained(cli_exit_code, tmp_path, planes_spec, tiny_model, one_thread):
    from fetalclip.tasks.features import FeatureCache
    from fetalclip.tasks.probe import ProbeRecipe, linear_probe, probe_data

    head_path = tmp_path / "plane.safetensors"
    args = ["probe", "classify", "--data", planes_spec, "--folds", "2", "--runs", "1", "--epochs", "4", "--lr", "1e-2",
            "--standardize", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "r.json"), "--save-head", str(head_path)]
    assert cli_exit_code(args) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    head = load_head(head_path, result["provenance"]["model_fingerprint"])
    assert (head.name, head.input, head.classes) == ("plane", "image", result["classes"])
    assert head.info["recipe"]["epochs"] == 4 and head.info["model"] == "fetalclip-tiny"
    # The same run in memory (the CLI's model is fetalclip-tiny, seed 0 = the fixture): the same head, the same scores.
    data = probe_data(FeatureCache(tiny_model, tmp_path / "cache"), open_dataset(planes_spec))
    run = linear_probe(data, ProbeRecipe(folds=2, runs=1, epochs=4, lr=1e-2, standardize=True))
    assert run.report["macro_f1_per_head"] == result["macro_f1_per_head"]
    np.testing.assert_array_equal(head.predict(data.x), run.head.probabilities(data.x))
    load_head(head_path, tiny_model)  # bound to these weights


def test_save_head_is_guarded_and_bad_recipes_fail_before_the_model_loads(cli_exit_code, tmp_path, planes_spec, capsys):
    head_path = tmp_path / "h.safetensors"
    head_path.write_bytes(b"x")
    assert cli_exit_code(["probe", "classify", "--data", planes_spec, "--cache", "none", "--save-head", str(head_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_exit_code(["probe", "classify", "--data", planes_spec, "--cache", "none", "--lr", "-1"]) == 2
    assert "probe recipe: lr = -1.0 must be a positive, finite number" in capsys.readouterr().err


def test_clips_saves_a_clip_head(cli_exit_code, tmp_path, one_thread):
    from fetalclip.sim.cine import parse_cine_spec, write_cine

    n, config = parse_cine_spec("12,size=64,frames=4,clips_per_patient=1")
    write_cine(n, config, tmp_path / "cine")
    head_path = tmp_path / "chd.safetensors"
    args = ["probe", "clips", "--data", f"csv:{tmp_path / 'cine' / 'manifest.csv'}", "--frames", "3", "--folds", "2",
            "--runs", "1", "--epochs", "3", "--positive", "chd", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "r.json"), "--save-head", str(head_path)]
    assert cli_exit_code(args) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    head = load_head(head_path, result["provenance"]["model_fingerprint"])
    assert (head.name, head.input, head.frames, head.classes) == ("chd", "clip", 3, ["normal", "chd"])
    probabilities = head.predict(np.zeros((1, 3, head.embed_dim), np.float32))
    assert probabilities.shape == (1, 2)
