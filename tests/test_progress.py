"""Progress output: a bar redrawn in place on a terminal, a few whole lines in a log."""

from __future__ import annotations

import io

from fetalclip.progress import LineProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_output_is_a_few_whole_lines_without_carriage_returns():
    log = io.StringIO()
    for _ in progress_bar(range(1000), total=1000, desc="encode", file=log, leave=False):
        pass
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 2 <= len(lines) <= 12  # start, every tenth, the end: not one per item
    assert all(line.startswith("encode") for line in lines)
    assert "1000/1000" in lines[-1] and "0/1000" in lines[0]


def test_a_bar_closed_early_or_without_total_still_ends_with_its_state():
    log = io.StringIO()
    bar = progress_bar(total=10, desc="probe", file=log)
    bar.update(3)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[-1].startswith("probe") and "3/10" in lines[-1]
    assert sum("3/10" in line for line in lines) == 1  # the end state once, not again by tqdm's own close
    log = io.StringIO()
    with progress_bar(desc="steps", file=log) as bar:
        bar.update(5)
    assert "5" in log.getvalue().splitlines()[-1]


def test_terminal_keeps_the_live_bar_and_disabled_writes_nothing():
    terminal = _Terminal()
    bar = progress_bar(range(3), file=terminal)
    assert not isinstance(bar, LineProgress)
    list(bar)
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    list(progress_bar(range(3), file=quiet, disable=True))
    assert quiet.getvalue() == ""
