"""Bounded prefetching of batches: load the next batch in threads while the caller encodes this one.

Encoding is the expensive step and decoding + preprocessing (PIL, numpy) mostly releases the GIL, so a
small thread pool hides most of the input cost. At most two batches are loaded or in flight at once,
which bounds memory for any number of inputs. ``load`` must not raise for a bad input: it returns the
exception instead, so the caller decides whether to stop or to skip and count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


def prefetched_batches(
    items: Sequence[Item], load: Callable[[Item], Loaded], batch_size: int, num_threads: int = 2
) -> Iterator[tuple[list[Item], list[Loaded]]]:
    """Yield ``(batch, [load(item) for item in batch])`` in order, loading one batch ahead."""
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        pending = [pool.submit(load, item) for item in batches[0]]
        for number, batch in enumerate(batches):
            current = pending
            pending = [pool.submit(load, item) for item in batches[number + 1]] if number + 1 < len(batches) else []
            yield batch, [future.result() for future in current]
