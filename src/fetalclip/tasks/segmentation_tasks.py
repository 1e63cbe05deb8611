"""Head segmentation and head biometry as task objects (the evaluation contract of ``tasks.result``).

``SegmentHC`` trains the segmentation probe (frozen, tapped encoder blocks + a small decoder) on patient-level
splits and reports the pooled Dice on the held-out patients; ``BiometryHC`` measures head circumference on the
label maps that very decoder predicts for those patients. One trained decoder serves both, so both take the
same ``SegmentOptions``, and the decoder is kept on disk under ``workdir / "segmenters" / key``, the key
hashing the encoder's weight fingerprint, the data (the benchmark's manifest digest, else the sources), the
options, the taps and the seed: the second task, or a rerun, loads it instead of training again.

``BiometryHC`` can also measure without training: with a saved probe (``segmenter=``, e.g. from
``fetalclip probe segment --save``) on every head image it is given, or on the dataset's own masks
(``dataset_masks=True``: HC18's ground truth, the geometry check).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from ..data.sample import patient_id
from ..errors import FetalCLIPError
from .result import Metric, Task, TaskOptions, TaskResult, TaskUnavailable, percent
from .segmentation_decoder import Segmenter

SEGMENTERS_FOLDER = "segmenters"
RUN_FILE = "run.json"  # written last into a kept decoder's folder: its presence means the folder is complete


@dataclass(frozen=True)
class SegmentOptions(TaskOptions):
    """The segmentation probe's recipe. CPU defaults: a 112-pixel working size and narrow widths (about 4x
    cheaper than the published 224 and ~1.6M parameters) for a dozen epochs; ``published()`` is the paper's."""

    TASK: ClassVar[str] = "segment-hc"
    PUBLISHED: ClassVar[Mapping[str, Any]] = {"size": 224, "channels": [416, 256, 128, 64, 32], "epochs": 100, "lr": 3e-4}

    size: int = 112
    channels: tuple[int, ...] = (128, 64, 32, 16, 16)
    epochs: int = 12
    lr: float = 2e-3
    weight_decay: float = 0.01
    batch_size: int = 8
    folds: int = 1
    runs: int = 1
    patience: int | None = None
    taps: tuple[int, ...] | None = None
    merge_labels: bool = True  # the head is one structure even where masks label what lies inside it

    def check(self) -> None:
        def fail(name: str, why: str) -> None:
            raise FetalCLIPError(f"task {self.TASK}: option {name} = {getattr(self, name)!r} {why}")

        if self.size <= 0 or self.size % 16:
            fail("size", "must be a positive multiple of 16")
        if len(self.channels) != 5 or any(int(c) <= 0 for c in self.channels):
            fail("channels", "must be five positive widths (deep -> image)")
        self.require_whole("epochs", "batch_size", "folds", "runs")
        if self.lr <= 0:
            fail("lr", "must be positive")
        if self.patience is not None and self.patience < 1:
            fail("patience", "must be at least 1 (or None)")


@dataclass
class KeptSegmenter:
    """A trained (or reloaded) decoder with the training run's result and splits."""

    segmenter: Segmenter
    result: dict[str, Any]
    splits: dict[str, Any]
    cache: Any


def sources_digest(dataset) -> str:
    """A digest of the dataset's sources: the data key when no manifest checksum is given."""
    return hashlib.sha256("\n".join(str(r.get("source")) for r in dataset.records).encode()).hexdigest()


def _feature_cache(model, cache, progress: bool):
    if cache is not None:
        return cache
    from .features import FeatureCache

    return FeatureCache(model, None, progress=progress)


