"""The LoRA probe: a linear head and LoRA adapters of the image tower trained together, the linear probe's protocol.

What adaptation buys over a frozen probe is only visible when everything else is held equal, so this runner
takes the linear probe's ``ProbeRecipe`` (one (lr, weight decay) point, epochs, batch, folds x runs) and its
patient-level splits (``data.splits.index_splits``, the same seed gives the same patients), selects each run's
epoch by validation loss, and reports through the linear probe's own report (``probe._report``), so both
reports have the same keys and the same bootstrap CI. The differences: images, not cached embeddings, go
through the encoder at every step (no feature cache can hold an encoder that changes), so offline augmentation
and standardisation, which are defined on cached embeddings, are not offered; and every fold x run re-starts
the adapters from a seeded initialisation on one adapted copy of the model, the base weights never touched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.sample import patient_id
from ..data.splits import index_splits
from ..errors import FetalCLIPError
from ..models.lora import LoraConfig, adapter_parameters, apply_lora, count_trainable
from .probe_linear import ProbeData, ProbeRun, TrainedHead, class_targets
from .probe_recipe import ProbeRecipe


@dataclass(frozen=True)
class LoraProbeSettings:
    """The adapters of a LoRA probe (image tower only); ``alpha`` defaults to twice the rank, ``lr`` to the head's."""

    rank: int = 8
    alpha: float | None = None
    targets: tuple[str, ...] = ("attn", "mlp")
    lr: float | None = None

    def lora(self) -> LoraConfig:
        return LoraConfig(rank=self.rank, alpha=self.alpha or 2.0 * self.rank, targets=tuple(self.targets), towers=("image",))


@dataclass
class ImageSet:
    """Model-size images of one labelled set (decoded and padded once), with labels, patients and splits."""

    images: list
    labels: list[str]
    patients: list[str]
    splits: list[Any] | None = None


def image_set(model, dataset, label_key: str = "label") -> ImageSet:
    """Every record of ``dataset`` as the model-size image its encoder sees, and its label."""
    preprocess = model.preprocess
    images = [preprocess.to_model_image(dataset[i]["image"]) for i in range(len(dataset))]
    records = dataset.records
    splits = [r.get("split") for r in records] if any(r.get("split") for r in records) else None
    return ImageSet(images, [str(r[label_key]) for r in records], [patient_id(r) for r in records], splits)


def _batch(model, images: ImageSet, index: Sequence[int]) -> torch.Tensor:
    return torch.stack([model.preprocess(images.images[i]) for i in index])


def _embed(model, images: ImageSet, index: Sequence[int], batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.encode_image(_batch(model, images, index[s: s + batch_size])).float()
                          for s in range(0, len(index), batch_size)]) if len(index) else torch.empty(0)


def _restart(net, head: torch.nn.Linear, seed: int) -> None:
    """Adapters and head to their seeded starting values (A as a Linear's init, B zero; the head as the linear probe's)."""
    generator = torch.Generator().manual_seed(seed)
    params = adapter_parameters(net)  # A, B of each adapted weight in turn
    with torch.no_grad():
        for a, b in zip(params[0::2], params[1::2]):
            bound = 1.0 / math.sqrt(a.shape[-1])  # A: [blocks, rank, in], as a Linear's init; B: zero
            a.copy_(torch.empty(a.shape).uniform_(-bound, bound, generator=generator))
            b.zero_()
        bound = 1.0 / math.sqrt(head.in_features)
        init = torch.Generator().manual_seed(seed + 1)
        head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=init))
        head.bias.copy_(torch.empty(head.bias.shape).uniform_(-bound, bound, generator=init))


