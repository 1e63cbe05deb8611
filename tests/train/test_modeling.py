"""Start models: random init, --init from our folders and published .pt files, context-length change, SigLIP."""

import torch

import fetalclip
from fetalclip.models import write_published_checkpoint
from fetalclip.train.modeling import build_model, resize_text_positions

from .conftest import SMALL_MODEL


def test_resize_keeps_end_points_and_interpolates():
    embedding = torch.arange(10, dtype=torch.float32).repeat(3, 1).T  # [10, 3], value = position
    resized = resize_text_positions(embedding, 19)
    assert resized.shape == (19, 3)
    torch.testing.assert_close(resized[:, 0], torch.linspace(0, 9, 19))


def test_init_from_our_checkpoint_with_longer_context(tmp_path):
    source = build_model("fetalclip-tiny", model_overrides=SMALL_MODEL, seed=1)
    source.save(tmp_path / "ckpt")
    model = build_model("fetalclip-tiny", init=str(tmp_path / "ckpt"), context_length=48, model_overrides={}, seed=2)
    assert model.context_length == 48 and model.preprocess.image_size == 64
    old, new = source.clip.state_dict(), model.clip.state_dict()
    torch.testing.assert_close(new["positional_embedding"][0], old["positional_embedding"][0])
    torch.testing.assert_close(new["positional_embedding"][-1], old["positional_embedding"][-1])
    for key in old:
        if key != "positional_embedding":
            torch.testing.assert_close(new[key], old[key], msg=key)
    assert model.config["provenance"]["init"] == str(tmp_path / "ckpt")


def test_init_from_published_pt(tmp_path):
    source = fetalclip.create_model("fetalclip-tiny", seed=3)
    write_published_checkpoint(tmp_path / "w.pt", source.clip.state_dict())
    model = build_model("fetalclip-tiny", init=str(tmp_path / "w.pt"), seed=0)
    torch.testing.assert_close(model.clip.state_dict()["visual.proj"], source.clip.state_dict()["visual.proj"])


def test_siglip_model_has_a_bias_and_round_trips(tmp_path):
    model = build_model("fetalclip-tiny", model_overrides=SMALL_MODEL, loss="siglip")
    assert model.clip.logit_bias.item() == -10.0 and abs(model.clip.logit_scale.exp().item() - 10.0) < 1e-4
    model.save(tmp_path / "sig")
    loaded = fetalclip.load(tmp_path / "sig")
    torch.testing.assert_close(loaded.clip.logit_bias, model.clip.logit_bias)
    # Back to the CLIP loss: the bias is dropped, everything else kept.
    clip_again = build_model("fetalclip-tiny", init=str(tmp_path / "sig"), loss="clip")
    assert getattr(clip_again.clip, "logit_bias", None) is None
