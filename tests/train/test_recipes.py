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
