"""LoRA on the command line: ``convert --merge`` writes a plain model; ``probe classify --lora-rank`` trains one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fetalclip
from fetalclip.models import create_model
from fetalclip.models.lora import LoraConfig, apply_lora, lora_config_of, save_adapter


@pytest.fixture
def base_and_adapter(tmp_path):
    base = create_model("fetalclip-tiny", seed=0)
    base_dir = base.save(tmp_path / "base")
    params = apply_lora(base, LoraConfig(rank=4, alpha=8))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return base_dir, save_adapter(base, tmp_path / "adapter"), base


def test_convert_merge_writes_a_plain_checkpoint_of_the_adapted_model(cli_exit_code, tmp_path, base_and_adapter, one_thread):
    base_dir, adapter_dir, adapted = base_and_adapter
    out = tmp_path / "merged"
    assert cli_exit_code(["convert", str(base_dir), str(out), "--merge", str(adapter_dir)]) == 0
    merged = fetalclip.load(out)
    assert lora_config_of(merged) is None and merged.config["provenance"]["lora"]["merged"] is True
    assert set(merged.clip.state_dict()) == set(fetalclip.load(base_dir).clip.state_dict())
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    tokens = merged.tokenize(["fetal brain", "fetal femur"])
    adapted.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged.encode_image(images), adapted.encode_image(images), rtol=0, atol=1e-5)
        torch.testing.assert_close(merged.encode_text(tokens), adapted.encode_text(tokens), rtol=0, atol=1e-5)


def test_convert_merge_refuses_another_base(cli_exit_code, tmp_path, base_and_adapter, capsys):
    _, adapter_dir, _ = base_and_adapter
    other = create_model("fetalclip-tiny", seed=1).save(tmp_path / "other")
    assert cli_exit_code(["convert", str(other), str(tmp_path / "out"), "--merge", str(adapter_dir)]) == 2
    assert "other base weights" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_probe_classify_with_lora_reports_like_the_linear_probe(cli_exit_code, tmp_path, planes_spec, tiny_model, one_thread):
    common = ["probe", "classify", "--data", planes_spec, "--folds", "2", "--runs", "1", "--epochs", "2", "--lr", "1e-2",
              "--batch-size", "8"]
    assert cli_exit_code([*common, "--cache", "none", "--out", str(tmp_path / "linear.json")]) == 0
    assert cli_exit_code([*common, "--lora-rank", "2", "--out", str(tmp_path / "lora.json")]) == 0
    linear, lora = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("linear", "lora"))
    assert lora["task"] == "lora-probe" and lora["lora"]["rank"] == 2 and lora["lora"]["towers"] == ["image"]
    shared = set(linear) - {"provenance", "grid"}
    assert shared <= set(lora)  # the same report, keys for keys
    assert lora["splits"] == linear["splits"] and lora["n_test"] == linear["n_test"]  # the same patients
    assert 0 < lora["lora"]["trainable_parameters"] < 0.1 * lora["lora"]["encoder_parameters"]
    assert len(lora["macro_f1_per_head"]) == 2 and all(0 <= f <= 1 for f in lora["macro_f1_per_head"])
    assert np.all(np.asarray(lora["confusion"]["matrix"]).sum() == 2 * lora["n_test"])
    # The base model is never touched by the probe.
    reference = create_model("fetalclip-tiny", seed=0).clip.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in tiny_model.clip.state_dict().items())


@pytest.mark.parametrize("extra, message", [(["--augment", "1"], "--augment"), (["--save-head", "h.safetensors"], "--save-head"),
                                            (["--grid", "1e-3:0.0,1e-2:0.0"], "grid")])
def test_probe_lora_refuses_what_only_a_frozen_probe_does(cli_exit_code, tmp_path, planes_spec, capsys, extra, message):
    assert cli_exit_code(["probe", "classify", "--data", planes_spec, "--lora-rank", "2", *extra]) == 2
    assert message in capsys.readouterr().err
