"""Same-view positives and the image-image term (train.objectives), alone and inside the training loop."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from fetalclip.errors import FetalCLIPError
from fetalclip.train import train
from fetalclip.train.objectives import nt_xent, view_positive_clip_loss

from .conftest import small_config
from .test_loop import _command, _env, losses


def _features(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1),
            torch.tensor(10.0))


def test_distinct_views_give_the_clip_loss_and_shared_views_share_their_captions():
    image, text, scale = _features()
    distinct = torch.arange(6)
    assert view_positive_clip_loss(image, text, scale, distinct) == pytest.approx(float(ClipLoss()(image, text, scale)), rel=1e-6)
    # Two pairs of one view: swapping their captions changes nothing (plain CLIP would call that a different loss).
    views = torch.tensor([0, 0, 1, 2, 3, 4])
    swapped = text[[1, 0, 2, 3, 4, 5]]
    assert view_positive_clip_loss(image, swapped, scale, views) == pytest.approx(float(view_positive_clip_loss(image, text, scale, views)))
    assert float(ClipLoss()(image, swapped, scale)) != pytest.approx(float(ClipLoss()(image, text, scale)))
    # Images lined up with their view's caption score better than images lined up with another view's.
    aligned = view_positive_clip_loss(text[[0, 0, 2, 3, 4, 5]], text, scale, views)
    assert aligned < view_positive_clip_loss(text[[2, 2, 0, 3, 4, 5]], text, scale, views)


def test_the_image_image_term_rewards_twins_and_trains_both_views():
    first, _, _ = _features()
    second = (first + 0.05 * torch.randn(first.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    twins = nt_xent(first, second)
    assert twins < nt_xent(first, second[torch.tensor([1, 2, 3, 4, 5, 0])])
    twins.backward()
    assert second.grad is not None and float(second.grad.abs().sum()) > 0


def test_the_loop_trains_with_both_and_accumulation_keeps_the_losses(tmp_path, pairs_spec):
    settings = {"augment": "ultrasound", "view_positives": True, "image_image_weight": 0.5, "steps": 3}
    full = train(small_config([pairs_spec], **settings), tmp_path / "full")
    accumulated = train(small_config([pairs_spec], accum_steps=2, **settings), tmp_path / "accum")
    assert accumulated.losses == pytest.approx(full.losses, rel=1e-4)
    plain = train(small_config([pairs_spec], steps=3, augment="ultrasound"), tmp_path / "plain")
    assert full.losses[0] != pytest.approx(plain.losses[0])  # the objective did change


def test_recipes_that_cannot_work_are_refused(pairs_spec):
    with pytest.raises(FetalCLIPError, match="image_image_weight > 0 compares two augmented views"):
        small_config([pairs_spec], image_image_weight=1.0)
    with pytest.raises(FetalCLIPError, match="view_positives is a form of the clip loss"):
        small_config([pairs_spec], view_positives=True, loss="siglip")
    with pytest.raises(FetalCLIPError, match="image_image_weight must be >= 0"):
        small_config([pairs_spec], image_image_weight=-1.0, augment="mild")


@pytest.mark.slow
def test_two_processes_gather_views_and_twins_like_one(tmp_path, pairs_spec):
    extra = ["--set", "augment=ultrasound", "--set", "view_positives=true", "--set", "image_image_weight=0.5"]
    single = train(small_config([pairs_spec], steps=2, augment="ultrasound", view_positives=True, image_image_weight=0.5),
                   tmp_path / "single")
    run = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fetalclip", "train", *_command(run, pairs_spec, 2, extra)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert losses(run) == pytest.approx(single.losses, rel=1e-4)
