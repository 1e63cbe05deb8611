"""Image-text pairs for contrastive training, in an order fixed by the seed and the step alone.

``--data`` takes shard folders and dataset specs alike; both become ``SampleDataset``s (records plus a loader)
and are concatenated. The run's data order is one infinite sequence of *positions*: epoch ``e`` is a seeded
permutation of the training samples (with ``balance_views``, as many seeded weighted draws), and optimiser
step ``s`` consumes positions ``[s*B, (s+1)*B)`` of the global batch ``B``, split between processes and
accumulation micro-batches. Everything random about a sample (its caption phrasing, its augmentation) is
seeded by its position too. Consequences, all deliberate:

- resuming at step ``s`` only needs ``s`` (the checkpoint's data position is ``s*B``), with no replay;
- a run on 2 processes sees exactly the global batches a run on 1 process sees, so it can be checked against
  it, and a run may resume on a different number of processes;
- the number of loader workers changes nothing but speed.

Held-out evaluation samples are chosen by patient (never by image), so no patient is both trained on and
evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.captions import CaptionFn, caption_sample, sample_view, template_caption
from ..data.datasets import SampleDataset, open_dataset, parse_spec
from ..data.sample import domain_of
from ..data.shards import is_shard_folder
from ..errors import FetalCLIPError
from ..models.preprocess import Preprocessor, pad_to_square, spacing_224, to_rgb_image
from ..models.tokenizer import tokenize
from .augment import Augmentation, UltrasoundAugmentation

# Streams of the seeded generators derived from (seed, stream, position).
_CAPTION_STREAM, _AUGMENT_STREAM, _SPLIT_STREAM, _ORDER_STREAM, _SECOND_VIEW_STREAM, _RAMP_STREAM = 1, 2, 3, 4, 5, 6

ItemRef = tuple[int, int]  # (dataset number, index within it)


class _CleaningLoader:
    """A dataset's loader followed by ``clean_sample`` (picklable, for loader worker processes)."""

    def __init__(self, loader: Callable[[dict[str, Any]], dict[str, Any]]):
        self.loader = loader

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        from ..data.cleaning import clean_sample

        return clean_sample(self.loader(record))


def open_sources(specs: Sequence[str], clean: bool = False) -> list[SampleDataset]:
    """Each ``--data`` value as a dataset: a dataset spec (``shards:DIR`` included) or a shard folder's path.

    ``clean``: dataset specs are read through ``clean_sample`` (burned-in text, calipers and everything outside
    the scan sector removed, as ``data pack`` does by default), for training and held-out evaluation alike.
    Shard folders are read as they are: ``data pack`` decided about cleaning when it wrote them.
    """
    if not specs:
        raise FetalCLIPError("no training data: give --data with shard folders or dataset specs")
    datasets = []
    for value in specs:
        spec = training_spec(value)
        dataset = open_dataset(spec)
        if clean and parse_spec(spec)[0] != "shards":
            dataset = SampleDataset(dataset.name, dataset.records, _CleaningLoader(dataset.loader), dataset.missing)
        if not len(dataset):
            raise FetalCLIPError(f"{value}: holds no samples")
        datasets.append(dataset)
    return datasets


def training_spec(value: str) -> str:
    """A ``--data`` value as a dataset spec: training also takes a shard folder by its bare path."""
    if is_shard_folder(value):
        return f"shards:{value}"
    if ":" not in value and Path(value).exists():
        raise FetalCLIPError(f"{value}: not a shard folder (no shard-*.tar, no manifest.json)")
    return value


def resolve_caption_fn(name: str) -> CaptionFn:
    """``template`` (view, age, spacing), ``plain`` (the view alone) or ``package.module:function``."""
    from ..data.captions import load_caption_fn, plain_caption

    return {"template": template_caption, "plain": plain_caption}.get(name) or load_caption_fn(name)


def patient_key(dataset: SampleDataset, record: dict[str, Any]) -> str:
    origin = (record.get("metadata") or {}).get("dataset") or dataset.name
    return f"{origin}:{record.get('patient') or record['source']}"