def trained_segmenter(model, dataset, options: SegmentOptions, cache=None, *, seed: int = 0, progress: bool = True,
                      workdir: Path | None = None, data_digest: str | None = None, task: str = "segment-hc") -> KeptSegmenter:
    """The segmentation probe of ``model`` on ``dataset``: loaded from ``workdir`` when kept there, else trained
    (and kept, when there is a ``workdir``). ``TaskUnavailable`` when the data has no masks or the encoder no
    blocks to tap."""
    from ..io import write_json_atomic
    from . import segmentation
    from .features import default_taps
    from .segmentation_decoder import load_decoder, save_decoder
    from .segmentation_masks import sample_mask

    try:
        sample_mask(dataset[0])  # one image tells whether the data has masks, before every image is encoded
    except FetalCLIPError as exc:
        raise TaskUnavailable(f"{task}: {exc}") from None
    n_layers = model.image_block_count
    if n_layers is None:  # e.g. a timm trunk that is not a ViT, inside an open_clip baseline
        raise TaskUnavailable(f"{task}: {model.name} has no image blocks to tap (neither a ViT nor a ModifiedResNet)")
    cache = _feature_cache(model, cache, progress)
    values = options.to_dict()
    taps = list(options.taps) if options.taps else default_taps(n_layers)
    key_source = {"encoder": cache.fingerprint, "data": data_digest or sources_digest(dataset),
                  "options": values, "taps": taps, "seed": seed}
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True, default=str).encode()).hexdigest()[:20]
    folder = Path(workdir) / SEGMENTERS_FOLDER / key if workdir is not None else None
    if folder is not None and (folder / RUN_FILE).is_file():
        decoder, meta = load_decoder(folder)
        saved = json.loads((folder / RUN_FILE).read_text())
        return KeptSegmenter(Segmenter(decoder, meta["encoder"]["taps"], int(meta["size"]), meta), saved["result"],
                             saved["splits"], cache)
    seg_data, originals = segmentation.segmentation_data(cache, dataset, taps, progress=progress, size=options.size,
                                                         merge_labels=options.merge_labels)
    # Looked up on the module at call time, so a test can count the trainings.
    result, best, split_info = segmentation.run_segmentation(
        seg_data, originals, folds=options.folds, runs=options.runs, seed=seed, epochs=options.epochs,
        batch_size=options.batch_size, lr=options.lr, weight_decay=options.weight_decay, channels=values["channels"],
        patience=options.patience, progress=progress,
    )
    del seg_data, originals  # token grids of every image: let them go before the next task
    if folder is not None:
        save_decoder(folder, best.decoder, {"name": model.name, "fingerprint": cache.fingerprint, "taps": taps},
                     extra={"size": int(options.size), "best_epoch": best.best_epoch, "val_loss": best.val_loss})
        write_json_atomic(folder / RUN_FILE, {"result": result, "splits": split_info})
    return KeptSegmenter(Segmenter(best.decoder, taps, int(options.size)), result, split_info, cache)


class SegmentHC(Task):
    """Head segmentation probe: frozen blocks + UNETR-style decoder, pooled Dice on held-out patients."""

    name = "segment-hc"
    Options = SegmentOptions

    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        kept = trained_segmenter(model, dataset, self.options, cache, seed=seed, progress=progress, workdir=workdir,
                                 data_digest=data_digest, task=self.name)
        result = kept.result
        n = result["n_test"]
        metrics = {
            "dice": Metric(percent(result["dice_pooled"]["mean"]), n=n),
            "dice_per_image": Metric(percent(result["dice_per_image_mean"]["mean"]), n=n),
            "hausdorff_mm": Metric(result["hausdorff_mm_mean"]["mean"], unit="mm", n=n),
        }
        details = {key: result[key] for key in ("n_classes", "n_test", "test_source", "folds", "runs", "epochs", "lr",
                                                "batch_size", "decoder_parameters", "heads", "notes")}
        return TaskResult(self.name, metrics, rows=list(result["best_head"]["rows"]), details=details)


