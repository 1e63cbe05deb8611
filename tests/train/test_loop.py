"""The training loop end to end on CPU: run folder, accumulation, hard kill + resume, torchrun with 2 processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fetalclip
from fetalclip.errors import FetalCLIPError
from fetalclip.train import train
from fetalclip.train.runlog import read_log

from .conftest import small_config

SRC = Path(fetalclip.__file__).resolve().parents[1]


def losses(run_dir):
    return [float(row["loss"]) for row in read_log(Path(run_dir) / "train_log.csv")]


def test_run_folder_ends_with_a_loadable_model(tmp_path, pairs_spec):
    config = small_config([pairs_spec], steps=3, holdout_fraction=0.25, eval_every=2, save_every=2)
    result = train(config, tmp_path / "run")
    run = tmp_path / "run"
    assert result.end_step == 3 and len(result.losses) == 3 and all(loss > 0 for loss in result.losses)
    assert [int(r["step"]) for r in read_log(run / "train_log.csv")] == [1, 2, 3]
    assert {r["step"] for r in read_log(run / "eval_log.csv")} == {"2", "3"}
    assert result.eval["retrieval/n"] == 6 and 0 <= result.eval["retrieval/i2t_view_r5"] <= 1
    assert json.loads((run / "config.json").read_text())["steps"] == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002.pt", "step-00000003.pt"]
    model = fetalclip.load(run / "model")
    assert model.context_length == 32 and model.preprocess.image_size == 64
    final = torch.load(run / "checkpoints" / "step-00000003.pt", weights_only=False)["model"]
    torch.testing.assert_close(model.clip.state_dict()["visual.proj"], final["visual.proj"])
    with pytest.raises(FetalCLIPError, match="--resume"):
        train(config, run)  # refuses to overwrite a run


def test_accumulation_matches_the_full_batch(tmp_path, pairs_spec):
    full = train(small_config([pairs_spec], steps=3), tmp_path / "full")
    accumulated = train(small_config([pairs_spec], steps=3, accum_steps=4), tmp_path / "accum")
    assert accumulated.losses == pytest.approx(full.losses, rel=1e-4)


def test_locked_image_tower_stays_fixed(tmp_path, pairs_spec):
    config = small_config([pairs_spec], steps=2, lock_image=True, loss="siglip")
    train(config, tmp_path / "run")
    start = fetalclip.train.modeling.build_model("fetalclip-tiny", model_overrides=config.model_overrides, loss="siglip")
    after = fetalclip.load(tmp_path / "run" / "model")
    torch.testing.assert_close(after.clip.visual.proj, start.clip.visual.proj)
    assert not torch.equal(after.clip.text_projection, start.clip.text_projection)


def test_gradient_checkpointing_recomputes_blocks_and_keeps_the_losses(tmp_path, pairs_spec, monkeypatch):
    import open_clip.transformer

    calls = []
    original = open_clip.transformer.checkpoint

    def counting(function, *args, **kwargs):
        calls.append(function)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(open_clip.transformer, "checkpoint", counting)
    plain = train(small_config([pairs_spec], steps=3), tmp_path / "plain")
    assert calls == []
    checkpointed = train(small_config([pairs_spec], steps=3, grad_checkpointing=True), tmp_path / "checkpointed")
    # Every residual block of both towers (6 image + 4 text) runs through checkpoint() at every step.
    assert len(calls) == 3 * (6 + 4)
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_fp32(tmp_path, pairs_spec, precision):
    """Autocast (and, for fp16, the gradient scaler) on CPU: the same run in low precision stays near fp32."""
    fp32 = train(small_config([pairs_spec], steps=3, precision="fp32"), tmp_path / "fp32")
    config = small_config([pairs_spec], steps=3, precision=precision, save_every=2)
    low = train(config, tmp_path / precision)
    assert low.losses != fp32.losses  # autocast really ran in low precision
    assert low.losses == pytest.approx(fp32.losses, rel=0.05)
    checkpoint = torch.load(tmp_path / precision / "checkpoints" / "step-00000002.pt", weights_only=False)
    assert (checkpoint["scaler"] is not None) == (precision == "fp16")
    # The exported model is plain fp32 whatever the training precision.
    model = fetalclip.load(tmp_path / precision / "model")
    assert {p.dtype for p in model.clip.parameters()} == {torch.float32}


def _command(run_dir, spec, steps, extra=()):
    return [
        "--out", str(run_dir), "--data", spec, "--steps", str(steps), "--batch-size", "8", "--lr", "1e-3",
        "--seed", "0", "--device", "cpu", "--no-progress", "--set", "warmup_steps=1",
        "--set", 'model_overrides={"vision_cfg": {"image_size": 64}, "text_cfg": {"context_length": 32}}', *extra,
    ]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    env.update(extra)
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, pairs_spec):
    steps = 8
    reference = train(small_config([pairs_spec], steps=steps), tmp_path / "reference")

    run = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "fetalclip", "train", *_command(run, pairs_spec, steps, ["--save-every", "2"])],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "step-00000002.pt").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = len(losses(run))
    assert 2 <= killed_at < steps and not (run / "model").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "fetalclip", "train", *_command(run, pairs_spec, steps, ["--save-every", "2", "--resume"])],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    log = read_log(run / "train_log.csv")
    assert [int(row["step"]) for row in log] == list(range(1, steps + 1))  # no duplicated rows from the killed run
    assert losses(run) == pytest.approx(reference.losses, rel=1e-5, abs=1e-6)
    assert json.loads((run / "summary.json").read_text())["resumed_from"] >= 2
    fetalclip.load(run / "model")


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tmp_path, pairs_spec):
    steps = 3
    single = train(small_config([pairs_spec], steps=steps, holdout_fraction=0.25, eval_every=2), tmp_path / "single")
    run = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fetalclip", "train", *_command(run, pairs_spec, steps, ["--set", "holdout_fraction=0.25", "--eval-every", "2"])],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert losses(run) == pytest.approx(single.losses, rel=1e-4)
    evaluated = {row["metric"]: float(row["value"]) for row in read_log(run / "eval_log.csv") if row["step"] == "3"}
    assert evaluated == pytest.approx(single.eval, abs=1e-6)  # held-out retrieval ran on rank 0 only, same numbers
    fetalclip.load(run / "model")
