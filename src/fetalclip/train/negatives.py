"""Captions of the views a training set never shows, given to the loss as extra negatives (``absent_view_negatives``).

Zero-shot offers classes the pretraining data has no image of (the packaged planes task offers kidney, lips and
nose, profile and spine beside the five planes). A text tower trained from scratch has never read those words,
so where their prompts land is an accident of initialisation and of how shared words ("fetal", "view of the")
move: in one measured run, 712 of 804 held-out HC18 heads were called "profile" after 1,050 steps, at 450 steps
81% were called brain. With this lever, every optimiser step adds one plain caption of every absent view (the
captioner's own phrasings and sentence frames, ``data.captions.view_caption``; never the prompts) as an extra
column of the image-to-text logits: no image of the batch may pick it, so the text tower learns to keep those
views away from every kind of image it trains on, the way a captioned data set with those views would teach it.

Absent means neither a view of the training set nor an ancestor or descendant of one (a four-chamber caption is
never a negative where thorax images train; ``data.captions.absent_views``). The captions are drawn from a
stream of their own, seeded by the step, so they are the same on every process and on resume.

The views come from the samples' labels, so the lever is only sound where the captions do too: a caption of a
sample's own (a report in a shard) may describe a view its labels do not name, and an unlabelled corpus would
make every view "absent". ``for_dataset`` therefore refuses a training set in which captions of their own are
used (``own_captions = true`` and some sample has one).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ..data.captions import absent_views, view_caption
from ..errors import FetalCLIPError
from ..models.tokenizer import tokenize

_NEGATIVE_STREAM = 7  # train.data's random streams are 1-6


class AbsentViewCaptions:
    """``tokens(step)`` -> ``[views, context]`` token ids: one caption per absent view for that optimiser step."""

    def __init__(self, present_views: Iterable[str], context_length: int, seed: int):
        self.views = absent_views(present_views)
        self.context_length = context_length
        self.seed = seed

    @classmethod
    def for_dataset(cls, dataset, context_length: int, seed: int) -> "AbsentViewCaptions":
        """For a ``train.data.PairDataset``; refused where samples' own captions are used (see above)."""
        if dataset.own_captions:
            own = sum(1 for d, i in dataset.items if dataset.datasets[d].records[i].get("caption"))
            if own:
                raise FetalCLIPError(
                    f"absent_view_negatives: {own} training samples carry captions of their own, which may describe views "
                    "their labels do not name; set own_captions = false (captions from the labels) or drop the negatives")
        return cls(dataset.views, context_length, seed)

    def __len__(self) -> int:
        return len(self.views)

    def captions(self, step: int) -> list[str]:
        rng = np.random.default_rng([self.seed, _NEGATIVE_STREAM, int(step)])
        return [view_caption(view, rng) for view in self.views]

    def tokens(self, step: int) -> torch.Tensor:
        return tokenize(self.captions(step), self.context_length)


__all__ = ["AbsentViewCaptions"]