def split_by_patient(
    datasets: Sequence[SampleDataset], holdout_fraction: float, seed: int, holdout_group: str | None = None
) -> tuple[list[ItemRef], list[ItemRef]]:
    """(training items, held-out items), with every patient wholly on one side.

    ``holdout_group`` (``"FIELD=VALUE"``, e.g. ``us_machine=Aloka``) holds out every patient with a sample of that
    value, besides the ``holdout_fraction`` drawn from the other patients: a machine the run never sees, so
    transfer to it can be measured honestly.
    """
    items = [(d, i) for d, dataset in enumerate(datasets) for i in range(len(dataset))]
    if holdout_fraction <= 0 and not holdout_group:
        return items, []
    keys = [patient_key(datasets[d], datasets[d].records[i]) for d, i in items]
    grouped: set[str] = set()
    if holdout_group:
        field, _, value = holdout_group.partition("=")
        grouped = {key for (d, i), key in zip(items, keys) if domain_of(datasets[d].records[i], field.strip()) == value.strip()}
        if not grouped:
            raise FetalCLIPError(f"holdout_group {holdout_group!r}: no sample has {field.strip()} = {value.strip()!r}")
    patients = sorted(set(keys) - grouped)
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    count = int(round(holdout_fraction * len(patients)))
    held = {patients[j] for j in rng.permutation(len(patients))[:count]} | grouped
    train = [item for item, key in zip(items, keys) if key not in held]
    holdout = [item for item, key in zip(items, keys) if key in held]
    if not train:
        raise FetalCLIPError(f"holdout_fraction {holdout_fraction} leaves no training samples")
    return train, holdout


