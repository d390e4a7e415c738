"""fastebm.io.progress: a bar on a terminal, a plain line at most every few seconds anywhere else."""
import io

import pytest

from fastebm.io.progress import Progress, duration, progress


class FakeClock:
    """Seconds that advance by ``step`` at every reading."""

    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_timed_plain_lines_without_carriage_returns():
    stream = io.StringIO()
    items = list(progress(range(20), desc="fastebm.eval: fid: Inception features", stream=stream, every_s=10,
                          unit="images", clock=FakeClock(4.0)))
    assert items == list(range(20))  # the items pass through unchanged
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    # 4 s per reading, a line at most every 10 s: about one line per 3 items over 20 items, plus the last one
    assert 4 <= len(lines) <= 8, lines
    assert all(line.startswith("fastebm.eval: fid: Inception features ") for line in lines)
    assert lines[0].startswith("fastebm.eval: fid: Inception features 3/20 (15 %") and "left)" in lines[0]
    assert lines[-1].endswith("20/20 images, done in 1 min 24 s"), lines[-1]


def test_a_short_loop_in_a_log_prints_nothing():
    stream = io.StringIO()
    with Progress(1000, "work", stream=stream, every_s=10, clock=FakeClock(0.001)) as p:
        for _ in range(100):
            p.update(10)
    assert stream.getvalue() == ""


def test_without_a_total_the_line_gives_the_count_and_the_rate():
    stream = io.StringIO()
    list(progress(iter(range(5)), desc="scan", stream=stream, every_s=1, clock=FakeClock(1.0)))
    assert stream.getvalue().splitlines()[0] == "scan 1 (1 it/s)"


def test_a_terminal_gets_a_bar():
    stream = Terminal()
    assert sum(progress(range(50), desc="chains", stream=stream, clock=FakeClock(100.0))) == sum(range(50))
    text = stream.getvalue()
    assert "\r" in text and "chains" in text and "/50" in text  # tqdm redraws in place
    assert "done in" not in text  # no plain lines on a terminal


def test_stderr_is_the_default_stream(capsys):
    list(progress(range(3), desc="on stderr", every_s=1, clock=FakeClock(5.0)))
    captured = capsys.readouterr()
    assert captured.out == "" and "on stderr 1/3" in captured.err


def test_bad_interval_and_durations():
    with pytest.raises(ValueError, match="every_s: expected a number of seconds > 0, got 0"):
        Progress(10, "x", every_s=0)
    assert [duration(s) for s in (0.4, 59, 61, 3600 * 2 + 7 * 60)] == ["0 s", "59 s", "1 min 01 s", "2 h 07 min"]
