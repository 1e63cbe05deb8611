"""A run folder is never lost to a resume: no silent restart, damaged checkpoints set aside, logs kept."""

from __future__ import annotations

import pytest
import torch

from fetalclip.errors import FetalCLIPError
from fetalclip.train import train
from fetalclip.train.checkpointing import list_checkpoints, load_latest_checkpoint, save_checkpoint
from fetalclip.train.runlog import read_log

from .conftest import small_config


@pytest.fixture
def finished_run(tmp_path, pairs_spec):
    """A 4-step run with checkpoints at steps 2 and 4."""
    config = small_config([pairs_spec], steps=4, save_every=2)
    run = tmp_path / "run"
    train(config, run)
    return config, run


def test_resume_without_a_readable_checkpoint_refuses_and_keeps_the_log(finished_run):
    config, run = finished_run
    log_before = (run / "train_log.csv").read_bytes()
    for _, path in list_checkpoints(run):
        path.write_bytes(b"not a checkpoint")
    longer = small_config(config.data, steps=6, save_every=2)
    with pytest.raises(FetalCLIPError, match="no readable checkpoint.*--restart"):
        train(longer, run, resume=True)
    assert (run / "train_log.csv").read_bytes() == log_before  # not truncated to a fresh start
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000002.pt.unreadable", "step-00000004.pt.unreadable"]

    # --restart starts over and keeps the whole old run aside.
    result = train(longer, run, restart=True)
    assert result.start_step == 0 and [int(r["step"]) for r in read_log(run / "train_log.csv")] == list(range(1, 7))
    (aside,) = run.glob("previous-*")
    assert (aside / "train_log.csv").read_bytes() == log_before and (aside / "model").is_dir()
    assert len(list((aside / "checkpoints").iterdir())) == 2
    with pytest.raises(FetalCLIPError, match="exclude each other"):
        train(longer, run, resume=True, restart=True)
    with pytest.raises(FetalCLIPError, match="--restart"):
        train(longer, run)  # a folder holding a run names both ways on


def test_a_damaged_newer_checkpoint_never_outlives_a_readable_one(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, {"value": torch.tensor(step)}, keep=3)
    list_checkpoints(tmp_path)[-1][1].write_bytes(b"truncated")  # step 6 damaged
    state = load_latest_checkpoint(tmp_path, set_aside_unreadable=True)
    assert state["step"] == 4
    # The resumed run writes step 5; pruning to two keeps 4 and 5 (readable), not 5 and the damaged 6.
    save_checkpoint(tmp_path, 5, {"value": torch.tensor(5)}, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4, 5]
    assert (tmp_path / "checkpoints" / "step-00000006.pt.unreadable").is_file()
    assert load_latest_checkpoint(tmp_path)["step"] == 5


def test_resume_cleans_partial_writes_and_names_a_junk_log_line(finished_run):
    config, run = finished_run
    partial = run / "checkpoints" / ".step-00000006.pt.x1y2.tmp"  # a write killed before its rename
    partial.write_bytes(b"half a checkpoint")
    log = run / "train_log.csv"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "two," + lines[2].split(",", 1)[1], *lines[2:]]) + "\n")
    longer = small_config(config.data, steps=5, save_every=2)
    with pytest.raises(FetalCLIPError, match=r"train_log.csv: line 2: step 'two' is not a whole number"):
        train(longer, run, resume=True)
    assert not partial.exists()
    log.write_text("\n".join(lines) + "\n")
    result = train(longer, run, resume=True)
    assert result.start_step == 4 and [int(r["step"]) for r in read_log(log)] == [1, 2, 3, 4, 5]
