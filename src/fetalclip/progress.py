"""Progress bars that suit where the output goes: a live tqdm bar on a terminal, plain lines in a log.

Every long loop of the library draws its bar through ``progress_bar``. On a terminal that is tqdm as usual. When
the stream is not a terminal (a CI log, ``make demo > log``), tqdm's carriage-return redraws would pile up into
thousands of fragments, so the bar instead writes one finished line when it starts, then one each time it
passes another tenth of its total (or a minute has gone by, for bars without a total), and one at the end.
"""

from __future__ import annotations

import io
import sys
import time

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm

LINE_STEP = 0.1  # share of the total between two plain lines
LINE_SECONDS = 60.0  # at most this long without a line, for bars without a total


class LineProgress(text_tqdm):  # the text bar even in a notebook: it only writes lines
    """tqdm that writes whole lines, a few per bar, instead of redrawing one line in place."""

    def __init__(self, *args, **kwargs):
        # tqdm's own writes (redraws, the newline or carriage return of close) go nowhere; ``display`` writes
        # the lines to the real stream.
        self._out = kwargs.get("file") or sys.stderr
        kwargs["file"] = _Discard()
        self._line_n: float | None = None  # the count shown by the last line written (None: none yet)
        self._line_time = 0.0
        self._closing = False
        kwargs.setdefault("mininterval", 0.0)
        kwargs["dynamic_ncols"] = False
        kwargs.setdefault("ncols", 100)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if msg == "" or self.disable:  # tqdm clears the line on close(leave=False): nothing to clear here
            return True
        now = time.monotonic()
        if self._line_n is None:
            due = True
        elif self.n == self._line_n:
            due = False  # the last line already shows this state
        elif self._closing or (self.total and self.n >= self.total):
            due = True  # the end state
        elif self.total:
            due = (self.n - self._line_n) / self.total >= LINE_STEP - 1e-12
        else:
            due = now - self._line_time >= LINE_SECONDS
        if not due:
            return True
        self._line_n, self._line_time = self.n, now
        self._out.write((msg if msg is not None else self.__str__()).replace("\r", "") + "\n")
        self._out.flush()
        return True

    def close(self):
        if not self.disable and self._line_n is not None:
            self._closing = True  # the end state of a bar that stopped early or had no total, unless shown
            self.display()
        super().close()


class _Discard(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar (same arguments) that writes plain lines when its stream is not a terminal."""
    stream = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or _is_terminal(stream):
        return tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)


__all__ = ["LineProgress", "progress_bar"]
