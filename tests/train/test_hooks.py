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