def view_balance_weights(datasets: Sequence[SampleDataset], items: Sequence[ItemRef], balance: float) -> np.ndarray | None:
    """Draw probabilities ``~ n_view ** -balance`` per item (``None`` for 0: every sample once per epoch).

    Four fifths of the shared data are HC18 heads whose captions differ only in age and spacing; in a natural
    batch most pairs are then near-duplicates that the contrastive loss cannot tell apart. Balancing draws
    rarer views more often (with replacement), the usual class-balanced sampling with a temperature.
    """
    if balance <= 0:
        return None
    views = [view_of(datasets[d].records[i]) for d, i in items]
    _, inverse, counts = np.unique(np.asarray(views, dtype=object).astype(str), return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -balance
    return weights / weights.sum()


class _LoaderOfSource:
    """Reads a record of a merged dataset with the loader of the source it came from (picklable, unlike a lambda)."""

    def __init__(self, loaders: Sequence[Callable[[dict[str, Any]], dict[str, Any]]]):
        self.loaders = list(loaders)

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        own = {key: value for key, value in record.items() if key != "_source_index"}
        return self.loaders[record["_source_index"]](own)


def held_out_dataset(datasets: Sequence[SampleDataset], items: Sequence[ItemRef]) -> SampleDataset:
    """The held-out samples of all sources as one dataset, for evaluations that take a dataset (zero-shot)."""
    records = [dict(datasets[d].records[i], _source_index=d) for d, i in items]
    return SampleDataset("held-out patients", records, loader=_LoaderOfSource([dataset.loader for dataset in datasets]))


def enrich(sample: dict[str, Any]) -> dict[str, Any]:
    """Fill the model-input pixel spacing captions quote when a source gives only the original spacing."""
    if sample.get("pixel_spacing_224_mm") is None and sample.get("pixel_spacing_mm") is not None:
        height, width = sample["image"].shape[:2]
        sample["pixel_spacing_224_mm"] = spacing_224(sample["pixel_spacing_mm"], width=width, height=height)
    return sample


def caption_of(sample: dict[str, Any], caption_fn: CaptionFn, rng: np.random.Generator, own: bool = True) -> str:
    return caption_sample(sample, rng, caption_fn, own)


def view_of(sample_or_record: dict[str, Any]) -> str:
    """The view a template caption names (the retrieval target)."""
    return sample_view(sample_or_record)


class PairDataset(Dataset):
    """Position -> (image tensor ``[3,S,S]``, token ids ``[context]``) over an infinite seeded order."""

    def __init__(
        self,
        datasets: Sequence[SampleDataset],
        items: Sequence[ItemRef],
        preprocess: Preprocessor,
        context_length: int,
        seed: int,
        caption_fn: CaptionFn = template_caption,
        augmentation: Augmentation | UltrasoundAugmentation | None = None,
        weights: np.ndarray | None = None,
        two_views: bool = False,
        own_captions: bool = True,
        augment_ramp: int = 0,
    ):
        if not items:
            raise FetalCLIPError("no training samples")
        if two_views and augmentation is None:
            raise FetalCLIPError("two augmented views of each image need an augmentation")
        self.datasets = list(datasets)
        self.items = list(items)
        self.preprocess = preprocess
        self.context_length = context_length
        self.seed = seed
        self.caption_fn = caption_fn
        self.augmentation = augmentation
        self.weights = weights  # None: each epoch a permutation; else len(items) weighted draws per epoch
        # Augmentation ramps in over the first ``augment_ramp`` positions: position p is augmented with probability
        # p / augment_ramp (a function of the position alone, so resuming and world size change nothing).
        self.augment_ramp = augment_ramp
        self.own_captions = own_captions  # False: every caption from caption_fn, even where a sample has its own
        self.two_views = two_views  # also return a second, independently augmented view (image-image objective)
        # Each item's view as a number (same number = same view), for losses that treat same-view pairs as positives.
        names = [view_of(self.datasets[d].records[i]) for d, i in self.items]
        numbers = {name: k for k, name in enumerate(sorted(set(map(str, names))))}
        self.views = tuple(numbers)  # the views the training items show, by view number
        self.view_numbers = {item: numbers[str(name)] for item, name in zip(self.items, names)}
        self._orders: dict[int, np.ndarray] = {}
        # Per sample seen before: the model-size image, or with augmentation the square it is augmented from
        # (uint8, ~150-200 kB at 224 px), and the sample's fields without pixels. Decoding and resizing a
        # full-size scan then happens once per sample instead of once per epoch.
        self.cache: dict[ItemRef, tuple[np.ndarray, dict[str, Any]]] | None = None

    def enable_cache(self) -> None:
        self.cache = {}

    def __len__(self) -> int:
        return len(self.items)

    def item_at(self, position: int) -> ItemRef:
        epoch, offset = divmod(int(position), len(self.items))
        order = self._orders.get(epoch)
        if order is None:
            rng = np.random.default_rng([self.seed, _ORDER_STREAM, epoch])
            if self.weights is None:
                order = rng.permutation(len(self.items))
            else:
                order = rng.choice(len(self.items), size=len(self.items), replace=True, p=self.weights)
            # Positions arrive in (nearly) increasing order: two epochs cover a boundary between workers.
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = order
        return self.items[int(order[offset])]

    def sample_at(self, position: int) -> dict[str, Any]:
        d, i = self.item_at(position)
        return enrich(self.datasets[d][i])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, ...]:
        """(image ``[3,S,S]``, token ids ``[context]``, view number[, second augmented image])."""
        item = self.item_at(position)
        cached = self.cache.get(item) if self.cache is not None else None
        if cached is None:
            sample = self.sample_at(position)
            pixels = self._pixels(sample["image"])
            sample = {k: v for k, v in sample.items() if k not in ("image", "mask")}
            if self.cache is not None:
                self.cache[item] = (pixels, sample)
        else:
            pixels, sample = cached
        caption = caption_of(sample, self.caption_fn, np.random.default_rng([self.seed, _CAPTION_STREAM, int(position)]),
                             self.own_captions)
        out = (self._view(pixels, _AUGMENT_STREAM, position), tokenize(caption, self.context_length)[0],
               torch.tensor(self.view_numbers[item]))
        return out + (self._view(pixels, _SECOND_VIEW_STREAM, position),) if self.two_views else out

    def _view(self, pixels: np.ndarray, stream: int, position: int) -> torch.Tensor:
        if self.augmentation is None:
            return self._normalise(pixels)
        config = self.preprocess.config
        if position < self.augment_ramp and np.random.default_rng([self.seed, _RAMP_STREAM, stream, int(position)]).random() \
                * self.augment_ramp > position:  # not yet: the plain model-size image (own stream: later draws unchanged)
            return self._normalise(Image.fromarray(pixels).resize((config.image_size,) * 2, self.preprocess._filter))
        rng = np.random.default_rng([self.seed, stream, int(position)])
        return self._normalise(self.augmentation(Image.fromarray(pixels), rng, config.image_size, self.preprocess._filter))

    def _pixels(self, array: np.ndarray) -> np.ndarray:
        """What is cached per sample: the model input, or the square that augmentation crops from."""
        if self.augmentation is None:
            return np.array(self.preprocess.to_model_image(array))
        config = self.preprocess.config
        rgb = to_rgb_image(array)
        square = pad_to_square(rgb) if config.pad_to_square else rgb
        side = self.augmentation.source_side(config.image_size)
        return np.array(square.resize((side, side), self.preprocess._filter))

    def _normalise(self, image) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        config = self.preprocess.config
        return TF.normalize(TF.to_tensor(image), config.mean, config.std)


