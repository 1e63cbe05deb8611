"""Segmentation probe: train a decoder on a frozen, cached ViT encoder, and evaluate its label maps.

Because the encoder is frozen, its blocks come from the feature cache and an epoch costs only the decoder
(``segmentation_decoder``). Masks live in the model's input geometry for training and predictions go back to the
original image for every metric (``segmentation_masks``): Dice pooled over all test pixels per label (as
published), Dice per image, and the Hausdorff distance in mm with each image's pixel spacing. This module
predicts label maps; measuring them (ellipse, HC) is ``biometry``'s.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FetalCLIPError
from ..metrics import dice, dice_per_label, hausdorff_mm
from .segmentation_decoder import (  # noqa: F401  (re-exported: the probe's API in one import)
    DEFAULT_CHANNELS,
    GRID,
    Segmenter,
    SeparableBlock,
    UNETRLiteDecoder,
    count_decoder_parameters,
    load_decoder,
    load_segmenter,
    normalise_images,
    save_decoder,
    soft_dice_loss,
    to_grid,
)
from .segmentation_masks import mask_to_model, probabilities_to_original, sample_mask  # noqa: F401


# -- training ---------------------------------------------------------------------------------------------------
@dataclass
class SegmentationData:
    """Cached inputs of a segmentation probe (model geometry) plus what metrics need at original size."""

    blocks: np.ndarray  # [N, 4, W, g, g] float16
    images: np.ndarray  # [N, S, S, 3] uint8 model-input images
    masks: np.ndarray  # [N, S, S] uint8 label maps in model geometry
    patients: list[str]
    sources: list[str]
    spacings: list[float | None]  # mm per pixel of the original images
    shapes: list[tuple[int, int]]  # original (H, W)
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    splits: list[Any] | None = None
    n_classes: int = 2

    @property
    def size(self) -> int:
        """Side of the decoder's output: the masks' side (the cached images are resized to it)."""
        return int(self.masks.shape[-1])

    def inputs(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = to_grid(torch.as_tensor(self.blocks[index]))
        return blocks, normalise_images(self.images[index], self.mean, self.std, self.size)


@dataclass
class TrainedDecoder:
    decoder: UNETRLiteDecoder
    best_epoch: int
    val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_decoder(
    data: SegmentationData,
    train: Sequence[int],
    val: Sequence[int],
    epochs: int = 100,
    batch_size: int = 8,
    lr: float = 3e-4,
    weight_decay: float = 0.01,
    seed: int = 0,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    patience: int | None = None,
    progress: bool = False,
) -> TrainedDecoder:
    """Dice-loss training (AdamW) keeping the epoch with the best validation loss; ``patience`` stops early."""
    from ..progress import progress_bar

    if not len(train) or not len(val):
        raise FetalCLIPError(f"segmentation probe needs training and validation images (got {len(train)} and {len(val)})")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    width = int(data.blocks.shape[2])
    decoder = UNETRLiteDecoder(width, data.n_classes, channels)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay)
    train, val = np.asarray(train), np.asarray(val)
    best = (math.inf, -1, None)
    history = []
    bar = progress_bar(range(epochs), desc="decoder", disable=not progress)
    for epoch in bar:
        decoder.train()
        order = train[torch.randperm(len(train), generator=generator).numpy()]
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = np.sort(order[start : start + batch_size])
            blocks, images = data.inputs(index)
            target = torch.as_tensor(data.masks[index])
            loss = soft_dice_loss(decoder(blocks, images), target, data.n_classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        val_loss = evaluate_loss(decoder, data, val, batch_size=max(batch_size, 16))
        history.append({"epoch": epoch, "train_loss": total / len(train), "val_loss": val_loss})
        bar.set_postfix(train=f"{total / len(train):.4f}", val=f"{val_loss:.4f}")
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(decoder.state_dict()))
        elif patience is not None and epoch - best[1] >= patience:
            break
    decoder.load_state_dict(best[2])
    decoder.eval()
    return TrainedDecoder(decoder, best[1], best[0], history)


@torch.no_grad()
def predict_probabilities(decoder: UNETRLiteDecoder, data: SegmentationData, indices: Sequence[int], batch_size: int = 16):
    """Yield (index, probabilities ``[K+1, S, S]``) in model geometry."""
    decoder.eval()
    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        index = np.array(indices[start : start + batch_size])
        logits = decoder(*data.inputs(index))
        for i, p in zip(index, logits.softmax(dim=1)):
            yield int(i), p


@torch.no_grad()
def evaluate_loss(decoder: UNETRLiteDecoder, data: SegmentationData, indices: Sequence[int], batch_size: int = 16) -> float:
    """Dice loss pooled over all of ``indices`` (not a mean of batch losses, so batch size does not matter)."""
    decoder.eval()
    inter = total = None
    for start in range(0, len(indices), batch_size):
        index = np.asarray(indices[start : start + batch_size])
        logits = decoder(*data.inputs(index))
        probs = logits.softmax(dim=1)
        onehot = F.one_hot(torch.as_tensor(data.masks[index]).long(), data.n_classes).permute(0, 3, 1, 2).float()
        i, t = (probs * onehot).sum((0, 2, 3)), (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)))
        inter, total = (i, t) if inter is None else (inter + i, total + t)
    return float(1.0 - ((2 * inter + 1.0) / (total + 1.0))[1:].mean())


def evaluate_segmentation(
    decoder: UNETRLiteDecoder,
    data: SegmentationData,
    indices: Sequence[int],
    original_masks: Sequence[np.ndarray],
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Dice pooled over all pixels (per label), Dice per image and Hausdorff (mm) at original resolution.

    Returns the metrics (with per-image rows) and the predicted label maps at original size.
    """
    labels = list(range(1, data.n_classes))
    predictions, rows = [], []
    for (i, probs), truth in zip(predict_probabilities(decoder, data, indices), original_masks):
        height, width = truth.shape
        pred = probabilities_to_original(probs, height, width)
        predictions.append(pred)
        spacing = data.spacings[i]
        row = {"source": data.sources[i], "patient": data.patients[i]}
        for label in labels:
            row[f"dice_{label}"] = dice(pred, truth, label)
            row[f"hausdorff_mm_{label}"] = hausdorff_mm(pred == label, truth == label, spacing) if spacing else None
        rows.append(row)
    pooled = dice_per_label(predictions, original_masks, labels)
    out: dict[str, Any] = {
        "n": len(rows),
        "dice_pooled": float(np.mean(list(pooled.values()))),
        "dice_pooled_per_label": {str(k): v for k, v in pooled.items()},
        "dice_per_image_mean": float(np.mean([np.mean([r[f"dice_{label}"] for label in labels]) for r in rows])),
        "rows": rows,
    }
    hd = [r[f"hausdorff_mm_{label}"] for r in rows for label in labels if r[f"hausdorff_mm_{label}"] is not None]
    finite = [h for h in hd if math.isfinite(h)]
    out["hausdorff_mm_mean"] = float(np.mean(finite)) if finite else None
    out["hausdorff_mm_median"] = float(np.median(finite)) if finite else None
    out["hausdorff_failures"] = int(len(hd) - len(finite))
    return out, predictions


