"""Sharded, resumable runs whose per-chunk output is JSON: ``torchrun -m fetalclip predict`` over an archive.

The same layout as ``fetalclip embed``'s parts (``tasks.embed``): the inputs are cut into chunks of
``chunk_size``, rank r of N computes every N-th chunk, each chunk is written atomically as ``part-NNNNNN.json``
(so memory stays that of one chunk and a rerun skips what is written), ``run.json`` records what the parts depend
on (another run's parts are refused), and the join reads the parts one at a time, in input order. A chunk's JSON
is a mapping of lists (answers, table rows, skipped files); the join concatenates each list across chunks, so one
process and N processes give the same document.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .embed import INDEX_FILE, claim_parts_folder, complete_chunks, write_missing_parts


def json_part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.json"


def run_json_parts(items: Sequence[Any], folder: str | os.PathLike, compute: Callable[[Sequence[Any]], Mapping[str, list]],
                   record: Mapping[str, Any], *, rank: int = 0, world_size: int = 1, chunk_size: int = 256) -> list[int]:
    """``compute(chunk_items)`` for this rank's chunks not yet in ``folder``; returns the chunks it computed."""
    from ..io import write_json_atomic

    folder = Path(folder)
    claim_parts_folder(folder, {**record, "chunk_size": chunk_size, "items": len(items)})
    return write_missing_parts(folder, len(items), chunk_size, rank, world_size, json_part_name,
                               lambda target, positions: write_json_atomic(target, dict(compute(items[positions.start : positions.stop]))))


def iter_json_parts(folder: str | os.PathLike) -> Iterator[dict[str, list]]:
    """The parts of a complete folder in input order, one at a time."""
    folder = Path(folder)
    for chunk in range(complete_chunks(folder, "items", json_part_name, "a sharded run")):
        yield json.loads((folder / json_part_name(chunk)).read_text())


def join_json_parts(folder: str | os.PathLike) -> dict[str, list]:
    """Every part's lists concatenated in input order (what one process computes), with ``index.json`` beside."""
    from ..io import write_json_atomic

    joined: dict[str, list] = {}
    index = []
    for chunk, part in enumerate(iter_json_parts(folder)):
        index.append({"file": json_part_name(chunk), **{key: len(values) for key, values in part.items()}})
        for key, values in part.items():
            joined.setdefault(key, []).extend(values)
    write_json_atomic(Path(folder) / INDEX_FILE, {"parts": index})
    return joined


__all__ = ["iter_json_parts", "join_json_parts", "json_part_name", "run_json_parts"]