class StepBatchSampler(Sampler[list[int]]):
    """This process's micro-batches of positions for steps ``[start_step, end_step)``.

    Step ``s`` covers positions ``[s*G, (s+1)*G)`` with ``G = micro_batch * accum_steps * world_size``; rank ``r``
    takes the ``r``-th contiguous block of ``micro_batch * accum_steps`` and cuts it into micro-batches.
    """

    def __init__(self, micro_batch: int, accum_steps: int, rank: int, world_size: int, start_step: int, end_step: int):
        self.micro_batch, self.accum_steps = micro_batch, accum_steps
        self.rank, self.world_size = rank, world_size
        self.start_step, self.end_step = start_step, end_step

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accum_steps * self.world_size

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.accum_steps

    def __iter__(self):
        block = self.micro_batch * self.accum_steps
        for step in range(self.start_step, self.end_step):
            first = step * self.global_batch + self.rank * block
            for j in range(self.accum_steps):
                low = first + j * self.micro_batch
                yield list(range(low, low + self.micro_batch))


def make_loader(
    dataset: PairDataset,
    sampler: StepBatchSampler,
    workers: int,
    device: torch.device,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


@dataclass(frozen=True)
class HeldOutPair:
    """A held-out sample by reference (its image is read when evaluated) with its fixed caption and view."""

    dataset: SampleDataset
    index: int
    caption: str
    view: str

    def image(self) -> np.ndarray:
        return self.dataset[self.index]["image"]


def held_out_pairs(
    datasets: Sequence[SampleDataset],
    items: Sequence[ItemRef],
    seed: int,
    caption_fn: Callable = template_caption,
    max_samples: int | None = None,
    own_captions: bool = True,
) -> list[HeldOutPair]:
    """Held-out samples with one fixed caption each (for evaluation hooks); a seeded subset if too many."""
    chosen = list(items)
    if max_samples is not None and len(chosen) > max_samples:
        keep = np.sort(np.random.default_rng([seed, _SPLIT_STREAM, 1]).permutation(len(chosen))[:max_samples])
        chosen = [chosen[k] for k in keep]
    pairs = []
    for n, (d, i) in enumerate(chosen):
        sample = enrich(datasets[d][i])
        caption = caption_of(sample, caption_fn, np.random.default_rng([seed, _CAPTION_STREAM, 10**12 + n]), own_captions)
        pairs.append(HeldOutPair(datasets[d], i, caption, view_of(sample)))
    return pairs
