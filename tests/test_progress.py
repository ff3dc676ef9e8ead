"""The progress line: plain lines every 5% in logs, one redrawn line on a terminal."""

from __future__ import annotations

import io
import re

from sjc_core.runs.progress import Progress, format_seconds

LINE = re.compile(r"^fit \[ *(\d+)/100\] +(\d+)% loss 0\.5 \| \d+\.\d\d it/s \| ETA \d+:\d\d$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_plain_line_every_five_percent() -> None:
    stream = io.StringIO()
    bar = Progress(100, stream=stream, label="fit ")
    for step in range(1, 101):
        bar.update(step, "loss 0.5")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 21 and all(LINE.match(line) for line in lines), lines
    assert [int(LINE.match(line).group(1)) for line in lines] == [1, *range(5, 101, 5)]
    assert "\r" not in stream.getvalue() and "\033" not in stream.getvalue()


def test_a_terminal_gets_one_redrawn_line_that_ends_at_the_last_step() -> None:
    stream = Terminal()
    bar = Progress(1000, start=400, stream=stream, label="fit ")
    for step in range(401, 1001):
        bar.update(step, "loss 0.5")
    bar.close()
    text = stream.getvalue()
    draws = text.split("\r\033[K")[1:]
    assert text.startswith("\r\033[K") and text.endswith("\n") and text.count("\n") == 1
    assert 1 <= len(draws) < 600  # throttled to ten redraws a second
    assert draws[-1].startswith("fit [1000/1000] 100% loss 0.5 | ")


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (-3, 0, 59.9, 61, 3600, 3725)] == ["0:00", "0:00", "0:59", "1:01", "1:00:00",
                                                                           "1:02:05"]
