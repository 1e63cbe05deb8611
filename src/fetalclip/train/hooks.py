"""Evaluation hooks: any callable ``(model, step) -> {name: value}`` run every K steps on the main process.

The loop passes the bare ``FetalCLIP`` model in eval mode under ``torch.no_grad`` and logs whatever comes back
(names like ``retrieval/i2t_view_r5``, as big_vision's evaluators name theirs), so zero-shot evaluators can
be plugged in without the loop knowing them. :class:`RetrievalHook` is the built-in one: image-text
retrieval on held-out pairs. :class:`ZeroShotHook` runs the zero-shot tasks (planes, brain sub-planes,
gestational age) on a dataset named in the recipe (``zeroshot_planes = "fpdb:DIR"``, ...) or on the run's own
held-out patients (``zeroshot_planes = "holdout"``), without bootstrap intervals; ``transfer_planes =
"fpdb:DIR"`` scores leave-one-machine-out transfer (:class:`TransferHook`); ``eval_hooks =
["module:factory"]`` adds any other hook, built as ``factory(config)``. The zero-shot code belongs to
``fetalclip.tasks`` and is imported only when such a hook is configured.

Retrieval is scored at two levels. *Pair* recall@k asks for an image's own caption among the top k of all
held-out captions; since template captions of one view differ only in age and spacing, it is a hard target.
*View* recall@k asks whether any of the top k captions names the image's view. Its chance level is computed
exactly (``1 - C(N - n_v, k) / C(N, k)`` for a view with ``n_v`` captions) and reported beside it, macro-
averaged over views, because one abundant view (every HC18 image is a head) would otherwise make chance ~1.
With a handful of held-out images per rare view the macro recall moves in steps of a fifth, so a
permutation p-value (``i2t_view_r5_p``) says whether it beats chance for this model's own rankings.
"""

from __future__ import annotations

import importlib
from math import comb
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.datasets import SampleDataset
from ..errors import FetalCLIPError
from .config import HOLDOUT, ZEROSHOT_TASKS
from .data import HeldOutPair

EvalHook = Callable[[torch.nn.Module, int], dict[str, float]]


def view_recall_chance(views: Sequence[str], k: int) -> dict[str, float]:
    """Per view, the probability that k captions drawn at random include one of that view."""
    views = list(views)
    total = len(views)
    k = min(k, total)
    return {v: 1.0 - comb(total - views.count(v), k) / comb(total, k) for v in sorted(set(views))}


def _macro_view_hits(hit: np.ndarray, views: np.ndarray, classes: Sequence[str]) -> float:
    return float(np.mean([hit[views == v].mean() for v in classes]))


def view_recall_p_value(top_views: np.ndarray, views: np.ndarray, permutations: int, seed: int = 0) -> float:
    """One-sided permutation p-value of macro view recall: could the images' views be swapped without loss?

    ``top_views[i]`` are the views of image i's top-k captions. Under the null hypothesis that an image's
    ranking says nothing about its view, the view labels of the images are exchangeable while each image
    keeps its ranking; the p-value is the share of label permutations (plus the observed one) that score at
    least the observed macro recall. A collapsed model that ranks the captions the same for every image
    scores the same under every permutation, so it gets p = 1 however lucky its fixed top-k is, which the
    analytic chance level (a random ranking per image) cannot say.
    """
    classes = sorted(set(views.tolist()))
    observed = _macro_view_hits((top_views == views[:, None]).any(axis=1), views, classes)
    rng = np.random.default_rng(seed)
    at_least = 0
    for _ in range(permutations):
        shuffled = rng.permutation(views)
        at_least += _macro_view_hits((top_views == shuffled[:, None]).any(axis=1), shuffled, classes) >= observed - 1e-12
    return (1 + at_least) / (1 + permutations)


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    views: Sequence[str],
    ks: Sequence[int] = (1, 5),
    permutations: int = 1000,
) -> dict[str, float]:
    """Recall@k from normalised features of N images and their N captions (row i of each belongs together).

    ``i2t_view_r{k}_p`` is the permutation p-value of the view recall (``permutations=0`` leaves it out).
    """
    similarity = image_features.float() @ text_features.float().T
    n = similarity.shape[0]
    views_arr = np.asarray(views)
    order_i2t = similarity.argsort(dim=1, descending=True).cpu().numpy()
    order_t2i = similarity.T.argsort(dim=1, descending=True).cpu().numpy()
    truth = np.arange(n)[:, None]
    out: dict[str, float] = {}
    classes = sorted(set(views))
    for k in ks:
        k_eff = min(k, n)
        out[f"i2t_r{k}"] = float((order_i2t[:, :k_eff] == truth).any(axis=1).mean())
        out[f"t2i_r{k}"] = float((order_t2i[:, :k_eff] == truth).any(axis=1).mean())
        top_views = views_arr[order_i2t[:, :k_eff]]
        chance = view_recall_chance(views, k)
        out[f"i2t_view_r{k}"] = _macro_view_hits((top_views == views_arr[:, None]).any(axis=1), views_arr, classes)
        out[f"i2t_view_r{k}_chance"] = float(np.mean([chance[v] for v in classes]))
        if permutations:
            out[f"i2t_view_r{k}_p"] = view_recall_p_value(top_views, views_arr, permutations)
    return out