class BiometryHC(Task):
    """HC, BPD, OFD and GA from head label maps (ellipse fit, ``tasks.biometry``), scored against reference HCs.

    Default (the benchmark's protocol): the label maps of ``SegmentHC``'s decoder on its held-out patients.
    ``segmenter``: a saved probe measures every head image given. ``dataset_masks``: the dataset's own masks.
    """

    name = "biometry-hc"
    Options = SegmentOptions  # one trained decoder serves segment-hc and biometry-hc

    def __init__(self, options: SegmentOptions | Mapping[str, Any] | None = None, *, segmenter: Segmenter | None = None,
                 dataset_masks: bool = False):
        super().__init__(options)
        if segmenter is not None and dataset_masks:
            raise FetalCLIPError(f"task {self.name}: give a segmenter or dataset_masks, not both")
        self.segmenter = segmenter
        self.dataset_masks = dataset_masks

    def run(self, model, dataset, cache=None, progress: bool = True, *, seed: int = 0, n_bootstrap: int = 10_000,
            workdir: Path | None = None, data_digest: str | None = None) -> TaskResult:
        from .biometry import measure_dataset

        if self.dataset_masks:
            return self._scored(measure_dataset(dataset, progress=progress), n_bootstrap, extra=True)
        if self.segmenter is not None:
            segmenter, cache = self.segmenter, _feature_cache(model, cache, progress)
            if segmenter.fingerprint is not None and segmenter.fingerprint != cache.fingerprint:
                raise FetalCLIPError(f"{model.name}: not the weights the segmenter's decoder was trained on "
                                     f"(fingerprint {cache.fingerprint[:12]} vs {segmenter.fingerprint[:12]})")
            measured = measure_dataset(dataset, lambda subset: segmenter.label_maps(cache, subset), progress=progress)
            return self._scored(measured, n_bootstrap, extra=True)
        kept = trained_segmenter(model, dataset, self.options, cache, seed=seed, progress=progress, workdir=workdir,
                                 data_digest=data_digest, task=self.name)
        test_patients = set(map(str, kept.splits.get("test") or []))
        keep = [i for i, record in enumerate(dataset.records) if patient_id(record) in test_patients]
        if not keep:
            raise TaskUnavailable(f"{self.name}: the segmentation split of {dataset.name} has no test images")
        test = dataset.subset(keep)
        if not any(record.get("hc_mm") is not None for record in test.records):
            raise TaskUnavailable(f"{self.name}: {dataset.name} has no reference head circumferences (hc_mm)")
        measured = measure_dataset(test, lambda subset: kept.segmenter.label_maps(kept.cache, subset), progress=progress)
        return self._scored(measured, n_bootstrap)

    def _scored(self, measured: dict[str, Any], n_bootstrap: int, extra: bool = False) -> TaskResult:
        """HC error (mean absolute with a bootstrap CI, mean, median absolute), Dice and Hausdorff of the fits."""
        from ..metrics import bootstrap_ci

        diffs = np.array([row["hc_diff_mm"] for row in measured["rows"] if "hc_diff_mm" in row], dtype=np.float64)
        n = len(diffs)
        # A segmenter whose every mask fails the ellipse fit has no HC error to report: None (a dash), with the count.
        ci = bootstrap_ci(lambda d: float(np.mean(np.abs(d))), diffs, n=n_bootstrap) if n_bootstrap > 0 and n else None
        metrics = {
            "hc_mean_abs_diff_mm": Metric(float(np.mean(np.abs(diffs))) if n else None, "mm", ci, n),
            "hc_mean_diff_mm": Metric(float(np.mean(diffs)) if n else None, "mm", n=n),
            "hc_median_abs_diff_mm": Metric(float(np.median(np.abs(diffs))) if n else None, "mm", n=n),
            "dice": Metric(percent(measured["dice"]), n=n),
            "hausdorff_mm": Metric(measured["hausdorff_mm"], "mm", n=n),
        }
        keys = ("n", "n_failed", "n_skipped_not_head", "source_of_masks") + (("hc_sd_diff_mm",) if extra else ())
        return TaskResult(self.name, metrics, rows=list(measured["rows"]), details={key: measured[key] for key in keys})


__all__ = ["BiometryHC", "KeptSegmenter", "SegmentHC", "SegmentOptions", "sources_digest", "trained_segmenter"]
