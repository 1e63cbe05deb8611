"""Segmentation probe: decoder shape and size, geometry round trips, metrics, learning on synthetic heads, save/load."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fetalclip.errors import FetalCLIPError
from fetalclip.metrics import dice, dice_per_label, hausdorff_mm
from fetalclip.tasks.biometry import Ellipse, rasterize_ellipse
from fetalclip.tasks.segmentation import (
    UNETRLiteDecoder,
    count_decoder_parameters,
    load_decoder,
    mask_to_model,
    probabilities_to_original,
    run_segmentation,
    sample_mask,
    save_decoder,
    segmentation_data,
    soft_dice_loss,
    to_grid,
    train_decoder,
)

SMALL = (32, 24, 16, 8, 8)


def test_decoder_is_about_1_6m_parameters_for_vit_l():
    assert 1.5e6 < count_decoder_parameters(1024) < 1.7e6


def test_decoder_shapes_and_every_parameter_gets_a_gradient(one_thread):
    decoder = UNETRLiteDecoder(width=24, n_classes=3, channels=SMALL)
    blocks = torch.randn(2, 4, 24, 14, 14)
    logits = decoder(blocks, torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 3, 224, 224)
    soft_dice_loss(logits, torch.randint(0, 3, (2, 224, 224)), 3).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in decoder.parameters())
    # ViT-L/14 token grids (16x16) are resized to 14x14 first.
    assert to_grid(torch.randn(1, 4, 8, 16, 16)).shape == (1, 4, 8, 14, 14)


def test_mask_geometry_round_trip():
    mask = np.zeros((60, 100), np.uint8)
    mask[10:50, 20:60] = 1
    mask[20:30, 70:90] = 2
    model_mask = mask_to_model(mask, 224)
    assert model_mask.shape == (224, 224) and set(np.unique(model_mask)) == {0, 1, 2}
    probs = torch.nn.functional.one_hot(torch.as_tensor(model_mask).long(), 3).permute(2, 0, 1).float()
    back = probabilities_to_original(probs, 60, 100)
    assert back.shape == (60, 100)
    assert dice(back, mask, 1) > 0.95 and dice(back, mask, 2) > 0.9


def test_pooled_dice_and_hausdorff():
    a = np.zeros((20, 20), np.uint8)
    a[5:15, 5:15] = 1
    b = np.zeros((20, 20), np.uint8)
    b[5:15, 8:18] = 1
    assert dice_per_label([a, a], [a, b], [1])[1] == pytest.approx(2 * (100 + 70) / (400))
    assert hausdorff_mm(a, a, 0.5) == 0.0
    assert hausdorff_mm(a, b, 0.5) == pytest.approx(1.5)  # edges 3 pixels apart at 0.5 mm
    assert hausdorff_mm(a, b, (1.0, 2.0)) == pytest.approx(6.0)  # columns are 2 mm apart
    assert math.isinf(hausdorff_mm(a, np.zeros_like(a), 1.0))
    assert hausdorff_mm(np.zeros_like(a), np.zeros_like(a), 1.0) == 0.0


def write_synthetic_heads(root, count=16, seed=0):
    """Bright elliptical skulls on speckle, with their filled masks and a manifest (one patient per 2 images)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(count):
        e = Ellipse(cx=rng.uniform(40, 60), cy=rng.uniform(30, 40), a=rng.uniform(18, 26), b=rng.uniform(12, 17), angle=rng.uniform(0, 3))
        mask = rasterize_ellipse(e, (72, 96))
        image = rng.integers(0, 60, (72, 96)).astype(np.uint8)
        image[mask.astype(bool)] = 170
        Image.fromarray(image).save(root / "img" / f"{i}.png")
        Image.fromarray(mask * 255).save(root / "img" / f"{i}_mask.png")
        rows.append({"path": f"img/{i}.png", "mask": f"img/{i}_mask.png", "label": "brain", "patient": f"s{i // 2}",
                     "pixel_spacing_mm": "0.2"})
    manifest = root / "heads.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_decoder_learns_synthetic_heads_and_saves(tmp_path, tiny_model, one_thread):
    from fetalclip.data.datasets import open_dataset
    from fetalclip.tasks.features import FeatureCache

    dataset = open_dataset(f"csv:{write_synthetic_heads(tmp_path)}")
    cache = FeatureCache(tiny_model, tmp_path / "cache")
    data, originals = segmentation_data(cache, dataset, size=64)  # a small working resolution keeps CPU time down
    assert data.n_classes == 2 and data.masks.shape == (16, 64, 64) and data.images.shape == (16, 224, 224, 3)
    assert set(np.unique(originals[0])) == {0, 1}  # 0/255 mask files read as 0/1
    result, best, splits = run_segmentation(data, originals, folds=1, runs=1, epochs=12, batch_size=4, lr=3e-3,
                                            channels=SMALL, test_fraction=0.25)
    assert result["n_test"] >= 2 and result["dice_pooled"]["mean"] > 0.8
    assert result["hausdorff_mm_mean"]["mean"] is not None
    test_patients = set(splits["test"])
    assert test_patients and not test_patients & {p for fold in splits["folds"] for p in fold}
    save_decoder(tmp_path / "run", best.decoder, {"model": "fetalclip-tiny", "fingerprint": cache.fingerprint, "taps": [1, 2, 4, 5]})
    decoder, meta = load_decoder(tmp_path / "run")
    assert meta["encoder"]["fingerprint"] == cache.fingerprint
    for key, value in best.decoder.state_dict().items():
        torch.testing.assert_close(decoder.state_dict()[key], value)
    # A fixed seed gives the same decoder.
    one, two = (train_decoder(data, list(range(8)), [8, 9], epochs=1, batch_size=4, seed=5, channels=SMALL) for _ in range(2))
    for key, value in one.decoder.state_dict().items():
        torch.testing.assert_close(two.decoder.state_dict()[key], value, rtol=0, atol=0)
    # A second pass over the same data encodes nothing.
    again = FeatureCache(tiny_model, tmp_path / "cache")
    segmentation_data(again, dataset, size=64)
    assert again.encoded == 0
    with pytest.raises(FetalCLIPError, match="multiple of 16"):
        segmentation_data(again, dataset, size=100)


