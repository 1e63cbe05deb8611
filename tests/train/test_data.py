"""Data order by position, patient splits, shard folders."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fetalclip.data.shards import open_shard_folder
from fetalclip.errors import FetalCLIPError
from fetalclip.models import Preprocessor
from fetalclip.train.data import (
    Augmentation,
    PairDataset,
    StepBatchSampler,
    open_sources,
    split_by_patient,
    view_balance_weights,
    view_of,
)

from .conftest import LABELS, write_pairs


def test_global_batches_do_not_depend_on_world_size_or_accumulation():
    def step_sets(world, accum, micro):
        per_rank = [list(StepBatchSampler(micro, accum, r, world, 2, 5)) for r in range(world)]
        steps = []
        for s in range(3):
            chunk = [b for rank in per_rank for b in rank[s * accum:(s + 1) * accum]]
            steps.append(sorted(p for b in chunk for p in b))
        return steps

    reference = step_sets(1, 1, 8)
    assert reference[0] == list(range(16, 24))
    assert step_sets(2, 1, 4) == reference == step_sets(2, 2, 2) == step_sets(1, 4, 2)


def _pair_dataset(spec, **kwargs):
    sources = open_sources([spec])
    items, _ = split_by_patient(sources, 0.0, seed=0)
    return PairDataset(sources, items, Preprocessor({"image_size": 32}), context_length=16, seed=3, **kwargs)


def test_positions_are_seeded_epochs(pairs_spec):
    dataset = _pair_dataset(pairs_spec)
    n = len(dataset)
    first_epoch = [dataset.item_at(p) for p in range(n)]
    assert sorted(first_epoch) == sorted(dataset.items)  # each sample once per epoch
    assert [dataset.item_at(p) for p in range(n, 2 * n)] != first_epoch  # reshuffled
    image, tokens, view = dataset[5]
    again_image, again_tokens, _ = _pair_dataset(pairs_spec)[5]
    # Same view, same number; another view, another number.
    views = {dataset.item_at(p): view_of(dataset.datasets[0].records[dataset.item_at(p)[1]]) for p in range(n)}
    numbers = {views[dataset.item_at(p)]: int(dataset[p][2]) for p in range(n)}
    assert len(set(numbers.values())) == len(numbers) == 4 and int(view) == numbers[views[dataset.item_at(5)]]
    assert image.shape == (3, 32, 32) and tokens.shape == (16,)
    assert torch.equal(image, again_image) and torch.equal(tokens, again_tokens)
    cached = _pair_dataset(pairs_spec)
    cached.enable_cache()
    again = next(p for p in range(n, 2 * n) if dataset.item_at(p) == dataset.item_at(5))
    for position in (5, again, 7):  # the second read of a sample comes from the cache
        image, tokens, _ = cached[position]
        assert torch.equal(image, dataset[position][0]) and torch.equal(tokens, dataset[position][1])
    assert len(cached.cache) == 2
    # The same as the model's own preprocessing of the sample.
    sample = dataset.sample_at(7)
    assert torch.equal(dataset[7][0], dataset.preprocess(sample["image"]))


def test_view_balance_draws_rare_views_as_often_as_common_ones(tmp_path):
    (tmp_path / "imgs").mkdir()
    rows = ["path,label,patient"]
    for i in range(40):  # 32 heads, 8 femurs
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        rows.append(f"imgs/{i}.png,{'femur' if i % 5 == 0 else 'brain'},p{i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    sources = open_sources([f"csv:{tmp_path / 'pairs.csv'}"])
    items, _ = split_by_patient(sources, 0.0, seed=0)
    assert view_balance_weights(sources, items, 0.0) is None

    def femur_share(balance, epochs=50):
        dataset = PairDataset(sources, items, Preprocessor({"image_size": 8}), 8, seed=1,
                              weights=view_balance_weights(sources, items, balance))
        drawn = [dataset.item_at(p) for p in range(epochs * len(items))]
        return np.mean([sources[d].records[i]["label"] == "femur" for d, i in drawn]), dataset

    natural, _ = femur_share(0.0)
    balanced, dataset = femur_share(1.0)
    half, _ = femur_share(0.5)
    assert natural == pytest.approx(0.2)
    assert balanced == pytest.approx(0.5, abs=0.03)
    assert natural < half - 0.05 and half < balanced - 0.05  # sqrt(4) : 1 odds -> 1/3
    assert half == pytest.approx(1 / 3, abs=0.03)
    # Still one order per (seed, epoch): another dataset object draws the same items.
    again = PairDataset(sources, items, Preprocessor({"image_size": 8}), 8, seed=1, weights=dataset.weights)
    assert [again.item_at(p) for p in range(100, 140)] == [dataset.item_at(p) for p in range(100, 140)]


def test_augmentation_ramps_in_by_position(pairs_spec):
    plain = _pair_dataset(pairs_spec)
    ramped = _pair_dataset(pairs_spec, augmentation=Augmentation(), augment_ramp=400)
    always = _pair_dataset(pairs_spec, augmentation=Augmentation())
    untouched = lambda p: float((ramped[p][0] - plain[p][0]).abs().mean()) < 0.05  # noqa: E731 - resampled, not augmented
    assert untouched(0)  # position 0: never augmented
    early, late = [untouched(p) for p in range(1, 40)], [untouched(p) for p in range(400, 440)]
    assert sum(early) > 30 and not any(late)
    assert all(torch.equal(ramped[p][0], always[p][0]) for p in range(400, 405))  # past the ramp: the same augmentation


def test_augmentation_is_seeded_by_position(pairs_spec):
    dataset = _pair_dataset(pairs_spec, augmentation=Augmentation())
    plain = _pair_dataset(pairs_spec)
    assert torch.equal(dataset[3][0], _pair_dataset(pairs_spec, augmentation=Augmentation())[3][0])
    assert not torch.equal(dataset[3][0], plain[3][0])
    # Two epochs of one sample differ; a cached dataset gives the same images as an uncached one.
    again = next(p for p in range(len(dataset), 2 * len(dataset)) if dataset.item_at(p) == dataset.item_at(3))
    assert not torch.equal(dataset[again][0], dataset[3][0])
    cached = _pair_dataset(pairs_spec, augmentation=Augmentation())
    cached.enable_cache()
    for position in (3, again):
        assert torch.equal(cached[position][0], dataset[position][0])
    assert len(cached.cache) == 1 and cached.cache[dataset.item_at(3)][0].shape == (37, 37, 3)  # ceil(32 / sqrt(.75))


def test_patient_split_keeps_patients_whole(pairs_spec):
    sources = open_sources([pairs_spec])
    train, held = split_by_patient(sources, 0.25, seed=0)
    patients = lambda items: {sources[d].records[i]["patient"] for d, i in items}  # noqa: E731
    assert len(train) + len(held) == 24 and len(held) == 6
    assert not patients(train) & patients(held)
    assert split_by_patient(sources, 0.25, seed=0) == (train, held)


def _write_shards(folder, samples_per_shard=5, count=12):
    import webdataset as wds

    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    shards, images = [], {}
    for s in range(0, count, samples_per_shard):
        name = f"shard-{s // samples_per_shard:06d}.tar"
        n = 0
        with wds.TarWriter(str(folder / name)) as sink:
            for i in range(s, min(s + samples_per_shard, count)):
                image = rng.integers(0, 255, (20 + i, 30), dtype=np.uint8)
                images[f"s{i:04d}"] = image
                meta = {"source": f"orig/{i}.png", "label": LABELS[i % 4], "patient": f"q{i // 3}", "dataset": "test",
                        "pixel_spacing_mm": 0.1, "ga_days": 150 + i, "hc_mm": None, "frame_index": None}
                sample = {"__key__": f"s{i:04d}", "png": image, "txt": f"caption {i}", "json": meta}
                if i == 0:
                    sample["mask.png"] = (image > 128).astype(np.uint8)
                sink.write(sample)
                n += 1
        shards.append({"name": name, "count": n, "sha256": "not-checked-here"})
    (folder / "manifest.json").write_text(json.dumps({"shards": shards, "total": count}))
    return images


def test_shard_folder_reads_as_samples(tmp_path):
    images = _write_shards(tmp_path / "shards")
    dataset = open_shard_folder(tmp_path / "shards")
    assert len(dataset) == 12
    sample = dataset[7]
    assert sample["caption"] == "caption 7" and sample["label"] == LABELS[3] and sample["patient"] == "q2"
    assert sample["ga_days"] == 157 and sample["source"] == "orig/7.png"
    np.testing.assert_array_equal(sample["image"], images["s0007"])
    assert dataset[0]["mask"].shape == images["s0000"].shape


def test_shards_and_specs_mix_and_captions_come_from_txt(tmp_path):
    _write_shards(tmp_path / "shards")
    spec = write_pairs(tmp_path / "csvdata", count=8)
    sources = open_sources([str(tmp_path / "shards"), spec])
    assert [len(s) for s in sources] == [12, 8]
    items, _ = split_by_patient(sources, 0.0, 0)
    dataset = PairDataset(sources, items, Preprocessor({"image_size": 32}), 16, seed=0)
    from fetalclip.models.tokenizer import tokenize

    position = next(p for p in range(20) if dataset.item_at(p) == (0, 4))
    assert torch.equal(dataset[position][1], tokenize("caption 4", 16)[0])


def test_manifest_count_mismatch_is_an_error(tmp_path):
    _write_shards(tmp_path / "shards")
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    manifest["shards"][0]["count"] = 99
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FetalCLIPError, match="shard-000000.tar.*99"):
        open_shard_folder(tmp_path / "shards")


def test_reads_what_the_data_layer_packs(tmp_path):
    from fetalclip.data.shards import pack_shards

    spec = write_pairs(tmp_path / "csvdata", count=10)
    pack_shards([spec], tmp_path / "packed", shard_size=4, clean=False, workers=1)
    dataset = open_shard_folder(tmp_path / "packed")
    assert len(dataset) == 10
    sample = dataset[3]
    assert sample["caption"] and sample["image"].dtype == np.uint8 and sample["label"] in LABELS
    assert sample["patient"] is not None and sample["metadata"]["dataset"]


def test_clean_reads_dataset_specs_through_the_cleaner(tmp_path):
    from fetalclip.data.cleaning import clean_sample
    from fetalclip.train.data import held_out_dataset

    spec = "sim:4,size=96,overlay=1,seed=2"  # every phantom image with burned-in text and calipers
    raw, cleaned = open_sources([spec])[0], open_sources([spec], clean=True)[0]
    changed = 0
    for i in range(len(raw)):
        expected = clean_sample(raw[i])["image"]
        assert np.array_equal(cleaned[i]["image"], expected)
        changed += not np.array_equal(expected, raw[i]["image"])
    assert changed == len(raw)
    # Held-out evaluation reads the same cleaned images as training.
    sources = open_sources([spec], clean=True)
    assert np.array_equal(held_out_dataset(sources, [(0, 1)])[0]["image"], cleaned[1]["image"])
    # Shard folders are read as packed.
    _write_shards(tmp_path / "shards")
    packed = open_sources([str(tmp_path / "shards")], clean=True)[0]
    assert packed.loader is open_shard_folder(tmp_path / "shards").loader


def test_training_with_clean_cleans_every_sample_it_reads(tmp_path, monkeypatch):
    import fetalclip.data.cleaning as cleaning
    from fetalclip.train import train

    from .conftest import small_config

    calls = []
    original = cleaning.clean_sample
    monkeypatch.setattr(cleaning, "clean_sample", lambda sample: calls.append(sample["source"]) or original(sample))
    spec = "sim:8,size=64,overlay=1,seed=2"
    train(small_config([spec], steps=1, batch_size=8, cache_images=True), tmp_path / "plain")
    assert calls == []
    train(small_config([spec], steps=2, batch_size=8, cache_images=True, clean=True), tmp_path / "clean")
    assert len(set(calls)) == 8 and len(calls) == 8  # each sample cleaned once, then served from the cache
