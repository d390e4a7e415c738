"""Stopping on a signal without losing work: SIGTERM (SLURM, Kubernetes, ``docker stop``, torchrun), SIGINT
(Ctrl-C) and SIGUSR1 (SLURM's ``--signal`` warning) make a run finish its current iteration, write its
checkpoint atomically and exit with ``128 + signal number``: 143, 130, 138.

A second signal while the checkpoint is being written is noted and waited out (the write is atomic either
way); a second signal at any other moment stops at once with the last checkpoint as it was.
"""
from __future__ import annotations

import signal
import sys
import threading

SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, n))


class Stopped(Exception):
    """The run stopped on a signal after writing its checkpoint.

    Attributes:
        signum: the signal (e.g. ``signal.SIGTERM``); ``status`` = 128 + signum, the exit status.
        checkpoint: the checkpoint written; iteration: the iteration it holds.
    """

    def __init__(self, signum: int, checkpoint: str, iteration: int):
        self.signum, self.checkpoint, self.iteration = int(signum), checkpoint, iteration
        self.status = 128 + self.signum
        super().__init__(f"stopped by {signal.Signals(self.signum).name} at iteration {iteration}; "
                         f"checkpoint {checkpoint}")


class GracefulStop:
    """Context manager that turns SIGTERM / SIGINT / SIGUSR1 into a request the training loop reads.

    ``requested`` is the first signal's number (None until one arrives). The loop calls :meth:`saving` around
    its checkpoint write; a second signal inside it only prints that the write finishes first, a second
    signal outside it raises KeyboardInterrupt (SIGINT) or SystemExit(128 + signum) at once. Handlers are
    installed only in the main thread (Python allows no other) and the previous ones are restored on exit.
    """

    def __init__(self, stream=None):
        self.requested: int | None = None
        self._saving = False
        self._previous: dict[int, object] = {}
        self._stream = stream  # None: sys.stderr as it is when a signal arrives

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = signum
            print(f"fastebm: {name}: stopping after this iteration and writing the checkpoint (signal again to "
                  f"stop at once, keeping the last checkpoint)", file=self._stream or sys.stderr, flush=True)
        elif self._saving:
            print(f"fastebm: {name}: the checkpoint is being written; exiting when it is complete",
                  file=self._stream or sys.stderr, flush=True)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    def saving(self) -> _Saving:
        """Context in which a second signal waits for the checkpoint write to finish."""
        return _Saving(self)


class _Saving:
    def __init__(self, stop: GracefulStop):
        self.stop = stop

    def __enter__(self):
        self.stop._saving = True

    def __exit__(self, *exc):
        self.stop._saving = False
