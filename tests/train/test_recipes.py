"""The recipes shipped in configs/: valid settings, and the CPU recipe's pipeline on the shared real data."""

from pathlib import Path

import pytest

from fetalclip.train.config import make_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_shipped_recipes_are_valid(recipe):
    config = make_config(CONFIGS / recipe)
    assert config.model.startswith("fetalclip-")
    assert config.steps > config.warmup_steps


def test_cpu_recipe_runs_on_the_shared_data_with_held_out_evaluation(tmp_path, hc18_dir, fpdb_dir):
    """The tiny-cpu recipe, shortened to a few steps: both datasets, balanced draws, both held-out evaluations."""
    from fetalclip.train import train
    from fetalclip.train.runlog import read_log

    recipe = make_config(CONFIGS / "tiny-cpu.toml")
    assert recipe.balance_views > 0 and recipe.zeroshot_planes == "holdout" and recipe.holdout_fraction > 0
    config = make_config(CONFIGS / "tiny-cpu.toml", {
        "data": [f"hc18:{hc18_dir}", f"fpdb:{fpdb_dir}"], "steps": 2, "batch_size": 8, "warmup_steps": 1,
        "eval_max_samples": 24, "save_every": 0, "progress": False,
    })
    result = train(config, tmp_path / "run")
    assert len(result.losses) == 2 and all(loss > 0 for loss in result.losses)
    logged = {row["metric"] for row in read_log(tmp_path / "run" / "eval_log.csv")}
    assert {"retrieval/i2t_view_r5", "retrieval/i2t_view_r5_chance", "zeroshot/planes/f1"} <= logged
    assert result.eval["retrieval/n"] == 24 and 0 < result.eval["zeroshot/planes/n"] <= 24


def test_transfer_recipe_runs_with_a_machine_held_out_and_logs_transfer(tmp_path, hc18_dir, fpdb_dir):
    """The laptop transfer recipe, shortened: the measurement variant (Aloka never trained on) end to end."""
    from fetalclip.train import train

    recipe = make_config(CONFIGS / "laptop-transfer.toml")
    assert recipe.augment == "ultrasound" and recipe.caption_fn == "plain" and recipe.holdout_group is None
    assert recipe.model == "fetalclip-small-rn"
    config = make_config(CONFIGS / "laptop-transfer.toml", {
        "data": [f"hc18:{hc18_dir}", f"fpdb:{fpdb_dir}"], "steps": 2, "batch_size": 8, "warmup_steps": 1,
        "eval_max_samples": 24, "save_every": 0, "progress": False, "holdout_group": "us_machine=Aloka",
        "transfer_planes": f"fpdb:{fpdb_dir}",
    })
    result = train(config, tmp_path / "run")
    assert len(result.losses) == 2
    assert 0 <= result.eval["transfer/planes/probe_macro_f1_aloka"] <= 100
    assert 0 <= result.eval["transfer/planes/zeroshot_macro_f1_aloka"] <= 100
