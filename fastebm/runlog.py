"""The run log: one writer for metrics.jsonl, TensorBoard and the sample grids of a run folder.

metrics.jsonl holds one JSON object per line, with a ``kind`` and the iteration ``iter`` it belongs to:
    train      {"epoch", "loss", "loss_gen", "loss_cls", "e_pos", "e_neg", "acc", "lr", "it_s", ...}
    eval       {"test_acc", "test_loss", "test_energy"}
    fid        {"epoch", "fid", "is_mean", "is_std", "n_fake", "n_real"}
    rollback   {"from_iter", "lr", "lr_scale", "rollbacks", "reason"}     (:mod:`fastebm.recovery`)
    fast_path  {"policy", <component>: "ok: ..." | "off: ..." | ..., "active"}   (:mod:`fastebm.fastpath`)
    stop       {"signal", "checkpoint"}                                     (:mod:`fastebm.stopping`)
Only rank 0 writes; the other ranks hold a RunLog that writes nothing.
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import torch

from .images import make_grid, save_png

METRICS = "metrics.jsonl"


class RunLog:
    """Appends records to ``<out>/metrics.jsonl`` (flushed per line), mirrors their numbers to TensorBoard as
    ``<kind>/<key>`` at step ``iter``, and writes PNG grids under ``<out>/samples/``.

    Args:
        out: the run folder (exists). write: False on ranks other than 0 (then every method is a no-op).
    """

    def __init__(self, out: str, write: bool = True):
        self.out, self.write = out, write
        self._file = self._tb = None

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
            self._tb = SummaryWriter(self.out)

    def __call__(self, record: dict) -> None:
        """Append ``record`` (a dict with ``kind`` and ``iter``; JSON-serializable values)."""
        if not self.write:
            return
        if self._file is None:
            self._file = open(os.path.join(self.out, METRICS), "a")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("kind", "iter") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{record['kind']}/{key}", value, record["iter"])

    def grid(self, name: str, images: torch.Tensor, step: int) -> str:
        """PNG grid (8 per row) of ``images`` (N, C, H, W) uint8 as ``samples/<name>.png`` (and TensorBoard
        image ``samples/<name up to its first _>``); returns the path (also on ranks that write nothing)."""
        path = os.path.join(self.out, "samples", f"{name}.png")
        if not self.write:
            return path
        grid = make_grid(images.cpu(), nrow=8)
        save_png(path, grid)
        if self._tb is not None:
            self._tb.add_image(f"samples/{name.split('_')[0]}", grid, step)
        return path

    def drop_rows_after(self, iteration: int) -> int:
        """Remove the rows logged for iterations after ``iteration`` (a resume re-runs them and logs them
        again), rewriting the file atomically. Returns how many rows were dropped."""
        path = os.path.join(self.out, METRICS)
        if not self.write or not os.path.isfile(path):
            return 0
        self.close_file()
        with open(path) as f:
            lines = f.readlines()
        keep = [line for line in lines if _iteration(line) <= iteration]
        if len(keep) < len(lines):
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, path)
        return len(lines) - len(keep)

    def close_file(self) -> None:
        """Close metrics.jsonl (the next record opens it again)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Close metrics.jsonl and TensorBoard."""
        self.close_file()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _iteration(line: str) -> int:
    try:
        return int(json.loads(line).get("iter", 0))
    except (ValueError, AttributeError):  # a line cut by a killed process: dropped with the replayed rows
        print(f"fastebm: warning: {METRICS}: dropping an unreadable line", file=sys.stderr)
        return sys.maxsize
