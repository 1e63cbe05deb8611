"""Resumable checkpoints: RNG states, pruning, and falling back past a damaged file."""

import random

import numpy as np
import torch

from fetalclip.train.checkpointing import list_checkpoints, load_latest_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, 5, {"rng": [rng_state()]})
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_latest_checkpoint(tmp_path)["rng"][0])
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_keeps_the_newest_and_skips_a_damaged_one(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, {"value": torch.tensor(step)}, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4, 6]
    list_checkpoints(tmp_path)[-1][1].write_bytes(b"truncated")
    state = load_latest_checkpoint(tmp_path)
    assert state["step"] == 4 and int(state["value"]) == 4
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
