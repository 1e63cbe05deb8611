"""Warm-up + cosine schedule; which parameters get weight decay."""

import math

import pytest

from fetalclip.train.optim import build_optimizer, parameter_groups
from fetalclip.train.schedule import WarmupCosine


def test_warmup_then_cosine():
    schedule = WarmupCosine(base_lr=1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule(110) == pytest.approx(0.1) and schedule(500) == pytest.approx(0.1)
    assert all(schedule(s) >= schedule(s + 1) for s in range(10, 110))


def test_no_decay_on_gains_biases_temperature_embeddings(tiny_model):
    groups = parameter_groups(tiny_model.clip, weight_decay=0.2)
    names = {id(p): n for n, p in tiny_model.clip.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    plain = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.2 and groups[1]["weight_decay"] == 0.0
    for name in ("logit_scale", "positional_embedding", "visual.class_embedding", "visual.positional_embedding",
                 "ln_final.weight", "visual.ln_pre.bias", "transformer.resblocks.0.attn.in_proj_bias"):
        assert name in plain
    for name in ("visual.conv1.weight", "text_projection", "visual.proj", "transformer.resblocks.0.mlp.c_fc.weight"):
        assert name in decayed
    assert len(decayed) + len(plain) == len(names)


def test_locked_tower_is_left_out():
    from fetalclip.models import create_model

    clip = create_model("fetalclip-tiny", seed=0).clip
    clip.lock_image_tower()
    optimizer = build_optimizer(clip, lr=1e-3, weight_decay=0.1)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in trained for p in clip.visual.parameters())
    assert math.isclose(optimizer.param_groups[0]["lr"], 1e-3)
