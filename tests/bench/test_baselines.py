"""Baselines: open_clip models from local files behind our interface; missing weights are a clear error, never a download."""

from __future__ import annotations

import hashlib
import json
import urllib.request

import numpy as np
import open_clip
import pytest
import torch

from fetalclip.bench.baselines import (
    BaselineModel,
    WeightsNotFoundError,
    baseline_checksum,
    is_baseline_spec,
    load_baseline,
    resolve_baseline,
)
from fetalclip.errors import FetalCLIPError

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails the test."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse, raising=False)


def _write_open_clip_folder(folder, seed=0, resize_mode="shortest"):
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**TINY_OPEN_CLIP)
    torch.save(clip.state_dict(), folder / "open_clip_pytorch_model.bin")
    config = {"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {"resize_mode": resize_mode, "interpolation": "bicubic"}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


def test_local_folder_baseline_uses_its_own_preprocessing_and_context(tmp_path, gray_image):
    folder = _write_open_clip_folder(tmp_path / "tiny-oc")
    model = load_baseline(f"open_clip:{folder}", label="tiny-oc")
    assert isinstance(model, BaselineModel) and model.name == "tiny-oc"
    assert model.context_length == 77 and model.tokenize(["a", "b"]).shape == (2, 77)
    assert model.embed_dim == 32 and model.encode_text(["fetal brain"]).shape == (1, 32)
    # Its own transform: shortest side to 64 then centre crop, so a 2:3 image loses its sides but gets no black bars.
    seen = np.asarray(model.preprocess.to_model_image(gray_image))
    assert seen.shape == (64, 64, 3) and seen[0].max() > 0 and seen[-1].max() > 0
    # ... and exactly what open_clip itself computes for this model.
    reference, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    from PIL import Image

    with torch.inference_mode():
        ours = model.encode_image([gray_image])
        theirs = reference.encode_image(transform(Image.fromarray(gray_image))[None])
    torch.testing.assert_close(ours, theirs)
    _, spacing = model.preprocess.with_spacing(gray_image, 0.2)
    assert spacing == pytest.approx(0.2 * 120 / 64)  # the short side (120 px) spans the input
    with pytest.raises(FetalCLIPError, match="save them with open_clip"):
        model.save(tmp_path / "x")


def test_architecture_with_weights_file_and_random_forms(tmp_path):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "fetalclip-test-oc.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config_dir)
    folder = _write_open_clip_folder(tmp_path / "w", seed=1)
    weights = folder / "open_clip_pytorch_model.bin"
    from_file = load_baseline(f"open_clip:fetalclip-test-oc@{weights}")
    state = torch.load(weights, weights_only=True)
    torch.testing.assert_close(from_file.clip.state_dict()["text_projection"], state["text_projection"])
    random_a = load_baseline("open_clip:fetalclip-test-oc@random", seed=0)
    random_b = load_baseline("open_clip:fetalclip-test-oc@random", seed=0)
    torch.testing.assert_close(random_a.clip.state_dict()["visual.proj"], random_b.clip.state_dict()["visual.proj"])
    assert baseline_checksum(f"open_clip:fetalclip-test-oc@{weights}") == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert baseline_checksum("open_clip:fetalclip-test-oc@random", seed=0) != baseline_checksum("open_clip:fetalclip-test-oc@random", seed=1)
    with pytest.raises(FetalCLIPError, match="say which weights"):
        resolve_baseline("open_clip:fetalclip-test-oc")


def test_missing_weights_say_so_without_downloading(tmp_path):
    with pytest.raises(WeightsNotFoundError) as error:
        load_baseline("clip-vit-l14", cache_dir=str(tmp_path))
    message = str(error.value)
    assert "ViT-L-14 'openai' weights are not on this machine" in message
    assert "open_clip:ViT-L-14@/path/to/weights" in message and str(tmp_path) in message
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download microsoft/BiomedCLIP"):
        resolve_baseline("biomedclip", cache_dir=str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_baseline(f"open_clip:ViT-B-32@{tmp_path / 'nope.pt'}")
    with pytest.raises(FetalCLIPError, match="unknown open_clip architecture"):
        resolve_baseline("open_clip:ViT-Q-99@openai")
    assert is_baseline_spec("biomedclip") and is_baseline_spec("open_clip:x") and not is_baseline_spec("fetalclip-tiny")


def test_cached_weights_are_found_by_tag(tmp_path):
    # open_clip's URL cache layout: the file under its URL's basename.
    (tmp_path / "ViT-B-32.pt").write_bytes(b"stand-in")
    source = resolve_baseline("open_clip:ViT-B-32@openai", cache_dir=str(tmp_path))
    assert source.weights == tmp_path / "ViT-B-32.pt" and source.tag_cfg["quick_gelu"] is True
    # huggingface_hub's cache layout for an open_clip hub model: loaded from the snapshot folder.
    snapshot = tmp_path / "hub" / "models--someone--tiny-oc" / "snapshots" / "abc123"
    _write_open_clip_folder(snapshot)
    (tmp_path / "hub" / "models--someone--tiny-oc" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-oc" / "refs" / "main").write_text("abc123")
    model = load_baseline("open_clip:hf-hub:someone/tiny-oc", cache_dir=str(tmp_path / "hub"))
    assert model.embed_dim == 32 and model.encode_image([np.zeros((50, 80), np.uint8)]).shape == (1, 32)