# -- datasets in, results out -----------------------------------------------------------------------------------
def segmentation_data(cache, dataset, taps: Sequence[int] | None = None, progress: bool = False,
                      size: int | None = None, merge_labels: bool = False) -> tuple[SegmentationData, list[np.ndarray]]:
    """Blocks and model images from ``cache``, masks from the samples; also the original-size masks.

    ``size`` (default: the model's input side) is the decoder's working resolution; a smaller one (112) makes
    CPU training about four times cheaper, and metrics are still computed at the original resolution.
    ``merge_labels`` makes every foreground label one class: a head whose inner structures carry labels of
    their own (the phantom's thalami, ventricles, ...) is then segmented as one head, as biometry measures it.
    """
    from ..progress import progress_bar

    features = cache.blocks(dataset, taps)
    size = int(size or features.images.shape[1])
    if size % 16:
        raise FetalCLIPError(f"decoder resolution {size} must be a multiple of 16")
    masks, originals, shapes, spacings = [], [], [], []
    for i in progress_bar(range(len(dataset)), desc="masks", disable=not progress):
        sample = dataset[i]
        mask = sample_mask(sample)
        if merge_labels:
            mask = (mask > 0).astype(np.uint8)
        if mask.shape != sample["image"].shape[:2]:
            raise FetalCLIPError(f"{sample['source']}: mask shape {mask.shape} differs from image shape {sample['image'].shape[:2]}")
        originals.append(mask)
        masks.append(mask_to_model(mask, size))
        shapes.append(mask.shape)
        spacings.append(sample.get("pixel_spacing_mm"))
    n_classes = int(max(int(m.max()) for m in originals)) + 1
    if n_classes < 2:
        raise FetalCLIPError(f"{dataset.name}: every mask is empty")
    config = cache.model.preprocess.config
    data = SegmentationData(
        blocks=features.blocks,
        images=features.images,
        masks=np.stack(masks),
        patients=[str(r.get("patient") or r.get("source")) for r in dataset.records],
        sources=[str(r.get("source")) for r in dataset.records],
        spacings=spacings,
        shapes=shapes,
        mean=tuple(config.mean),
        std=tuple(config.std),
        splits=[r.get("split") for r in dataset.records] if any(r.get("split") for r in dataset.records) else None,
        n_classes=n_classes,
    )
    return data, originals


