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
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ..data.captions import absent_views, view_caption
from ..models.tokenizer import tokenize

_NEGATIVE_STREAM = 7  # train.data's random streams are 1-6


class AbsentViewCaptions:
    """``tokens(step)`` -> ``[views, context]`` token ids: one caption per absent view for that optimiser step."""

    def __init__(self, present_views: Iterable[str], context_length: int, seed: int):
        self.views = absent_views(present_views)
        self.context_length = context_length
        self.seed = seed

    def __len__(self) -> int:
        return len(self.views)

    def captions(self, step: int) -> list[str]:
        rng = np.random.default_rng([self.seed, _NEGATIVE_STREAM, int(step)])
        return [view_caption(view, rng) for view in self.views]

    def tokens(self, step: int) -> torch.Tensor:
        return tokenize(self.captions(step), self.context_length)


__all__ = ["AbsentViewCaptions"]
