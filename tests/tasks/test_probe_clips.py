"""Clip-level detection on synthetic clips the tests make (no public fetal-heart clips exist here).

The two classes are the *same frames in opposite order* (a bright square sweeping left->right versus
right->left), so only a probe that keeps the frames' order can separate them; a mean over frames could not.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError
from fetalclip.tasks.features import FeatureCache
from fetalclip.tasks.probe_clips import binary_targets, clip_features, clip_probe, even_indices, list_clip_frames
from fetalclip.tasks.probe_recipe import ProbeRecipe

FRAMES = 4


def frame(position: int, row: int) -> np.ndarray:
    image = np.full((64, 64), 20, np.uint8)
    image[8 + 16 * row : 24 + 16 * row, 4 + 8 * position : 20 + 8 * position] = 230
    return image


def make_clips(root, n_clips=48):
    rows = []
    for c in range(n_clips):
        label = c % 2
        start, row = (c // 2) % 3, (c // 6) % 3
        positions = [start + k for k in range(5)]  # 5 stored frames; 4 are sampled
        if label == 0:
            positions = positions[::-1]
        folder = root / f"clip{c:02d}"
        folder.mkdir(parents=True)
        for k, position in enumerate(positions):
            Image.fromarray(frame(position, row)).save(folder / f"f{k:03d}.png")
        rows.append({"path": folder.name, "label": "chd" if label else "normal", "patient": f"p{c}"})
    manifest = root / "clips.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_even_indices():
    assert even_indices(10, 4) == [0, 3, 6, 9]
    assert even_indices(3, 5) == [0, 0, 1, 2, 2]  # short clips repeat frames
    assert even_indices(1, 2) == [0, 0]


def test_multi_frame_tiff_and_unsupported_sources(tmp_path):
    frames = [Image.fromarray(frame(p, 0)) for p in range(3)]
    frames[0].save(tmp_path / "clip.tif", save_all=True, append_images=frames[1:])
    assert list_clip_frames(str(tmp_path / "clip.tif")) == [(str(tmp_path / "clip.tif"), i) for i in range(3)]
    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    with pytest.raises(FetalCLIPError):
        list_clip_frames(str(tmp_path / "clip.mp4"))
    (tmp_path / "clip.xyz").write_bytes(b"\x00")
    with pytest.raises(FetalCLIPError, match="unsupported clip"):
        list_clip_frames(str(tmp_path / "clip.xyz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FetalCLIPError, match="no frame images"):
        list_clip_frames(str(tmp_path / "empty"))


def test_binary_targets():
    y, positive, negative = binary_targets(["normal", "chd", "chd"], positive="chd")
    assert y.tolist() == [0, 1, 1] and (positive, negative) == ("chd", "normal")
    with pytest.raises(FetalCLIPError, match="exactly two"):
        binary_targets(["a", "b", "c"])


def test_clip_probe_learns_temporal_order_and_reuses_the_cache(tmp_path, tiny_model):
    manifest = make_clips(tmp_path / "clips")
    clips = open_dataset(f"csv:{manifest}")
    cache = FeatureCache(tiny_model, tmp_path / "cache")
    x = clip_features(cache, clips, FRAMES)
    assert x.shape == (48, FRAMES * tiny_model.embed_dim)
    assert cache.encoded <= 21 + 32  # identical frames (21 distinct) are encoded at most once per batch of 32
    labels = [r["label"] for r in clips.records]
    patients = [r["patient"] for r in clips.records]
    result = clip_probe(x, labels, patients, ProbeRecipe(folds=3, runs=2, lr=1e-2, epochs=40, standardize=True),
                        positive="chd", n_bootstrap=200).report
    assert result["auroc_pooled"] > 0.9 and result["auroc_mean"] > 0.85
    assert len(result["heads"]) == 6 and result["auroc_pooled_ci"][0] <= result["auroc_pooled"]
    # The mean over frames is identical for both classes: a probe on it cannot beat chance by much.
    pooled = x.reshape(48, FRAMES, -1).mean(axis=1)
    np.testing.assert_allclose(pooled[0::2][:3], pooled[1::2][:3], atol=1e-4)
    again = FeatureCache(tiny_model, tmp_path / "cache")
    clip_features(again, clips, FRAMES)
    assert again.encoded == 0


def test_clips_cli_runs_with_a_fixed_seed(tmp_path, capsys):
    from fetalclip.cli import main

    manifest = make_clips(tmp_path / "clips")
    args = ["probe", "clips", "--data", f"csv:{manifest}", "--frames", str(FRAMES), "--folds", "3", "--runs", "1",
            "--epochs", "20", "--lr", "1e-2", "--standardize", "--positive", "chd", "--cache", str(tmp_path / "cache")]
    for name in ("a.json", "b.json"):
        with pytest.raises(SystemExit) as exit_info:
            main(args + ["--out", str(tmp_path / name)])
        assert exit_info.value.code == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["heads"] == b["heads"] and b["provenance"]["encoded_this_run"] == 0
    assert "AUROC" in capsys.readouterr().out


def test_clip_folds_and_inner_holdouts_hold_both_classes():
    """Folds of a small, case-poor set each get their share of cases (stratified), and so does the inner
    hold-out that picks a head's epoch; patients never straddle either split."""
    from fetalclip.data.splits import cross_validation_parts, patient_holdout

    patients = [f"p{i // 2}" for i in range(60)]  # 30 patients, two clips each
    y = np.array([int(int(p[1:]) % 3 == 0) for p in patients])  # every third patient is a case: 10 of 30
    for seed in range(4):
        parts = cross_validation_parts(patients, 5, seed, strata=y)
        assert sorted(i for part in parts for i in part) == list(range(60))
        assert [int(y[part].sum()) for part in parts] == [4] * 5  # two case patients of two clips each
        rest = [i for part in parts[1:] for i in part]
        train, val = patient_holdout(patients, rest, seed, strata=y)
        assert not {patients[i] for i in train} & {patients[i] for i in val}
        assert y[val].sum() > 0 and y[train].sum() > 0


def test_auroc_ci_equals_the_reference_bootstrap():
    from fetalclip.metrics import auroc, auroc_ci, bootstrap_ci

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    scores = np.round(y * 0.6 + rng.random(40), 1)  # rounded: ties occur
    assert auroc_ci(y, scores, n=300) == pytest.approx(bootstrap_ci(auroc, y, scores, n=300, seed=42), abs=1e-12)


def test_dicom_and_video_clips_go_through_the_data_layer(tmp_path, ramp_frames, dicom_writer, video_writer):
    from fetalclip.data.datasets import SampleDataset
    from fetalclip.tasks.probe_clips import clip_frame_dataset

    dicom = dicom_writer(tmp_path / "loop.dcm", ramp_frames)
    assert list_clip_frames(str(dicom)) == [(str(dicom), i) for i in range(5)]
    clips = SampleDataset("clips", [{"source": str(dicom), "frame_index": None, "label": "chd", "patient": "p"}])
    frames = clip_frame_dataset(clips, 3)
    assert [r["frame_index"] for r in frames.records] == [0, 2, 4]
    np.testing.assert_array_equal(frames[1]["image"], ramp_frames[2])
    try:
        video = video_writer(tmp_path / "loop.mp4", list(ramp_frames))
    except Exception:  # PyAV absent or without the encoder: the DICOM path above still ran
        return
    assert len(list_clip_frames(str(video))) == 5