class RetrievalHook:
    """Image-text retrieval on held-out pairs; returns ``{prefix}/i2t_view_r5`` and friends."""

    def __init__(self, pairs: Sequence[HeldOutPair], ks: Sequence[int] = (1, 5), batch_size: int = 64, prefix: str = "retrieval"):
        if len(pairs) < 2:
            raise ValueError("retrieval needs at least two held-out pairs")
        self.pairs = list(pairs)
        self.ks = tuple(ks)
        self.batch_size = batch_size
        self.prefix = prefix

    def __call__(self, model, step: int) -> dict[str, float]:
        image_chunks, text_chunks = [], []
        for start in range(0, len(self.pairs), self.batch_size):
            chunk = self.pairs[start:start + self.batch_size]
            images = model.preprocess.batch([pair.image() for pair in chunk])
            image_chunks.append(model.encode_image(images, normalize=True).float().cpu())
            text_chunks.append(model.encode_text([pair.caption for pair in chunk], normalize=True).float().cpu())
        metrics = retrieval_metrics(torch.cat(image_chunks), torch.cat(text_chunks), [p.view for p in self.pairs], self.ks)
        metrics["n"] = float(len(self.pairs))
        return {f"{self.prefix}/{name}": value for name, value in metrics.items()}


# -- zero-shot evaluation during training ------------------------------------------------------------------------


class ZeroShotHook:
    """Zero-shot planes / brain sub-planes (``zeroshot/<task>/f1`` ...) or GA (``zeroshot/ga/vpr`` ...), in percent.

    The dataset is opened once, when the hook is built (a wrong path fails before training starts), and cut
    to ``max_samples`` images drawn once with ``seed``, so every evaluation of a run scores the same images.
    """

    def __init__(self, task: str, source: str | SampleDataset, max_samples: int | None = 512, seed: int = 0, batch_size: int = 64):
        from ..data.datasets import open_dataset

        if task not in ZEROSHOT_TASKS:
            raise ValueError(f"unknown zero-shot task {task!r}; use one of {ZEROSHOT_TASKS}")
        dataset = open_dataset(source) if isinstance(source, str) else source
        spec = source if isinstance(source, str) else dataset.name
        keep = self._eligible(task, dataset)
        if not keep:
            what = {"planes": "a plane label", "brain": "a brain sub-plane label", "ga": "a pixel spacing and HC"}[task]
            raise FetalCLIPError(f"zeroshot_{task} = {spec!r}: no image has {what}")
        if max_samples and len(keep) > max_samples:
            keep = sorted(np.random.default_rng([seed, 7]).choice(keep, size=max_samples, replace=False).tolist())
        self.task, self.spec, self.batch_size = task, spec, batch_size
        self.dataset = dataset.subset(keep)

    @staticmethod
    def _eligible(task: str, dataset) -> list[int]:
        if task == "ga":
            return [i for i, r in enumerate(dataset.records) if r.get("pixel_spacing_mm") is not None and r.get("hc_mm") is not None]
        from ..tasks.zeroshot import record_target

        return [i for i, r in enumerate(dataset.records) if record_target(r, task) not in (None, "other")]

    def __call__(self, model, step: int) -> dict[str, float]:
        from ..tasks.zeroshot_tasks import ZeroShotBrain, ZeroShotGA, ZeroShotPlanes

        evaluation = {"planes": ZeroShotPlanes, "brain": ZeroShotBrain, "ga": ZeroShotGA}[self.task]({"batch_size": self.batch_size})
        return log_names(self.task, evaluation.run(model, self.dataset, progress=False, n_bootstrap=0))


