"""Saved probe heads: a saved head scores exactly as the in-memory probe did, and only for its own encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError
from fetalclip.tasks.features import FeatureCache
from fetalclip.tasks.heads import HeadEncoderMismatch, ProbeHead, head_from_probe, load_head, save_head
from fetalclip.tasks.probe import linear_probe, probe_data
from fetalclip.tasks.probe_clips import clip_probe
from fetalclip.tasks.probe_recipe import ProbeRecipe


@pytest.fixture(scope="module")
def planes(tmp_path_factory):
    from fetalclip.sim.dataset import parse_sim_spec, write_phantom

    n, config = parse_sim_spec("24,size=64,per_patient=2,classes=brain+femur+abdomen")
    return open_dataset(write_phantom(n, config, tmp_path_factory.mktemp("head-planes"))["spec"])


def _image_head(tiny_model, planes, standardize=True):
    cache = FeatureCache(tiny_model, None)
    data = probe_data(cache, planes)
    run = linear_probe(data, ProbeRecipe(folds=2, runs=1, epochs=5, lr=1e-2, standardize=standardize), n_bootstrap=10)
    head = head_from_probe(run.head, name="plane", input="image", classes=run.report["classes"], encoder_name=tiny_model.name,
                           fingerprint=cache.fingerprint, embed_dim=data.x.shape[1], info={"data": "phantom"})
    return cache, data, run, head


def test_saved_image_head_gives_the_in_memory_probabilities(tmp_path, tiny_model, planes, one_thread):
    cache, data, run, head = _image_head(tiny_model, planes)
    path = save_head(head, tmp_path / "plane.safetensors")
    loaded = load_head(path, tiny_model)
    assert (loaded.name, loaded.input, loaded.classes) == ("plane", "image", ["abdomen", "brain", "femur"])
    assert loaded.info["data"] == "phantom" and loaded.info["best_epoch"] == run.head.best_epoch
    np.testing.assert_array_equal(loaded.predict(data.x), run.head.probabilities(data.x))
    # Embeddings straight from the encoder (no cache, not normalised) are what the head takes.
    import torch

    images = [planes[i]["image"] for i in range(4)]
    with torch.inference_mode():
        direct = tiny_model.encode_image(images)
    probabilities = loaded.predict(direct)
    assert probabilities.shape == (4, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, run.head.probabilities(data.x[:4]), atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert loaded.predict(data.x[0]).shape == (1, 3)  # one embedding is one row


def test_head_refuses_another_encoder_and_bad_shapes(tmp_path, tiny_model, planes, one_thread):
    from fetalclip.models import create_model

    cache, data, _, head = _image_head(tiny_model, planes, standardize=False)
    path = save_head(head, tmp_path / "plane.safetensors")
    assert load_head(path, cache).fingerprint == cache.fingerprint  # a FeatureCache, a model or a fingerprint
    assert load_head(path, cache.fingerprint).embed_dim == data.x.shape[1]
    other = create_model("fetalclip-tiny", seed=1)
    with pytest.raises(HeadEncoderMismatch, match=r"plane\.safetensors: head 'plane' was trained on encoder .* train the head again"):
        load_head(path, other)
    with pytest.raises(FetalCLIPError, match=r"takes \[N, \d+\] image embeddings; got shape \[2, 3\]"):
        head.predict(np.zeros((2, 3)))


def test_saved_clip_head_takes_frames_in_temporal_order(tmp_path):
    rng = np.random.default_rng(0)
    n, frames, dim = 24, 3, 5
    labels = ["chd" if i % 2 else "normal" for i in range(n)]
    x = rng.normal(size=(n, frames, dim)).astype(np.float32)
    x[1::2, 0] += 1.0  # the first frame tells the classes apart
    flat = x.reshape(n, frames * dim)
    run = clip_probe(flat, labels, [f"p{i}" for i in range(n)], ProbeRecipe(folds=3, runs=1, epochs=5, lr=1e-2),
                     positive="chd", n_bootstrap=10)
    head = head_from_probe(run.head, name="chd", input="clip", classes=[run.report["negative"], run.report["positive"]],
                           encoder_name="fetalclip-tiny", fingerprint="f" * 64, embed_dim=dim, frames=frames)
    loaded = load_head(save_head(head, tmp_path / "chd.safetensors"), "f" * 64)
    assert (loaded.input, loaded.frames, loaded.classes) == ("clip", 3, ["normal", "chd"])
    np.testing.assert_array_equal(loaded.predict(x), run.head.probabilities(flat))
    np.testing.assert_array_equal(loaded.predict(x[:1]), run.head.probabilities(flat[:1]))  # one clip: [1, frames, D]
    with pytest.raises(FetalCLIPError, match=r"takes \[N, 3, 5\] frame embeddings in temporal order"):
        loaded.predict(flat)


def test_unreadable_head_files_are_one_line_errors(tmp_path):
    from safetensors.numpy import save_file

    with pytest.raises(FetalCLIPError, match="no such head file"):
        load_head(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(FetalCLIPError, match="junk.safetensors: not a safetensors file"):
        load_head(tmp_path / "junk.safetensors")
    save_file({"weight": np.zeros((2, 3), np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(FetalCLIPError, match="plain.safetensors: not a fetalclip probe head"):
        load_head(tmp_path / "plain.safetensors")
    meta = {"format": 99, "name": "x"}
    save_file({"weight": np.zeros((2, 3), np.float32), "bias": np.zeros(2, np.float32)}, str(tmp_path / "new.safetensors"),
              metadata={"fetalclip_head": json.dumps(meta)})
    with pytest.raises(FetalCLIPError, match="head format 99"):
        load_head(tmp_path / "new.safetensors")
    with pytest.raises(FetalCLIPError, match="do not fit 2 classes x 4 features"):
        ProbeHead("x", "image", ["a", "b"], np.zeros((2, 3), np.float32), np.zeros(2, np.float32), 4, {"fingerprint": "f"})