def run_segmentation(
    data: SegmentationData,
    originals: Sequence[np.ndarray],
    folds: int = 1,
    runs: int = 1,
    seed: int = 0,
    epochs: int = 100,
    batch_size: int = 8,
    lr: float = 3e-4,
    weight_decay: float = 0.01,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    patience: int | None = None,
    test_fraction: float = 0.2,
    test: tuple[SegmentationData, Sequence[np.ndarray]] | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], TrainedDecoder, dict[str, Any]]:
    """Patient-level folds x runs of the decoder; metrics on the test split (or ``test``, an external set).

    Returns (result JSON, the decoder with the lowest validation loss, its splits) so a caller can save it.
    """
    from ..data.splits import index_splits

    splits = index_splits(data.patients, folds=folds, seed=seed, test_fraction=test_fraction,
                         record_splits=data.splits, with_test=test is None)
    if test is None:
        test_data, test_indices, test_masks = data, splits.test, [originals[i] for i in splits.test]
    else:
        test_data, test_masks = test
        test_indices = list(range(len(test_masks)))
    heads, best = [], None
    for k, (train, val) in enumerate(splits.folds):
        for r in range(runs):
            trained = train_decoder(data, train, val, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                    seed=seed * 100_003 + k * 1_009 + r, channels=channels, patience=patience, progress=progress)
            metrics, _ = evaluate_segmentation(trained.decoder, test_data, test_indices, test_masks)
            heads.append({"fold": k, "run": r, "best_epoch": trained.best_epoch, "val_loss": trained.val_loss,
                          "epochs_run": len(trained.history), **{key: v for key, v in metrics.items() if key != "rows"}})
            if best is None or trained.val_loss < best[0].val_loss:
                best = (trained, metrics["rows"], k, r)

    def summary(key: str) -> dict[str, float | None]:
        values = [h[key] for h in heads if h[key] is not None]
        if not values:
            return {"mean": None, "sd": None}
        return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}

    result = {
        "task": "segmentation-probe",
        "n_classes": data.n_classes,
        "n_test": len(test_indices),
        "test_source": "external" if test is not None else splits.source,
        "folds": len(splits.folds),
        "runs": runs,
        "seed": seed,
        "epochs": epochs,
        "patience": patience,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "decoder_parameters": sum(p.numel() for p in best[0].decoder.parameters()),
        "dice_pooled": summary("dice_pooled"),
        "dice_per_image_mean": summary("dice_per_image_mean"),
        "hausdorff_mm_mean": summary("hausdorff_mm_mean"),
        "heads": heads,
        "best_head": {"fold": best[2], "run": best[3], "rows": best[1]},
        "notes": splits.notes,
    }
    split_info = splits.to_dict()
    return result, best[0], split_info
