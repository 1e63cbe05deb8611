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

from tqdm.auto import tqdm

LINE_STEP = 0.1  # share of the total between two plain lines
LINE_SECONDS = 60.0  # at most this long without a line, for bars without a total


class LineProgress(tqdm):
    """tqdm that writes whole lines, a few per bar, instead of redrawing one line in place."""

    def __init__(self, *args, **kwargs):
        # tqdm's own writes (redraws, the newline or carriage return of close) go nowhere; ``display`` writes
        # the lines to the real stream.
        self._out = kwargs.get("file") or sys.stderr
        kwargs["file"] = _Discard()
        self._last_line_share = -1.0
        self._last_line_time = 0.0
        self._final_written = False
        self._closing = False
        kwargs.setdefault("mininterval", 0.0)
        kwargs["dynamic_ncols"] = False
        kwargs.setdefault("ncols", 100)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if msg == "" or self.disable:  # tqdm clears the line on close(leave=False): nothing to clear here
            return True
        now = time.monotonic()
        done = bool(self.total) and self.n >= self.total
        share = self.n / self.total if self.total else 0.0
        due = (
            self._last_line_share < 0
            or (self.total and share - self._last_line_share >= LINE_STEP - 1e-12)
            or (not self.total and now - self._last_line_time >= LINE_SECONDS)
            or (done and not self._final_written)
            or self._closing
        )
        if not due:
            return True
        self._last_line_share, self._last_line_time = share, now
        self._final_written = self._final_written or done
        self._out.write((msg if msg is not None else self.__str__()).replace("\r", "") + "\n")
        self._out.flush()
        return True

    def close(self):
        if not self.disable and not self._final_written and self._last_line_share >= 0:
            self._closing = True  # the end state of a bar that stopped early, or had no total
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
