"""Packing datasets into a shard folder, resumably.

Inputs are shuffled once by the seed, so shards mix datasets and patients, and the same settings always
produce the same shards (tar times are fixed, captions are seeded per sample): a re-run resumes after the last
shard the manifest lists and rewrites nothing already there. Each shard is written under a temporary name and
renamed, then the manifest is rewritten, so a crash loses at most the shard in progress. Shards close at input
boundaries (a cine loop is never split across shards), so a shard can hold a few more than ``shard_size``
samples. Encoding runs in worker processes (``pool``); results are written in input order.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ...errors import FetalCLIPError, ImageReadError
from ...io import atomic_path
from ..captions import CaptionFn
from ..frames import FrameSelection
from .encode import _STATE, PackSettings, encode_input
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, SHARD_NAME, ShardEntry, load_manifest, sha256_of
from .pool import ordered_results

# Fixed tar member time: identical inputs give byte-identical shards (and checksums).
_TAR_MTIME = 0


@dataclass
class PackResult:
    out: Path
    shards: int
    samples: int
    inputs: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_shard: int = 0
    written_shards: int = 0


def _ordered(tasks: Sequence[tuple[int, int, int]], workers: int) -> Iterator[tuple]:
    """Results of ``encode_input`` in task order (see ``pool.ordered_results``)."""
    return ordered_results(encode_input, tasks, workers)


def _input_order(datasets: Sequence[Any], seed: int) -> tuple[list[tuple[int, int, int]], str]:
    pairs = [(d, r) for d, dataset in enumerate(datasets) for r in range(len(dataset))]
    permutation = np.random.default_rng(seed).permutation(len(pairs)) if pairs else []
    ordered = [pairs[i] for i in permutation]
    digest = hashlib.sha256()
    for d, r in ordered:
        record = datasets[d].records[r]
        digest.update(f"{d}\t{record['source']}\t{record.get('frame_index')}\n".encode())
    return [(position, d, r) for position, (d, r) in enumerate(ordered)], digest.hexdigest()


def _write_shard(path: Path, items: list[dict[str, Any]]) -> tuple[int, str]:
    from webdataset import TarWriter

    with atomic_path(path) as tmp:
        with TarWriter(str(tmp), encoder=False, mtime=_TAR_MTIME, user="fetalclip", group="fetalclip") as writer:
            for item in items:
                writer.write(item)
        with open(tmp, "rb") as handle:
            size, digest = tmp.stat().st_size, sha256_of(handle)
        tmp.chmod(0o644)  # temp files are private; shards are data others (training jobs) read
    return size, digest


def _write_readable_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.chmod(0o644)


def _still_there(entry: ShardEntry) -> bool:
    """A listed shard that a resumed run may keep: a usable entry whose file is there at its listed size."""
    if entry.problem is not None:
        return False
    path = entry.path
    return path.is_file() and not path.is_symlink() and path.stat().st_size == entry.bytes


def _resume_point(out: Path, settings: PackSettings, order_digest: str) -> tuple[list[dict], list[dict]]:
    """(shard entries to keep, skipped inputs to keep) from a previous run's manifest in ``out``."""
    if not os.path.lexists(out / MANIFEST):
        return [], []
    previous = load_manifest(out)
    if previous.data.get("settings") != settings.as_dict() or previous.data.get("input_digest") != order_digest:
        raise FetalCLIPError(
            f"{out} holds shards packed with other settings or inputs ({previous.data.get('settings')}); "
            "pack into a new folder or delete this one"
        )
    shards = []
    for entry in previous.entries:  # listed shards that are still there, up to the first one that is not
        if not _still_there(entry):
            break
        shards.append(entry.raw)
    done = shards[-1]["inputs"][1] if shards else 0
    skipped = [s for s in previous.data.get("skipped", [])
               if isinstance(s, dict) and isinstance(s.get("input"), int) and s["input"] < done]
    return shards, skipped


