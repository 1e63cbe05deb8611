"""Feature cache: a second run encodes nothing; keys change with weights, pixels and variants; atomic entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError
from fetalclip.tasks.features import AugmentSpec, FeatureCache, augment_image, default_taps, drop_unreadable


def write_images(folder, count=3, seed=0, size=(48, 64)):
    rng = np.random.default_rng(seed)
    (folder / "brain").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / "brain" / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=size, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


class CountingVisual:
    """Counts images through the vision tower, whichever entry point the cache uses."""

    def __init__(self, model, monkeypatch):
        self.count = 0
        visual = model.clip.visual
        forward, intermediates = visual.forward, visual.forward_intermediates

        def counted_forward(x, *a, **k):
            self.count += x.shape[0]
            return forward(x, *a, **k)

        def counted_intermediates(x, *a, **k):
            self.count += x.shape[0]
            return intermediates(x, *a, **k)

        monkeypatch.setattr(visual, "forward", counted_forward)
        monkeypatch.setattr(visual, "forward_intermediates", counted_intermediates)


def test_second_run_encodes_nothing(tmp_path, tiny_model, monkeypatch):
    write_images(tmp_path / "data")
    dataset = open_dataset(f"folder:{tmp_path / 'data'}")
    counter = CountingVisual(tiny_model, monkeypatch)
    first = FeatureCache(tiny_model, tmp_path / "cache")
    e1 = first.embeddings(dataset)
    b1 = first.blocks(dataset)
    assert counter.count == 6 and first.encoded == 6
    second = FeatureCache(tiny_model, tmp_path / "cache")  # a new process would start like this
    e2 = second.embeddings(dataset)
    b2 = second.blocks(dataset)
    assert counter.count == 6 and second.encoded == 0
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_array_equal(b1.blocks, b2.blocks)


def test_taps_are_checked_even_when_every_entry_is_cached(tmp_path, tiny_model):
    write_images(tmp_path / "data", count=2)
    dataset = open_dataset(f"folder:{tmp_path / 'data'}")
    cache = FeatureCache(tiny_model, tmp_path / "cache")
    cache.blocks(dataset, taps=[5])
    for taps in ([6], [], [-1]):  # a 6-block tower: a cache hit must not hide a tap it does not have
        with pytest.raises(FetalCLIPError, match="out of range for a 6-block encoder"):
            FeatureCache(tiny_model, tmp_path / "cache").blocks(dataset, taps=taps)


def test_embeddings_match_the_model_and_blocks_have_the_expected_shape(tmp_path, tiny_model):
    write_images(tmp_path / "data", count=3)
    dataset = open_dataset(f"folder:{tmp_path / 'data'}")
    cache = FeatureCache(tiny_model, None)
    images = [dataset[i]["image"] for i in range(3)]
    with torch.inference_mode():
        expected = tiny_model.encode_image(images).numpy()
    np.testing.assert_allclose(cache.embeddings(dataset), expected, atol=1e-5)
    blocks = cache.blocks(dataset)
    width = tiny_model.clip.visual.transformer.width
    assert blocks.blocks.shape == (3, 4, width, 14, 14) and blocks.blocks.dtype == np.float16
    assert blocks.images.shape == (3, 224, 224, 3) and blocks.images.dtype == np.uint8
    np.testing.assert_allclose(blocks.embeddings, expected, atol=1e-5)
    assert blocks.taps == default_taps(6)


def test_default_taps_are_evenly_spaced_and_end_at_the_last_block():
    assert default_taps(24) == [5, 11, 17, 23]
    assert default_taps(12) == [2, 5, 8, 11]
    assert default_taps(6)[-1] == 5 and len(default_taps(6)) == 4


def test_cache_keys_follow_weights_and_pixels(tmp_path, tiny_model):
    from fetalclip.models import create_model

    paths = write_images(tmp_path / "data", count=2)
    dataset = open_dataset(f"folder:{tmp_path / 'data'}")
    FeatureCache(tiny_model, tmp_path / "cache").embeddings(dataset)
    other = FeatureCache(create_model("fetalclip-tiny", seed=1), tmp_path / "cache")
    other.embeddings(dataset)
    assert other.encoded == 2  # different weights: nothing shared
    # Rewrite one file with new pixels: only that one is encoded again.
    Image.fromarray(np.full((48, 64), 7, np.uint8)).save(paths[0])
    again = FeatureCache(tiny_model, tmp_path / "cache")
    again.embeddings(open_dataset(f"folder:{tmp_path / 'data'}"))
    assert again.encoded == 1


def test_same_pixels_under_two_names_share_an_entry(tmp_path, tiny_model):
    paths = write_images(tmp_path / "data", count=1)
    (tmp_path / "data" / "brain" / "copy.png").write_bytes(paths[0].read_bytes())
    cache = FeatureCache(tiny_model, tmp_path / "cache")
    cache.embeddings(open_dataset(f"folder:{tmp_path / 'data'}"))
    # Within one call both are misses of the index, but the second finds the first's entry on disk.
    assert cache.encoded <= 2
    again = FeatureCache(tiny_model, tmp_path / "cache")
    again.embeddings(open_dataset(f"folder:{tmp_path / 'data'}"))
    assert again.encoded == 0


def test_damaged_entry_is_recomputed(tmp_path, tiny_model):
    write_images(tmp_path / "data", count=2)
    dataset = open_dataset(f"folder:{tmp_path / 'data'}")
    cache = FeatureCache(tiny_model, tmp_path / "cache")
    reference = cache.embeddings(dataset)
    entries = sorted((tmp_path / "cache").rglob("*.npz"))
    entries[0].write_bytes(b"not an npz")
    again = FeatureCache(tiny_model, tmp_path / "cache")
    # Recomputed alone instead of in a batch of two: GEMM blocking may move the last bit (seen: 1.2e-6), so
    # "the same embedding" is the project's exactness bound, 1e-5.
    np.testing.assert_allclose(again.embeddings(dataset), reference, atol=1e-5)
    assert again.encoded == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temporaries


def test_augmented_copies_are_deterministic_cached_and_differ(tmp_path, tiny_model):
    write_images(tmp_path / "data", count=2)
    dataset = open_dataset(f"folder:{tmp_path / 'data'}")
    spec = AugmentSpec(copies=2, seed=3)
    cache = FeatureCache(tiny_model, tmp_path / "cache")
    original = cache.embeddings(dataset)
    copy0 = cache.embeddings(dataset, augment=(spec, 0))
    copy1 = cache.embeddings(dataset, augment=(spec, 1))
    assert cache.encoded == 6
    assert not np.allclose(copy0, original) and not np.allclose(copy0, copy1)
    again = FeatureCache(tiny_model, tmp_path / "cache")
    np.testing.assert_array_equal(again.embeddings(dataset, augment=(spec, 1)), copy1)
    assert again.encoded == 0
    image = dataset[0]["image"]
    np.testing.assert_array_equal(augment_image(image, spec, 0, "k"), augment_image(image, spec, 0, "k"))
    assert augment_image(image, spec, 0, "k").shape == image.shape


def test_unreadable_images_fail_or_are_skipped(tmp_path, tiny_model):
    write_images(tmp_path / "data", count=2)
    (tmp_path / "data" / "brain" / "broken.png").write_bytes(b"garbage")
    dataset = open_dataset(f"folder:{tmp_path / 'data'}")
    with pytest.raises(FetalCLIPError, match="broken.png"):
        FeatureCache(tiny_model, None).embeddings(dataset)
    cache = FeatureCache(tiny_model, tmp_path / "cache", skip_bad=True)
    kept, embeddings = drop_unreadable(cache, dataset, cache.embeddings)
    assert len(kept) == 2 and embeddings.shape == (2, tiny_model.embed_dim)
    assert len(cache.skipped) == 1 and "broken.png" in cache.skipped[0][0]
