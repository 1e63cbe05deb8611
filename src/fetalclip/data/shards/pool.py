"""Results of a function over tasks, in task order, from forked worker processes that end with the run.

Packing decodes, cleans and encodes in workers and writes in input order. The workers end however the run
ends (an error, Ctrl-C, SIGTERM, the consumer stopping early, or the parent killed outright).

Ctrl-C and SIGTERM are noted by a handler and acted on by the result loop (within ``_STOP_POLL_SECONDS``),
never raised from the handler itself: Python runs a handler wherever the main thread happens to be, and an
exception raised inside a fork hook or a finaliser is printed and dropped, so a raising handler sometimes lets
the run carry on as if nothing was asked. A worker ignores Ctrl-C (it reaches the whole process group; the
parent decides) and keeps SIGTERM's default, so terminating it works.

A parent killed outright (SIGKILL, the OOM killer) cannot clean up, and a forked worker holds copies of the
pool's pipes, so it never sees them close: left alone it would wait for work forever. So each worker asks the
kernel to kill it when its parent dies (Linux prctl PR_SET_PDEATHSIG) or, where that is not available,
watches its parent's id from a thread.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from itertools import islice
from typing import Any, Callable, Iterator, Sequence

_STOP_POLL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_SECONDS = 0.5


def ordered_results(function: Callable[[Any], Any], tasks: Sequence[Any], workers: int) -> Iterator[Any]:
    """``function(task)`` for each task in order, at most a small window of tasks ahead.

    Workers are forked, so they inherit whatever ``function`` reads from module state (datasets, caption
    functions, even lambdas) without pickling; without fork, or with ``workers <= 1``, this process works.
    """
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for task in tasks:
            yield function(task)
        return
    context = multiprocessing.get_context("fork")
    with _stop_requests() as stop:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_start,
                                   initargs=(os.getpid(),))
        yield from _pool_results(pool, function, tasks, workers, stop)
    _raise_if_stopped(stop)  # a signal that came during the pool's final shutdown


def _pool_results(pool: ProcessPoolExecutor, function: Callable[[Any], Any], tasks: Sequence[Any], workers: int,
                  stop: dict[str, int | None]) -> Iterator[Any]:
    try:
        pending: deque = deque()
        iterator = iter(tasks)
        for task in islice(iterator, workers * 8):
            pending.append(pool.submit(function, task))
        while pending:
            result = _result(pending.popleft(), stop)
            for task in islice(iterator, 1):
                pending.append(pool.submit(function, task))
            yield result
    except BaseException:
        # An error, Ctrl-C, SIGTERM, or the consumer stopping early: the queued work is of no use, so stop the
        # workers now instead of letting shutdown wait for every queued input.
        _terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(future: Any, stop: dict[str, int | None]) -> Any:
    while True:
        _raise_if_stopped(stop)
        try:
            return future.result(timeout=_STOP_POLL_SECONDS)
        except TimeoutError:
            continue


@contextmanager
def _stop_requests() -> Iterator[dict[str, int | None]]:
    """While a pool runs, note SIGINT and SIGTERM in the yielded dict (``"signal"``) instead of acting at once.

    Only signals whose handler is still Python's default are taken over (an application's own handler is left
    alone), only from the main thread (the one place handlers can be set), and the defaults come back after.
    """
    stop: dict[str, int | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def note(signum: int, frame: Any) -> None:
        stop["signal"] = signum

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    replaced = [signum for signum, default in defaults.items() if signal.getsignal(signum) is default]
    for signum in replaced:
        signal.signal(signum, note)
    try:
        yield stop
    finally:
        for signum in replaced:
            signal.signal(signum, defaults[signum])


def _raise_if_stopped(stop: dict[str, int | None]) -> None:
    signum = stop["signal"]
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if signum is not None:
        raise SystemExit(128 + signum)  # the shell's status for "ended by this signal"


def _worker_start(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not _kill_me_with_parent():
        threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
    if os.getppid() != parent:  # the parent died before either guard was in place
        os._exit(1)


def _kill_me_with_parent() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    terminate = getattr(pool, "terminate_workers", None)  # public from Python 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()