def pack_shards(
    specs: Sequence[str],
    out: str | os.PathLike,
    shard_size: int = 1000,
    clean: bool = True,
    frames: "FrameSelection | str | None" = None,
    seed: int = 0,
    skip_bad: bool = False,
    masks: bool = True,
    caption_fn: CaptionFn | None = None,
    caption_name: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> PackResult:
    """Pack the datasets named by ``specs`` into ``out`` (see the package docstring); resumes a partial run.

    ``caption_fn``: a ``CaptionFn`` (default: template captions); ``caption_name`` names it in the manifest
    (a resumed run must use the same). ``workers``: processes for decoding/cleaning/encoding (default: the
    machine's cores; 0 or 1 runs in this process).
    """
    from ...progress import progress_bar
    from ..datasets import open_dataset

    if shard_size < 1:
        raise FetalCLIPError(f"shard size must be >= 1 (got {shard_size})")
    if not specs:
        raise FetalCLIPError("no dataset to pack: give at least one --dataset SPEC")
    if caption_fn is not None and caption_name is None:
        caption_name = f"{getattr(caption_fn, '__module__', '?')}:{getattr(caption_fn, '__qualname__', repr(caption_fn))}"
    settings = PackSettings(list(specs), int(seed), int(shard_size), bool(clean), str(FrameSelection.parse(frames)),
                            bool(masks), caption_name or "template")
    out = Path(out)
    datasets = [open_dataset(spec) for spec in specs]
    tasks, order_digest = _input_order(datasets, settings.seed)
    shards, skipped = _resume_point(out, settings, order_digest)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".shard-*.tmp"):  # temp files of a run that was killed mid-shard
        stale.unlink()
    resumed_from = len(shards)
    start = shards[-1]["inputs"][1] if shards else 0

    def write_manifest(complete: bool) -> None:
        _write_readable_json(out / MANIFEST, {
            "format": FORMAT, "version": FORMAT_VERSION, "settings": settings.as_dict(), "input_digest": order_digest,
            "complete": complete, "shards": shards, "skipped": skipped,
            "totals": {"shards": len(shards), "samples": sum(s["samples"] for s in shards), "inputs": len(tasks),
                       "inputs_done": shards[-1]["inputs"][1] if shards else 0, "skipped": len(skipped)},
        })

    def close_shard(items: list[dict[str, Any]], first: int, end: int) -> None:
        name = SHARD_NAME.format(len(shards))
        size, digest = _write_shard(out / name, items)
        shards.append({"name": name, "samples": len(items), "bytes": size, "sha256": digest, "inputs": [first, end]})

    _STATE.update(datasets=datasets, settings=settings, caption_fn=caption_fn)
    if workers is None:
        workers = os.cpu_count() or 1
    pending: list[dict[str, Any]] = []
    shard_start = start
    written = 0
    try:
        with progress_bar(total=len(tasks), initial=start, unit="img", desc="pack", disable=not progress) as bar:
            for position, items, bad in _ordered(tasks[start:], workers):
                if bad is not None:
                    if not skip_bad:
                        raise ImageReadError(bad[0], f"{bad[1]} (use --skip-bad to skip unreadable inputs)")
                    skipped.append({"input": position, "source": bad[0], "reason": bad[1]})
                else:
                    pending.extend(items)
                bar.update(1)
                if len(pending) >= shard_size:
                    close_shard(pending, shard_start, position + 1)
                    written += 1
                    write_manifest(False)
                    pending, shard_start = [], position + 1
            if pending:
                close_shard(pending, shard_start, len(tasks))
                written += 1
            elif shards and shards[-1]["inputs"][1] < len(tasks):
                # Trailing inputs were all skipped: the last shard's range covers them so resuming ends here.
                shards[-1]["inputs"][1] = len(tasks)
    finally:
        _STATE.clear()
    write_manifest(True)
    return PackResult(out, len(shards), sum(s["samples"] for s in shards), len(tasks), skipped, resumed_from, written)