def test_a_convolutional_tower_feeds_the_same_decoder(tmp_path, one_thread):
    from fetalclip.data.datasets import open_dataset
    from fetalclip.models import create_model
    from fetalclip.tasks.features import FeatureCache

    rn = create_model("fetalclip-tiny-rn", seed=0).eval()
    dataset = open_dataset(f"csv:{write_synthetic_heads(tmp_path)}")
    data, originals = segmentation_data(FeatureCache(rn, tmp_path / "cache"), dataset, size=64)
    assert data.blocks.shape[1:] == (4, 1024, 14, 14)  # its four stages, padded to the widest
    result, _, _ = run_segmentation(data, originals, folds=1, runs=1, epochs=12, batch_size=4, lr=3e-3,
                                    channels=SMALL, test_fraction=0.25)
    assert result["n_test"] >= 2 and result["dice_pooled"]["mean"] > 0.8


def test_missing_masks_and_bad_runs_fail_clearly(tmp_path):
    with pytest.raises(FetalCLIPError, match="no segmentation mask"):
        sample_mask({"source": "x.png", "metadata": {}})
    with pytest.raises(FetalCLIPError, match="not a segmentation probe run"):
        load_decoder(tmp_path)


@pytest.mark.shared_data
def test_hc18_masks_measure_the_csv_head_circumference(hc18_dir):
    from fetalclip.data.datasets import open_dataset
    from fetalclip.tasks.biometry import measure_head

    dataset = open_dataset(f"hc18:{hc18_dir}")
    sample = dataset[0]
    mask = sample_mask(sample)
    assert mask.shape == sample["image"].shape[:2] and set(np.unique(mask)) == {0, 1}
    assert measure_head(mask, sample["pixel_spacing_mm"]).hc_mm == pytest.approx(sample["hc_mm"], abs=0.2)
    # Without the data layer's mask, the outline becomes its fitted ellipse: the same head.
    fallback = sample_mask({**sample, "mask": None})
    assert dice(fallback, mask) > 0.995


def test_segment_and_biometry_cli_end_to_end(tmp_path, capsys):
    """probe segment --save, then biometry hc --segmenter --held-out on the same synthetic heads."""
    from fetalclip.cli import main

    manifest = write_synthetic_heads(tmp_path / "heads")
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "segment", "--data", f"csv:{manifest}", "--epochs", "3", "--batch-size", "4", "--lr", "3e-3",
              "--channels", ",".join(map(str, SMALL)), "--size", "64", "--threads", "1", "--test-fraction", "0.25",
              "--cache", str(tmp_path / "cache"),
              "--save", str(run), "--out", str(tmp_path / "seg.json")])
    assert exit_info.value.code == 0
    assert json.loads((tmp_path / "seg.json").read_text())["provenance"]["encoded_this_run"] == 16
    with pytest.raises(SystemExit) as exit_info:
        main(["biometry", "hc", "--data", f"csv:{manifest}", "--segmenter", str(run), "--held-out",
              "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "bio.json")])
    assert exit_info.value.code == 0
    result = json.loads((tmp_path / "bio.json").read_text())
    test_patients = set(json.loads((run / "splits.json").read_text())["test"])
    assert {row["patient"] for row in result["rows"]} <= test_patients
    assert {"hc_mean_abs_diff_mm", "hc_mean_diff_mm", "dice", "hausdorff_mm", "rows"} <= set(result)
    assert "head biometry" in capsys.readouterr().out


def test_merge_labels_segments_the_whole_head(tmp_path, tiny_model, one_thread):
    """Masks that label structures inside the head (the phantom's) become one head class on request."""
    from fetalclip.data.datasets import open_dataset
    from fetalclip.tasks.features import FeatureCache

    manifest = write_synthetic_heads(tmp_path, count=4)
    for i in range(4):  # an inner structure with a label of its own, as the phantom draws thalami
        path = tmp_path / "img" / f"{i}_mask.png"
        mask = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
        rows, cols = np.nonzero(mask)
        mask[rows.mean().astype(int) - 2 : rows.mean().astype(int) + 2, cols.mean().astype(int) - 3 : cols.mean().astype(int) + 3] = 2
        Image.fromarray(mask).save(path)
    dataset = open_dataset(f"csv:{manifest}")
    cache = FeatureCache(tiny_model, tmp_path / "cache")
    labelled, originals = segmentation_data(cache, dataset, size=64)
    merged, merged_originals = segmentation_data(cache, dataset, size=64, merge_labels=True)
    assert labelled.n_classes == 3 and merged.n_classes == 2
    for original, head in zip(originals, merged_originals):
        assert set(np.unique(original)) == {0, 1, 2}
        np.testing.assert_array_equal(head, (original > 0).astype(np.uint8))
