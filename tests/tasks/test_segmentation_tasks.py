"""SegmentHC / BiometryHC: what the benchmark stores for their cells, value for value, from one trained decoder.

(Checked against the benchmark's former adapters, value for value, before those were deleted.)
"""

from __future__ import annotations

import json

import pytest

from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError
from fetalclip.tasks.result import TaskUnavailable
from fetalclip.tasks.segmentation_tasks import BiometryHC, SegmentHC, SegmentOptions

SMALL = {"size": 32, "channels": [8, 8, 8, 8, 8], "epochs": 8, "lr": 1e-2}  # fast, and it segments heads to measure


@pytest.fixture(scope="module")
def heads():
    return open_dataset("sim:16,size=96,per_patient=2,classes=brain")


def test_options_are_the_benchmarks(tmp_path):
    cpu = SegmentOptions.cpu().to_dict()
    assert cpu == {"size": 112, "channels": [128, 64, 32, 16, 16], "epochs": 12, "lr": 2e-3, "weight_decay": 0.01,
                   "batch_size": 8, "folds": 1, "runs": 1, "patience": None, "taps": None, "merge_labels": True}
    published = SegmentOptions.published().to_dict()
    assert published["size"] == 224 and published["channels"] == [416, 256, 128, 64, 32] and published["epochs"] == 100
    assert published["lr"] == 3e-4 and BiometryHC.Options is SegmentOptions
    with pytest.raises(FetalCLIPError, match="option size = 100 must be a positive multiple of 16"):
        SegmentOptions.cpu().updated({"size": 100})
    with pytest.raises(FetalCLIPError, match="unknown option"):
        SegmentHC({"sizes": 32})


def test_tasks_are_the_benchmark_cells_and_share_one_decoder(tmp_path, tiny_model, heads, one_thread, monkeypatch):
    import fetalclip.tasks.segmentation as segmentation
    from fetalclip.bench import tasks as bench_tasks

    trainings = []
    real = segmentation.run_segmentation
    monkeypatch.setattr(segmentation, "run_segmentation", lambda *a, **k: trainings.append(1) or real(*a, **k))
    options = SegmentOptions.cpu().updated(SMALL)
    kwargs = {"progress": False, "seed": 3, "n_bootstrap": 200, "workdir": tmp_path / "ours"}
    segment = SegmentHC(options).run(tiny_model, heads, **kwargs)
    biometry = BiometryHC(options).run(tiny_model, heads, **kwargs)
    assert len(trainings) == 1  # biometry read segment-hc's kept decoder
    context = bench_tasks.TaskContext(cache_dir=tmp_path / "ours", seed=3, progress=False, n_bootstrap=200,
                                      options={"segment-hc": SMALL})
    registry = bench_tasks.default_registry()
    cells = {name: registry.get(name).fn(tiny_model, heads, context) for name in ("segment-hc", "biometry-hc")}
    assert len(trainings) == 1  # the benchmark's cells found the same decoder (same key)
    assert {k: m.to_dict() for k, m in segment.metrics.items()} == cells["segment-hc"]["metrics"]
    assert {k: m.to_dict() for k, m in biometry.metrics.items()} == cells["biometry-hc"]["metrics"]
    assert biometry.to_dict(rows=False)["details"] == cells["biometry-hc"]["details"]
    assert biometry.rows and {"source", "hc_mm", "ref_hc_mm", "hc_diff_mm"} <= set(biometry.rows[0])
    assert len(segment.rows) == segment.metrics["dice"].n
    json.dumps(biometry.to_dict())  # valid JSON, rows included
    # A manifest digest keys a different decoder (the benchmark passes its own).
    SegmentHC(options).run(tiny_model, heads, data_digest="abc", **kwargs)
    assert len(trainings) == 2 and len(list((tmp_path / "ours" / "segmenters").iterdir())) == 2


def test_unavailable_without_masks(tmp_path, tiny_model):
    import numpy as np
    from PIL import Image

    (tmp_path / "brain").mkdir()
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "brain" / "a.png")
    dataset = open_dataset(f"folder:{tmp_path}")
    for task in (SegmentHC(), BiometryHC()):
        with pytest.raises(TaskUnavailable, match="no segmentation mask"):
            task.run(tiny_model, dataset, progress=False)


def test_biometry_of_dataset_masks_measures_heads_only():
    result = BiometryHC(dataset_masks=True).run(None, open_dataset("sim:12"), n_bootstrap=50)
    assert result.details["n_skipped_not_head"] > 0 and result.details["n_failed"] == 0
    assert result.metrics["hc_mean_abs_diff_mm"].value < 1.0 and result.metrics["hc_mean_abs_diff_mm"].ci is not None


def _open_clip_baseline(folder, vision_cfg):
    import open_clip
    import torch

    from fetalclip.bench.baselines import load_baseline

    config = {"embed_dim": 32, "vision_cfg": {"image_size": 64, **vision_cfg},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    folder.mkdir(parents=True)
    torch.save(open_clip.CLIP(**config).state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    return load_baseline(f"open_clip:{folder}")


def test_baselines_honour_the_block_contract_or_are_unavailable(tmp_path, tiny_model, heads):
    import torch

    assert tiny_model.image_block_count == 6
    vit = _open_clip_baseline(tmp_path / "vit", {"layers": 2, "width": 32, "head_width": 16, "patch_size": 16})
    assert vit.image_block_count == 2
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        out = vit.encode_image_intermediates(x, [0, 1])
        torch.testing.assert_close(out.embeddings, vit.encode_image(x), rtol=0, atol=0)
    assert out.blocks.shape == (2, 2, 32, 4, 4)
    with pytest.raises(FetalCLIPError, match="out of range"):
        vit.encode_image_intermediates(x, [2])
    resnet = _open_clip_baseline(tmp_path / "rn", {"layers": [1, 1, 1, 1], "width": 8})
    assert resnet.image_block_count == 4  # a ModifiedResNet offers its stages
    with torch.inference_mode():
        out = resnet.encode_image_intermediates(x, [0, 3])
        torch.testing.assert_close(out.embeddings, resnet.encode_image(x))
    assert out.blocks.shape == (2, 2, 256, 4, 4)
    resnet.clip.visual = torch.nn.Conv2d(3, 32, 64)  # a tower with neither blocks nor stages
    assert resnet.image_block_count is None
    with pytest.raises(TaskUnavailable, match="no image blocks to tap"):
        SegmentHC().run(resnet, heads, progress=False)
