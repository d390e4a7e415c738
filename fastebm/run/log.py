"""The run log: one writer for metrics.jsonl, TensorBoard and the sample grids of a run folder.

metrics.jsonl holds one JSON object per line, with a ``kind`` and the iteration ``iter`` it belongs to:
    train      {"epoch", "loss", "loss_gen", "loss_cls", "e_pos", "e_neg", "acc", "lr", "it_s", ...}
    eval       {"test_acc", "test_loss", "test_energy"}
    fid        {"epoch", "fid", "is_mean", "is_std", "n_fake", "n_real"}
    rollback   {"from_iter", "lr", "lr_scale", "rollbacks", "reason"}     (:mod:`fastebm.run.recovery`)
    fast_path  {"policy", <component>: "ok (margin Mx): ..." | "off: ..." | ..., "active"}
                                                            (:mod:`fastebm.fastpath.fastpath`)
    stop       {"signal", "checkpoint"}                                     (:mod:`fastebm.run.stopping`)
Only rank 0 writes; the other ranks hold a RunLog that writes nothing.

A write that fails (a full disk between two checkpoints) is one :class:`RunLogError` line naming the file, the
cause and the free space, as a checkpoint that cannot be written; the rows written before it stay whole (a row cut
by the failure is taken back), and every file of the log is closed without a second error.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import warnings
from typing import NoReturn

import torch

from ..data.imagefiles import make_grid, save_png
from ..io.checkpoint import CheckpointError, write_failure

METRICS = "metrics.jsonl"


class RunLogError(CheckpointError):
    """A file of the run log (metrics.jsonl, TensorBoard's event file, a sample grid, config.json) could not be
    written, e.g. on a full disk: the run stops as when a checkpoint cannot be written, its last checkpoint
    intact. The message is one line: the file, the cause, the free space."""


def _quiet_tensorboard_thread_errors() -> None:
    """TensorBoard writes its event file in a thread of its own; a write that fails there would print that
    thread's traceback, and then fail the next call in the run's thread, where :class:`RunLog` says it in one
    line. This leaves out the thread's own report (OSError in TensorBoard's writer thread only)."""
    previous = threading.excepthook
    if getattr(previous, "fastebm_quiet", False):
        return

    def hook(args):
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook.fastebm_quiet = True
    threading.excepthook = hook


class RunLog:
    """Appends records to ``<out>/metrics.jsonl`` (written through per line), mirrors their numbers to TensorBoard
    as ``<kind>/<key>`` at step ``iter`` (flushed per record), and writes PNG grids under ``<out>/samples/``.

    Args:
        out: the run folder (exists). write: False on ranks other than 0 (then every method is a no-op).

    Every writing method raises :class:`RunLogError` when a file cannot be written (module docstring).
    """

    def __init__(self, out: str, write: bool = True):
        self.out, self.write = out, write
        self._file = self._tb = None
        self.failed: str | None = None  # the file whose write failed; nothing is written after it

    def start_tensorboard(self) -> None:
        """Also write TensorBoard events from now on (a warning, and none, when tensorboard is missing)."""
        if not self.write or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # a dependency, but a source checkout (e.g. the GPU check) may lack it
            warnings.warn("tensorboard is not installed: no TensorBoard event files (pip install "
                          "tensorboard, or --no-tensorboard); metrics.jsonl has every number",
                          UserWarning, stacklevel=2)
        else:
            _quiet_tensorboard_thread_errors()
            with self.guard(os.path.join(self.out, "events.out.tfevents.*")):
                self._tb = SummaryWriter(self.out)

    def __call__(self, record: dict) -> None:
        """Append ``record`` (a dict with ``kind`` and ``iter``; JSON-serializable values)."""
        if not self.write:
            return
        path, data, start = os.path.join(self.out, METRICS), (json.dumps(record) + "\n").encode(), None
        try:
            if self._file is None:
                self._file = open(path, "ab", buffering=0)  # unbuffered: nothing left to flush at close
            start = self._file.tell()
            view = memoryview(data)
            while view:
                view = view[self._file.write(view):]
        except OSError as e:
            if start is not None:
                with contextlib.suppress(OSError):
                    os.truncate(path, start)  # no half row: the rows before stay a valid log
            self._fail(path, e, "the rows logged before it are kept")
        if self._tb is not None:
            with self.guard(self._event_file()):
                for key, value in record.items():
                    if key not in ("kind", "iter") and isinstance(value, (int, float)):
                        self._tb.add_scalar(f"{record['kind']}/{key}", value, record["iter"])
                self._tb.flush()  # a failed write in TensorBoard's thread surfaces here, with this record

    def grid(self, name: str, images: torch.Tensor, step: int) -> str:
        """PNG grid (8 per row) of ``images`` (N, C, H, W) uint8 as ``samples/<name>.png`` (and TensorBoard
        image ``samples/<name up to its first _>``); returns the path (also on ranks that write nothing)."""
        path = os.path.join(self.out, "samples", f"{name}.png")
        if not self.write:
            return path
        grid = make_grid(images.cpu(), nrow=8)
        try:
            save_png(path, grid)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(path)  # a cut PNG is no picture
            self._fail(path, e)
        if self._tb is not None:
            with self.guard(self._event_file()):
                self._tb.add_image(f"samples/{name.split('_')[0]}", grid, step)
                self._tb.flush()
        return path

    def write_text(self, name: str, text: str) -> None:
        """Write ``<out>/<name>`` (config.json) whole."""
        if self.write:
            path = os.path.join(self.out, name)
            with self.guard(path), open(path, "w") as f:
                f.write(text)

    @contextlib.contextmanager
    def guard(self, path: str):
        """Turn an OSError of the block (writing ``path``) into this log's :class:`RunLogError`."""
        try:
            yield
        except OSError as e:
            self._fail(path, e)

    def drop_rows_after(self, iteration: int) -> int:
        """Remove the rows logged for iterations after ``iteration`` (a resume re-runs them and logs them
        again), rewriting the file atomically (unchanged when that fails). Returns how many rows were dropped."""
        path = os.path.join(self.out, METRICS)
        if not self.write or not os.path.isfile(path):
            return 0
        self.close_file()
        with open(path) as f:
            lines = f.readlines()
        keep = [line for line in lines if _iteration(line) <= iteration]
        if len(keep) < len(lines):
            tmp = f"{path}.tmp-{os.getpid()}"
            try:
                with open(tmp, "w") as f:
                    f.writelines(keep)
                os.replace(tmp, path)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise RunLogError(f"{write_failure(path, e)}; it is unchanged") from None
        return len(lines) - len(keep)

    def close_file(self) -> None:
        """Close metrics.jsonl (the next record opens it again)."""
        if self._file is not None:
            f, self._file = self._file, None
            f.close()

    def close(self) -> None:
        """Close metrics.jsonl and TensorBoard (a failure here, after none before, is a :class:`RunLogError`)."""
        self.close_file()
        if self._tb is not None:
            tb, self._tb = self._tb, None
            if self.failed is not None:
                with contextlib.suppress(OSError):
                    tb.close()
            else:
                with self.guard(self._event_file(tb)):
                    tb.close()

    def _event_file(self, tb=None) -> str:
        """The path of TensorBoard's event file (its writer's, where it says it; else the pattern)."""
        writer = getattr(getattr(tb or self._tb, "file_writer", None), "event_writer", None)
        return getattr(writer, "_file_name", None) or os.path.join(self.out, "events.out.tfevents.*")

    def _fail(self, path: str, e: OSError, kept: str = "") -> NoReturn:
        """Close every file of the log without a further error, and raise the one line of ``e`` writing ``path``."""
        self.failed = path
        self.close_file()
        if self._tb is not None:
            tb, self._tb = self._tb, None
            with contextlib.suppress(OSError):
                tb.close()
        raise RunLogError(write_failure(path, e) + (f"; {kept}" if kept else "")) from None


def _iteration(line: str) -> int:
    try:
        return int(json.loads(line).get("iter", 0))
    except (ValueError, AttributeError):  # a line cut by a killed process: dropped with the replayed rows
        print(f"fastebm: warning: {METRICS}: dropping an unreadable line", file=sys.stderr)
        return sys.maxsize
