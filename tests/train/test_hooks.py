"""Retrieval metrics and their chance levels."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from fetalclip.train.hooks import retrieval_metrics, view_recall_chance


def test_chance_matches_enumeration():
    views = ["a", "a", "a", "b", "c", "c"]
    for k in (1, 2, 3):
        chance = view_recall_chance(views, k)
        for view in set(views):
            draws = list(itertools.combinations(range(len(views)), k))
            expected = sum(any(views[i] == view for i in draw) for draw in draws) / len(draws)
            assert chance[view] == pytest.approx(expected)


def test_perfect_and_shuffled_features():
    torch.manual_seed(0)
    features = F.normalize(torch.randn(12, 16), dim=-1)
    views = ["a", "b", "c"] * 4
    perfect = retrieval_metrics(features, features, views, ks=(1, 5))
    assert perfect["i2t_r1"] == 1.0 and perfect["t2i_r1"] == 1.0 and perfect["i2t_view_r1"] == 1.0
    assert perfect["i2t_view_r1_chance"] == pytest.approx(4 / 12)
    swapped = retrieval_metrics(features, features.roll(1, dims=0), views, ks=(1,))
    assert swapped["i2t_r1"] == 0.0 and swapped["i2t_view_r1"] == 0.0  # each image's best caption is a neighbour's


def test_view_recall_p_value_separates_real_rankings_from_a_collapsed_model():
    torch.manual_seed(0)
    views = ["a"] * 12 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4
    centres = F.normalize(torch.randn(4, 16), dim=-1)
    features = F.normalize(centres[[ord(v) - ord("a") for v in views]] + 0.3 * torch.randn(len(views), 16), dim=-1)
    informative = retrieval_metrics(features, features, views, ks=(5,), permutations=500)
    assert informative["i2t_view_r5"] == 1.0 and informative["i2t_view_r5_p"] <= 2 / 501
    # Every image ranks the captions the same way: the fixed top 5 may hold rare views (a high macro recall),
    # but swapping the images' views changes nothing, so the test cannot call it better than chance.
    collapsed_images = torch.ones(len(views), 16) / 4
    lucky_text = F.normalize(torch.randn(len(views), 16), dim=-1)
    collapsed = retrieval_metrics(collapsed_images, lucky_text, views, ks=(5,), permutations=200)
    assert collapsed["i2t_view_r5_p"] == 1.0
    assert "i2t_view_r5_p" not in retrieval_metrics(features, features, views, ks=(5,), permutations=0)


def _count_factory(config):
    """An ``eval_hooks`` factory for the test below: a hook reporting the step and the recipe's seed."""
    return lambda model, step: {"custom/step": float(step), "custom/seed": float(config.seed)}


def test_zero_shot_and_custom_hooks_from_the_recipe_land_in_the_eval_log(tmp_path, pairs_spec):
    from fetalclip.train import train
    from fetalclip.train.runlog import read_log

    from .conftest import small_config

    heads = "sim:4,size=64,per_patient=1,classes=brain"  # four heads: four pixel spacings for the GA prompts
    config = small_config([pairs_spec], steps=4, eval_every=2, eval_max_samples=6, zeroshot_planes=pairs_spec,
                          zeroshot_brain="sim:6,size=64,classes=trans-thalamic+trans-ventricular", zeroshot_ga=heads,
                          eval_hooks=["tests.train.test_hooks:_count_factory"])
    result = train(config, tmp_path / "run")
    rows = read_log(tmp_path / "run" / "eval_log.csv")
    assert {r["step"] for r in rows} == {"2", "4"}
    at_end = {r["metric"]: float(r["value"]) for r in rows if r["step"] == "4"}
    assert at_end["zeroshot/planes/n"] == 6 and 0 <= at_end["zeroshot/planes/f1"] <= 100  # eval_max_samples images
    assert at_end["zeroshot/brain/n"] == 6 and "zeroshot/brain/f1_ci_low" not in at_end  # no bootstrap in training
    assert at_end["zeroshot/ga/n"] == 4 and 0 <= at_end["zeroshot/ga/vpr"] <= 100
    assert at_end["custom/step"] == 4 and result.eval["custom/seed"] == 0


def test_configured_hooks_fail_before_training(tmp_path, pairs_spec):
    from fetalclip.errors import FetalCLIPError
    from fetalclip.train.hooks import configured_hooks

    from .conftest import small_config

    with pytest.raises(FetalCLIPError, match="is not a folder|not found"):
        configured_hooks(small_config([pairs_spec], zeroshot_planes=f"fpdb:{tmp_path / 'missing'}"))
    with pytest.raises(FetalCLIPError, match="no image has a pixel spacing and HC"):
        configured_hooks(small_config([pairs_spec], zeroshot_ga=pairs_spec))  # spacing but no HC
    with pytest.raises(FetalCLIPError, match="expected 'package.module:factory'"):
        configured_hooks(small_config([pairs_spec], eval_hooks=["no_colon"]))
    with pytest.raises(FetalCLIPError, match="cannot import"):
        configured_hooks(small_config([pairs_spec], eval_hooks=["fetalclip.nothing:here"]))


def test_zero_shot_on_the_held_out_patients_of_several_sources(tmp_path, pairs_spec):
    from fetalclip.errors import FetalCLIPError
    from fetalclip.train import train
    from fetalclip.train.data import held_out_dataset, open_sources, split_by_patient
    from fetalclip.train.hooks import configured_hooks

    from .conftest import small_config

    data = [pairs_spec, "sim:8,size=64,per_patient=2,classes=femur+abdomen,seed=5"]
    config = small_config(data, steps=2, holdout_fraction=0.5, zeroshot_planes="holdout", eval_max_samples=100)
    sources = open_sources(data)
    train_items, held_items = split_by_patient(sources, 0.5, config.seed)
    held = held_out_dataset(sources, held_items)
    (hook,) = configured_hooks(config, held)
    assert {d for d, _ in held_items} == {0, 1}  # both sources have held-out patients
    # Exactly the held-out samples, each read by its own source's loader.
    assert [r["source"] for r in hook.dataset.records] == [sources[d].records[i]["source"] for d, i in held_items]
    for k, (d, i) in enumerate(held_items):
        assert (hook.dataset[k]["image"] == sources[d][i]["image"]).all()
    trained_on = {sources[d].records[i]["source"] for d, i in train_items}
    assert not trained_on & {r["source"] for r in hook.dataset.records}

    result = train(config, tmp_path / "run")
    assert result.eval["zeroshot/planes/n"] == len(held_items)
    with pytest.raises(FetalCLIPError, match="holdout_fraction > 0"):
        small_config(data, zeroshot_planes="holdout")
