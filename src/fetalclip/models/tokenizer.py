"""The CLIP BPE tokenizer at the model's context length (FetalCLIP uses 117, not CLIP's 77).

open_clip's ``SimpleTokenizer`` is used unchanged; we only cache one instance per context length because
building it reads and parses the BPE merges file, which costs more than tokenising a batch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch


@lru_cache(maxsize=8)
def get_tokenizer(context_length: int):
    import open_clip

    return open_clip.SimpleTokenizer(context_length=context_length)


def tokenize(texts: str | Sequence[str], context_length: int) -> torch.LongTensor:
    """Token ids ``[N, context_length]``; over-long texts are truncated with the end token kept."""
    if isinstance(texts, str):
        texts = [texts]
    return get_tokenizer(context_length)(list(texts))
