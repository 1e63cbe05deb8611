"""Reading packed samples back in shard order, as they were packed (the JSON fields as stored).

This is the packer's view of a sample, for checking and for inspecting a shard set: the ``.json`` member's
fields plus ``key``, ``image``, ``caption`` (the ``.txt`` member as written) and ``mask`` when packed. The
dataset view that every command reads (``shards:DIR``) is ``index``; both decode members through ``rules``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from .manifest import folder_shards
from .rules import ShardError, decode_pixels, decode_text, parse_json_object, read_local_samples

_REQUIRED_MEMBERS = frozenset({"png", "txt", "json"})


def shard_urls(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """Shard paths from a shard folder (its manifest's order), a single tar, or a list of paths/URLs."""
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    path = Path(source)
    if path.is_dir():
        return [str(entry.path) for entry in folder_shards(path)]
    return [str(source)]


def missing_members(members: Any) -> str | None:
    """The required members a sample lacks, as text (``None`` when it has png, txt and json)."""
    missing = _REQUIRED_MEMBERS - set(members)
    return ", ".join(sorted(missing)) if missing else None


def decode_packed(raw: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """One WebDataset sample (bytes per extension) -> the packed sample dict.

    ``where`` (default: the key) names the sample in errors: an image that does not decode raises
    ``ImageReadError(where, ...)``, metadata that is not JSON a ``ShardError``.
    """
    where = where or str(raw.get("__key__"))
    missing = missing_members(raw)
    if missing:
        raise ShardError(where, f"sample lacks {missing}")
    sample = parse_json_object(raw["json"], f"{where}.json")
    sample["key"] = raw["__key__"]
    sample["image"] = decode_pixels(raw["png"], f"{where}.png")
    sample["caption"] = decode_text(raw["txt"], f"{where}.txt")
    if raw.get("mask.png") is not None:
        sample["mask"] = decode_pixels(raw["mask.png"], f"{where}.mask.png")
    return sample


def iter_shard_samples(source: str | os.PathLike | Sequence[str]) -> Iterator[dict[str, Any]]:
    """Every packed sample, in shard order: the JSON fields plus ``key``, ``image``, ``caption`` and
    ``mask`` (when packed). ``source``: a shard folder, a tar file, or a list of shard paths/URLs.

    Local shards are read under the shard rules (see ``rules``); only remote URLs are streamed by
    webdataset, which does not follow them.
    """
    for url in shard_urls(source):
        if "://" in url or url.startswith("pipe:"):
            import webdataset as wds

            for raw in wds.WebDataset([url], shardshuffle=False, empty_check=False):
                yield decode_packed(raw, f"{url}:{raw['__key__']}")
            continue
        for key, members in read_local_samples(Path(url)):
            yield decode_packed({"__key__": key, **members}, f"{url}:{key}")
