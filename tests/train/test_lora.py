"""LoRA training: only adapters train, the run writes a merged model and the adapter alone, resume and DDP hold."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import fetalclip
from fetalclip.cli import main
from fetalclip.errors import FetalCLIPError
from fetalclip.models.lora import ADAPTER_WEIGHTS, lora_config_of
from fetalclip.train import train
from fetalclip.train.config import make_config, parse_assignment
from fetalclip.train.modeling import build_model
from fetalclip.train.runlog import read_log

from .conftest import SMALL_MODEL, small_config
from .test_loop import _command, _env, losses

LORA = {"lora_rank": 4, "lora_alpha": 8.0}


@pytest.fixture
def base_dir(tmp_path):
    """The small fetalclip-tiny saved as a checkpoint, so runs can start from it and adapters bind to it."""
    return build_model("fetalclip-tiny", model_overrides=SMALL_MODEL).save(tmp_path / "base")


def test_lora_settings_parse_and_validate(tmp_path):
    recipe = tmp_path / "lora.toml"
    recipe.write_text('lora_rank = 8\nlora_alpha = 16\nlora_targets = ["attn"]\nlora_towers = ["image", "text"]\n')
    assert make_config(recipe).lora().targets == ("attn",)
    assert parse_assignment("lora_targets=attn,mlp") == ("lora_targets", ["attn", "mlp"])
    config = make_config(None, {"lora_rank": "8", "lora_alpha": "16", "lora_towers": "image", "lora_train_extra": "logit_scale"})
    assert config.lora().towers == ("image",) and config.lora().scale == 2.0 and config.lora().extra == ("logit_scale",)
    assert make_config(None, {}).lora() is None
    for bad, message in [({"lora_rank": 4, "lora_targets": "qkv"}, "lora_targets"),
                         ({"lora_rank": 4, "lock_image": True}, "lock_image"),
                         ({"lora_rank": -1}, "lora_rank"),
                         ({"lora_rank": 4, "lora_train_extra": "everything"}, "lora_train_extra")]:
        with pytest.raises(FetalCLIPError, match=message):
            make_config(None, bad)


def test_a_lora_run_trains_only_adapters_and_writes_merged_model_and_adapter(tmp_path, pairs_spec, base_dir):
    config = small_config([pairs_spec], steps=3, init=str(base_dir), holdout_fraction=0.25, eval_every=2, **LORA)
    result = train(config, tmp_path / "run")
    run = tmp_path / "run"
    assert len(result.losses) == 3 and all(loss > 0 for loss in result.losses)
    assert result.eval["retrieval/n"] == 6  # evaluation hooks see the adapted model
    base = fetalclip.load(base_dir)
    merged = fetalclip.load(run / "model")  # a plain checkpoint
    assert lora_config_of(merged) is None and merged.config["provenance"]["lora"]["merged"] is True
    trained, untouched = merged.clip.state_dict(), base.clip.state_dict()
    adapted = [k for k in trained if k.endswith(("in_proj_weight", "out_proj.weight", "c_fc.weight", "c_proj.weight"))]
    assert adapted and all(not torch.equal(trained[k], untouched[k]) for k in adapted)
    assert all(torch.equal(trained[k], untouched[k]) for k in trained if k not in adapted)  # the rest frozen

    assert (run / "adapter" / ADAPTER_WEIGHTS).stat().st_size < 0.1 * (run / "model" / "model.safetensors").stat().st_size
    with_adapter = fetalclip.load(base_dir, adapter=run / "adapter")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(with_adapter.encode_image(images), merged.encode_image(images), rtol=0, atol=1e-5)
        tokens = merged.tokenize(["fetal brain", "fetal femur"])
        torch.testing.assert_close(with_adapter.encode_text(tokens), merged.encode_text(tokens), rtol=0, atol=1e-5)


def test_a_lora_run_resumes_exactly_and_accumulates_like_the_full_batch(tmp_path, pairs_spec, base_dir):
    settings = dict(init=str(base_dir), save_every=2, lora_train_extra=["logit_scale"], **LORA)
    reference = train(small_config([pairs_spec], steps=4, **settings), tmp_path / "reference")
    train(small_config([pairs_spec], steps=2, **settings), tmp_path / "resumed")
    resumed = train(small_config([pairs_spec], steps=4, **settings), tmp_path / "resumed", resume=True)
    assert resumed.start_step == 2
    assert losses(tmp_path / "resumed") == pytest.approx(reference.losses, rel=1e-6, abs=1e-7)
    accumulated = train(small_config([pairs_spec], steps=4, accum_steps=2, **settings), tmp_path / "accum")
    assert accumulated.losses == pytest.approx(reference.losses, rel=1e-4)
    with pytest.raises(FetalCLIPError, match="lora_rank"):  # a LoRA run is not resumed as full training
        train(small_config([pairs_spec], steps=6, init=str(base_dir), save_every=2), tmp_path / "resumed", resume=True)


def test_lora_runs_with_gradient_checkpointing_and_fp16(tmp_path, pairs_spec, base_dir):
    settings = dict(steps=2, init=str(base_dir), **LORA)
    plain = train(small_config([pairs_spec], **settings), tmp_path / "plain")
    checkpointed = train(small_config([pairs_spec], grad_checkpointing=True, **settings), tmp_path / "checkpointed")
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-5)
    low = train(small_config([pairs_spec], precision="fp16", **settings), tmp_path / "fp16")
    assert low.losses != plain.losses and low.losses == pytest.approx(plain.losses, rel=0.05)
    assert {p.dtype for p in fetalclip.load(tmp_path / "fp16" / "model").clip.parameters()} == {torch.float32}


def test_fetalclip_train_takes_the_lora_keys(tmp_path, pairs_spec, base_dir):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *_command(run, pairs_spec, 2), "--init", str(base_dir), "--set", "lora_rank=4", "--set",
              "lora_alpha=8", "--set", "lora_targets=attn,mlp", "--set", "lora_towers=image,text"])
    assert exit_info.value.code == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["lora_rank"] == 4 and saved["lora_towers"] == ["image", "text"]
    assert json.loads((run / "adapter" / "adapter.json").read_text())["lora"]["rank"] == 4
    assert [int(row["step"]) for row in read_log(run / "train_log.csv")] == [1, 2]


def test_two_process_lora_run_matches_one_process(tmp_path, pairs_spec, base_dir):
    steps = 3
    single = train(small_config([pairs_spec], steps=steps, init=str(base_dir), **LORA), tmp_path / "single")
    run = tmp_path / "ddp"
    extra = ["--init", str(base_dir), "--set", "lora_rank=4", "--set", "lora_alpha=8"]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fetalclip", "train", *_command(run, pairs_spec, steps, extra)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert losses(run) == pytest.approx(single.losses, rel=1e-4)
    one, two = fetalclip.load(tmp_path / "single" / "model"), fetalclip.load(run / "model")
    for key, value in one.clip.state_dict().items():
        torch.testing.assert_close(two.clip.state_dict()[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sigkill_then_resume_of_a_lora_run_matches_an_uninterrupted_one(tmp_path, pairs_spec, base_dir):
    steps = 8
    reference = train(small_config([pairs_spec], steps=steps, init=str(base_dir), **LORA), tmp_path / "reference")
    run = tmp_path / "killed"
    command = [sys.executable, "-m", "fetalclip", "train", *_command(run, pairs_spec, steps, [
        "--save-every", "2", "--init", str(base_dir), "--set", "lora_rank=4", "--set", "lora_alpha=8"])]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "step-00000002.pt").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (run / "model").exists()
    resumed = subprocess.run([*command, "--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(run) == pytest.approx(reference.losses, rel=1e-5, abs=1e-6)
    fetalclip.load(base_dir, adapter=run / "adapter")