def _train_one(net, head, images, y_all, train, val, recipe: ProbeRecipe, settings: LoraProbeSettings, seed: int):
    """Head + adapters on ``train``; the state (and val loss, epoch) of the best-validation-loss epoch."""
    lr, wd = recipe.single_point("LoRA probe")
    adapters = adapter_parameters(net)
    optimizer = torch.optim.AdamW([{"params": list(head.parameters()), "lr": lr, "weight_decay": wd},
                                   {"params": adapters, "lr": settings.lr or lr, "weight_decay": wd}])
    generator = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(y_all, dtype=torch.long, device=net.device)
    best = (math.inf, -1, None)
    for epoch in range(recipe.epochs):
        net.train()
        order = torch.as_tensor(train)[torch.randperm(len(train), generator=generator)].tolist()
        for start in range(0, len(order), recipe.batch_size):
            index = order[start: start + recipe.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(head(net.encode_image(_batch(net, images, index)).float()), y[index])
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(F.cross_entropy(head(_embed(net, images, val, recipe.batch_size)), y[val]))
        if val_loss < best[0]:
            state = [p.detach().clone() for p in adapters] + [p.detach().clone() for p in head.parameters()]
            best = (val_loss, epoch, state)
    with torch.no_grad():
        for param, value in zip(adapters + list(head.parameters()), best[2]):
            param.copy_(value)
    return best[0], best[1]


def lora_probe(model, images: ImageSet, recipe: ProbeRecipe, settings: LoraProbeSettings, test: ImageSet | None = None,
               *, seed: int = 0, n_bootstrap: int = 10_000, progress: bool = False) -> ProbeRun:
    """The LoRA probe: patient-level folds x runs as ``linear_probe``; its report plus ``lora`` (rank, parameters)."""
    from ..progress import progress_bar
    from .probe import _report

    classes = sorted(set(images.labels))
    if len(classes) < 2:
        raise FetalCLIPError(f"LoRA probe needs at least two classes; found {classes}")
    recipe.single_point("LoRA probe")
    splits = index_splits(images.patients, folds=recipe.folds, seed=seed, test_fraction=recipe.test_fraction,
                          record_splits=images.splits, with_test=test is None)
    # class_targets reads labels (and test rows) from ProbeData; indices stand in for the embeddings.
    index_data = ProbeData(x=np.arange(len(images.labels)), labels=images.labels, patients=images.patients)
    test_data = None if test is None else ProbeData(x=np.arange(len(test.labels)), labels=test.labels, patients=test.patients)
    classes, y_all, test_rows, y_test, eval_labels = class_targets(index_data, test_data, splits.test)
    if not len(y_test):
        raise FetalCLIPError("the test split is empty")
    test_images, test_index = (images, list(splits.test)) if test is None else (test, list(range(len(test.labels))))

    net = copy.deepcopy(model).float()
    apply_lora(net, settings.lora())
    head = torch.nn.Linear(net.embed_dim, len(classes)).to(net.device)
    trainable = count_trainable(net) + sum(p.numel() for p in head.parameters())
    heads, preds = [], []
    jobs = [(k, r) for k in range(len(splits.folds)) for r in range(recipe.runs)]
    for k, r in progress_bar(jobs, desc="LoRA probe", disable=not progress):
        job_seed = seed * 100_003 + k * 1_009 + r  # the linear probe's per-head seed
        train, val = splits.folds[k]
        _restart(net, head, job_seed)
        val_loss, epoch = _train_one(net, head, images, y_all, train, val, recipe, settings, job_seed)
        with torch.no_grad():
            logits = head(_embed(net, test_images, test_index, recipe.batch_size))
        preds.append(logits.argmax(dim=1).cpu().numpy())
        lr, wd = recipe.points[0]
        heads.append(TrainedHead(head.weight.detach().cpu().numpy().copy(), head.bias.detach().cpu().numpy().copy(), epoch,
                                 val_loss, lr, wd))
    report = _report(index_data, test_data, splits, recipe, seed, classes, y_test, eval_labels, np.stack(preds),
                     n_bootstrap, chosen={"lr": recipe.points[0][0], "weight_decay": recipe.points[0][1]},
                     best_epochs=[h.best_epoch for h in heads])
    report.update(task="lora-probe", splits=splits.to_dict(), notes=splits.notes, lora={
        **settings.lora().to_dict(), "adapter_lr": settings.lr or recipe.points[0][0], "trainable_parameters": int(trainable),
        "encoder_parameters": int(sum(p.numel() for p in model.clip.visual.parameters()))})
    return ProbeRun(report, min(heads, key=lambda h: h.val_loss))


__all__ = ["ImageSet", "LoraProbeSettings", "image_set", "lora_probe"]
