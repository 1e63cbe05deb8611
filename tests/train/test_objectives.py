"""Same-view positives, the image-image term and absent-view negatives (train.objectives), alone and in the loop."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from fetalclip.errors import FetalCLIPError
from fetalclip.train import train
from fetalclip.train.negatives import AbsentViewCaptions
from fetalclip.train.objectives import nt_xent, own_pair_targets, targeted_clip_loss, view_positive_clip_loss

from .conftest import small_config, write_pairs
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
def test_two_processes_gather_views_twins_and_negatives_like_one(tmp_path, pairs_spec):
    extra = ["--set", "augment=ultrasound", "--set", "view_positives=true", "--set", "image_image_weight=0.5",
             "--set", "absent_view_negatives=true"]
    single = train(small_config([pairs_spec], steps=2, augment="ultrasound", view_positives=True, image_image_weight=0.5,
                                absent_view_negatives=True), tmp_path / "single")
    run = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fetalclip", "train", *_command(run, pairs_spec, 2, extra)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert losses(run) == pytest.approx(single.losses, rel=1e-4)


def test_absent_view_negatives_are_columns_no_image_may_pick():
    image, text, scale = _features()
    own = own_pair_targets(6, 0, 1, image.device)
    assert targeted_clip_loss(image, text, scale, own) == pytest.approx(float(ClipLoss()(image, text, scale)), rel=1e-6)
    # A negative that looks like an image's own caption costs more than one unlike every image.
    close = text[:1].clone().requires_grad_(True)
    far = -image.mean(0, keepdim=True)
    far = F.normalize(far, dim=-1).requires_grad_(True)
    with_close = targeted_clip_loss(image, text, scale, own, close)
    assert with_close > targeted_clip_loss(image, text, scale, own, far) > float(ClipLoss()(image, text, scale))
    with_close.backward()
    assert float(close.grad.abs().sum()) > 0  # the text tower is taught to move it away
    # Only the image-to-text direction sees them: the text-to-image half is plain CLIP's.
    per_text = F.cross_entropy(scale * text @ image.T, torch.arange(6))
    per_image = F.cross_entropy(scale * image @ torch.cat([text, close.detach()]).T, torch.arange(6))
    assert float(with_close.detach()) == pytest.approx(float(per_image + per_text) / 2, rel=1e-6)


def test_the_loop_adds_absent_view_negatives_and_accumulation_keeps_the_losses(tmp_path, pairs_spec, caplog):
    settings = {"absent_view_negatives": True, "caption_fn": "plain", "steps": 3}
    with caplog.at_level("INFO", logger="fetalclip"):
        full = train(small_config([pairs_spec], **settings), tmp_path / "full")
    assert "absent-view negatives: spine, kidney" in caplog.text  # the pairs show brain, abdomen, femur, thorax
    accumulated = train(small_config([pairs_spec], accum_steps=2, **settings), tmp_path / "accum")
    assert accumulated.losses == pytest.approx(full.losses, rel=1e-4)
    plain = train(small_config([pairs_spec], steps=3, caption_fn="plain"), tmp_path / "plain")
    assert full.losses[0] > plain.losses[0]  # more columns to lose probability to
    with pytest.raises(FetalCLIPError, match="absent_view_negatives adds columns to the clip loss"):
        small_config([pairs_spec], absent_view_negatives=True, loss="siglip")


def test_absent_view_negatives_refuse_captions_the_labels_do_not_vouch_for(tmp_path):
    captioned = write_pairs(tmp_path / "captioned", captions=True)  # "scan number 3 of the thorax": its own words
    with pytest.raises(FetalCLIPError, match=r"\d+ training samples carry captions of their own"):
        train(small_config([captioned], absent_view_negatives=True, steps=1), tmp_path / "own")
    done = train(small_config([captioned], absent_view_negatives=True, own_captions=False, caption_fn="plain", steps=1),
                 tmp_path / "plain")
    assert len(done.losses) == 1


def test_absent_view_captions_are_seeded_by_step():
    negatives = AbsentViewCaptions(["brain", "abdomen"], 32, seed=0)
    assert "profile" in negatives.views and "brain" not in negatives.views
    assert negatives.captions(3) == AbsentViewCaptions(["abdomen", "brain"], 32, seed=0).captions(3)
    assert negatives.captions(3) != negatives.captions(4)
    assert negatives.tokens(3).shape == (len(negatives), 32)