class TransferHook:
    """Leave-one-machine-out linear probe and zero-shot planes (``transfer/planes/...``, percent) on a dataset.

    With the run's ``holdout_group`` (``us_machine=Aloka``) only that machine is held out: the one the run never
    trained on, so the number is transfer to an unseen scanner; without it every machine is held out in turn.
    """

    def __init__(self, source: str, holdout_group: str | None = None, seed: int = 0):
        from ..data.datasets import open_dataset

        self.dataset = open_dataset(source)
        self.seed = seed
        self.options: dict[str, Any] = {"folds": 3, "epochs": 30}
        if holdout_group:
            field, _, value = holdout_group.partition("=")
            self.options.update(group_by=field.strip(), held_out=[value.strip()])

    def __call__(self, model, step: int) -> dict[str, float]:
        from ..tasks.transfer_tasks import TransferPlanes

        with torch.enable_grad():  # the loop evaluates under no_grad; the probe trains (embedding stays grad-free)
            result = TransferPlanes(self.options).run(model, self.dataset, progress=False, seed=self.seed, n_bootstrap=0)
        return {f"transfer/planes/{name}": float("nan") if m.value is None else float(m.value) for name, m in result.metrics.items()}


def log_names(task: str, result) -> dict[str, float]:
    """A zero-shot ``TaskResult`` as the training log's flat ``zeroshot/<task>/...`` names (NaN: nothing measured)."""
    def value(v):
        return float("nan") if v is None else float(v)

    prefix = f"zeroshot/{task}"
    if task == "ga":
        vpr = result.metrics["vpr"]
        return {f"{prefix}/vpr": value(vpr.value), f"{prefix}/n_valid": float(result.details["n_valid"]),
                f"{prefix}/n_evaluated": float(vpr.n), f"{prefix}/n": float(result.details["n_images"]),
                f"{prefix}/mae_days_vs_who_median": value(result.metrics["mae_days_vs_who_median"].value)}
    metrics = dict(result.metrics)
    logged = {f"{prefix}/f1": value(metrics.pop("macro_f1").value)}
    n = result.metrics["macro_f1"].n
    logged.update({f"{prefix}/{name}": value(m.value) for name, m in metrics.items()})
    logged[f"{prefix}/n"] = float(n)
    logged.update({f"{prefix}/f1/{label}": value(row["f1"]) for label, row in result.details["per_class"].items()})
    return logged


def load_hook_factory(reference: str) -> Callable[[Any], EvalHook]:
    """``package.module:factory`` -> the factory (called with the training config, it returns a hook)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise FetalCLIPError(f"eval_hooks entry {reference!r}: expected 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise FetalCLIPError(f"eval_hooks entry {reference!r}: cannot import it ({exc})") from exc
    if not callable(factory):
        raise FetalCLIPError(f"eval_hooks entry {reference!r} is not callable")
    return factory


def configured_hooks(config, held_out: SampleDataset | None = None) -> list[EvalHook]:
    """The evaluation hooks a training config asks for: zero-shot datasets, then ``eval_hooks`` factories.

    A zero-shot dataset given as ``"holdout"`` is ``held_out``: the run's own held-out patients, never trained on.
    """
    hooks: list[EvalHook] = []
    for task in ZEROSHOT_TASKS:
        spec = getattr(config, f"zeroshot_{task}")
        if spec == HOLDOUT:
            if held_out is None or not len(held_out):
                raise FetalCLIPError(f"zeroshot_{task} = {HOLDOUT!r} needs held-out patients (holdout_fraction > 0)")
            hooks.append(ZeroShotHook(task, held_out, config.eval_max_samples, config.seed))
        elif spec:
            hooks.append(ZeroShotHook(task, spec, config.eval_max_samples, config.seed))
    if config.transfer_planes:
        hooks.append(TransferHook(config.transfer_planes, config.holdout_group, config.seed))
    for reference in config.eval_hooks:
        hook = load_hook_factory(reference)(config)
        if not callable(hook):
            raise FetalCLIPError(f"eval_hooks entry {reference!r}: the factory returned {type(hook).__name__}, not a hook")
        hooks.append(hook)
    return hooks


def has_configured_hooks(config) -> bool:
    return any(getattr(config, f"zeroshot_{task}") for task in ZEROSHOT_TASKS) or bool(config.eval_hooks or config.transfer_planes)
