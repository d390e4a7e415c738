"""Progress of a long loop on stderr, readable both on a terminal and in a redirected log.

On a terminal (``stream.isatty()``) it is a tqdm bar. Anywhere else (a log file, a pipe, a job scheduler's
capture) a bar's carriage returns would fill the file with redrawn lines, so it is one plain line at most
every ``every_s`` seconds, saying what is being done and how much is left::

    fastebm.eval: fid: Inception features (generated) 3000/10000 (30 %, 212 images/s, about 33 s left)

A loop that ends before the first line is due prints nothing. Usable by any loop of the package::

    for batch in progress(batches, total=len(batches), desc="fastebm.eval: acc: test images"):
        ...

    with Progress(n, "fastebm.eval: fid: SGLD chains", unit="chains") as p:
        for i in range(0, n, b):
            ...
            p.update(min(b, n - i))
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def is_terminal(stream) -> bool:
    """True when ``stream`` is an open terminal (False for files, pipes, closed or odd streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``: a human-readable span of time."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Counts work done out of ``total`` and reports it on ``stream``.

    Args:
        total: units of work in all (>= 0), or None when unknown (then no percentage or time left).
        desc: what is being done, printed first on each line (e.g. ``"fastebm.eval: fid: Inception features"``).
        stream: where to report; None: ``sys.stderr`` at the time of the call.
        every_s: seconds between two plain lines (> 0); the first comes after ``every_s``.
        unit: name of one unit of work, for the rate (``images``, ``chains``, ``it``).
        clock: seconds as a float, monotonic (tests pass a fake one).

    On a terminal: a tqdm bar (cleared when done). Elsewhere: no carriage returns, one line per report,
    and a last line with the total time once the loop ends, only when at least one line was printed.
    """

    def __init__(self, total: int | None, desc: str, stream: TextIO | None = None, every_s: float = 10.0,
                 unit: str = "it", clock: Callable[[], float] = time.monotonic):
        if not every_s > 0:
            raise ValueError(f"every_s: expected a number of seconds > 0, got {every_s}")
        self.total, self.desc, self.unit, self.every_s, self.clock = total, desc, unit, every_s, clock
        self.stream = sys.stderr if stream is None else stream
        self.n, self.lines = 0, 0
        self.t0 = clock()
        self.due = self.t0 + every_s
        self.bar = None
        if is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream, leave=False,
                            dynamic_ncols=True, mininterval=0.5)

    def update(self, n: int = 1) -> None:
        """Add ``n`` units of work done; print a line if one is due."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now >= self.due:
            self._line(self._status(now))
            self.due = now + self.every_s

    def close(self) -> None:
        """End the report: close the bar, or say the loop is done if a line was printed before."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines:
            total = f"/{self.total}" if self.total is not None else ""
            self._line(f"{self.n}{total} {self.unit}, done in {duration(self.clock() - self.t0)}")
            self.lines = 0

    def _status(self, now: float) -> str:
        elapsed = max(now - self.t0, 1e-9)
        rate = self.n / elapsed
        if self.total is None:
            return f"{self.n} ({rate:.3g} {self.unit}/s)"
        pct = 100 * self.n / self.total if self.total else 100
        left = f", about {duration((self.total - self.n) / rate)} left" if rate > 0 else ""
        return f"{self.n}/{self.total} ({pct:.0f} %, {rate:.3g} {self.unit}/s{left})"

    def _line(self, status: str) -> None:
        print(f"{self.desc} {status}", file=self.stream, flush=True)
        self.lines += 1

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", stream: TextIO | None = None,
             every_s: float = 10.0, unit: str = "it", clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """Yield the items of ``iterable`` unchanged while reporting :class:`Progress` (one unit per item).

    ``total`` defaults to ``len(iterable)`` where it has one; the other arguments are :class:`Progress`'s.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, stream, every_s, unit, clock) as p:
        for item in iterable:
            yield item
            p.update(1)


class TrainingProgress:
    """The training loop's progress on stderr: a tqdm bar on a terminal (loss, energies, accuracy beside it); in a
    redirected log, a first line after 5 s, then one every 10 s for the first minute, then every minute (the
    first comes early because the run's first checkpoint and TensorBoard precede the loop; bench/RESULTS.md,
    "The digits demo, whole runs"). ``update(n)`` takes the
    iteration reached (a rollback may go back); ``metrics(row)`` the last ``train`` row of metrics.jsonl."""

    def __init__(self, total: int, initial: int):
        self.total, self.n0, self.t0, self.due, self.last = total, initial, time.perf_counter(), 5.0, {}
        self.bar = None
        if is_terminal(sys.stderr):
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, mininterval=1.0)

    def metrics(self, last: dict) -> None:
        """Remember the last ``train`` row (keys ``loss``, ``e_pos``, ``e_neg``, ``acc``) for the next report."""
        self.last = last
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{last['loss']:.3g}", e_pos=f"{last['e_pos']:.3g}",
                                 e_neg=f"{last['e_neg']:.3g}", acc=f"{last['acc']:.2f}")

    def update(self, n: int) -> None:
        """Report iteration ``n`` reached (0 <= n <= total; lower than before after a rollback). No host sync."""
        if self.bar is not None:
            if n < self.bar.n:                                       # a rollback went back
                self.bar.n = n
                self.bar.refresh()
            else:
                self.bar.update(n - self.bar.n)
            return
        elapsed = time.perf_counter() - self.t0
        if elapsed < self.due or n >= self.total:
            return
        self.due = elapsed + (10.0 if elapsed < 60 else 60.0)
        rate = (n - self.n0) / elapsed
        left = f", about {duration((self.total - n) / rate)} left" if rate > 0 else ""
        loss = f"; loss {self.last['loss']:.3g}, acc {self.last['acc']:.2f}" if self.last else ""
        print(f"fastebm: iteration {n}/{self.total} ({rate:.2f} it/s{left}){loss}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the bar (on a terminal); the plain-line report needs no closing."""
        if self.bar is not None:
            self.bar.close()

