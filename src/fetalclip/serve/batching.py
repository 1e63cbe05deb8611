"""Dynamic micro-batching: concurrent requests share one model forward, on one worker thread.

The choice (the one Triton's dynamic batcher and TorchServe make): a request does not run the model itself; it
puts a job on a bounded queue and awaits its future. One collector task on the event loop takes the first
waiting job, then keeps gathering jobs for at most ``max_wait_ms`` or until ``max_batch`` are in hand, and hands
the batch to a single worker thread. While that thread runs the model, new requests queue up, so under load
batches fill by themselves and the wait costs nothing; with one client the added latency is at most
``max_wait_ms``.

- Jobs have a ``kind`` (``predict``, ``embed``, ``text``, ...); a batch is split by kind and each group goes to
  its handler as one call. A handler returns one result per job, or an exception in a job's place, so one bad
  input fails its own request only.
- One worker thread: torch already uses every core inside one forward, and a single thread keeps the model's
  caches (the age text banks) free of races.
- The queue is bounded: ``submit`` raises ``Overloaded`` when ``max_queue`` jobs wait, and the service answers
  503 with ``Retry-After`` instead of growing latency and memory without limit.
- ``close()`` stops new work and waits until every queued and running job has its answer (graceful shutdown).
- A job whose caller gave up (timeout, disconnect) before it was taken is dropped, not computed.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

Handler = Callable[[Sequence[Any]], Sequence[Any]]


class Overloaded(Exception):
    """The queue is full (or the batcher is shutting down): try again later."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class _Job:
    kind: str
    payload: Any
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Gather jobs into batches and run them on one worker thread; see the module docstring."""

    def __init__(self, handlers: Mapping[str, Handler], max_batch: int = 16, max_wait_ms: float = 10.0,
                 max_queue: int = 256, on_batch: Callable[[str, int], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.handlers = dict(handlers)
        self.max_batch, self.max_wait_s, self.max_queue = int(max_batch), float(max_wait_ms) / 1000.0, int(max_queue)
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetalclip-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._collector: asyncio.Task | None = None
        self._closing = False
        self.running = 0  # jobs handed to the worker and not answered yet
        self.batches = 0

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start collecting on the running event loop (call from the app's startup)."""
        self._queue = asyncio.Queue()
        self._closing = False
        self._collector = asyncio.get_running_loop().create_task(self._collect(), name="fetalclip-batcher")

    async def close(self) -> None:
        """Refuse new jobs, finish every queued and running one, then stop the worker thread."""
        self._closing = True
        if self._collector is not None and self._queue is not None:
            await self._queue.join()
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
            self._collector = None
        self.executor.shutdown(wait=True)

    async def run_exclusive(self, function: Callable[[], Any]) -> Any:
        """``function()`` on the worker thread, outside any batch (warm-up, one-off work such as a CAM)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function)

    # -- requests -----------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Jobs waiting to be taken into a batch."""
        return 0 if self._queue is None else self._queue.qsize()

    def submit(self, kind: str, payload: Any) -> asyncio.Future:
        """Queue one job; its future holds the result (or raises the handler's exception for it)."""
        if kind not in self.handlers:
            raise KeyError(f"no handler for jobs of kind {kind!r}")
        if self._queue is None or self._closing:
            raise Overloaded("the service is shutting down", retry_after_s=5)
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests are already waiting (limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(kind, payload, future))
        return future

    # -- the collector ------------------------------------------------------------------------------------
    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(self._queue.get_nowait() if remaining <= 0 else
                                 await asyncio.wait_for(self._queue.get(), remaining))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            try:
                await self._run(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _run(self, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.future.done()]  # callers that gave up are not computed
        groups: dict[str, list[_Job]] = {}
        for job in live:
            groups.setdefault(job.kind, []).append(job)
        loop = asyncio.get_running_loop()
        for kind, jobs in groups.items():
            self.running += len(jobs)
            try:
                results = await loop.run_in_executor(self.executor, self._call, kind, [job.payload for job in jobs])
            finally:
                self.running -= len(jobs)
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(kind, len(jobs))
            for job, result in zip(jobs, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _call(self, kind: str, payloads: list[Any]) -> list[Any]:
        """The handler on the worker thread; whatever it raises becomes every job's answer, never the thread's death."""
        try:
            results = list(self.handlers[kind](payloads))
        except Exception as exc:  # noqa: BLE001 - handed to each caller, which turns it into an HTTP answer
            return [exc] * len(payloads)
        if len(results) != len(payloads):
            error = RuntimeError(f"handler {kind!r} gave {len(results)} answers for {len(payloads)} jobs")
            return [error] * len(payloads)
        return results


__all__ = ["MicroBatcher", "Overloaded"]
