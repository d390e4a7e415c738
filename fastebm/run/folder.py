"""The run folder: where a run's files go (``runs/<dataset>-<model>-k<K>`` by default) and the lock that
lets one run at a time write into it.

Layout (written by rank 0):
    config.json     the resolved configuration
    metrics.jsonl   one JSON object per line (:mod:`fastebm.run.log`)
    samples/        PNG grids of replay-buffer samples, p0_mean.png / p0_samples.png (the paper's Fig. 7),
                    diverged_iter_*.png at a divergence
    p0.pt           the fitted informative initialization (a cache, reused by later runs)
    ckpt.pt         the latest checkpoint, written atomically; what ``--resume`` and a rollback read
    best_fid.pt, best_acc.pt, ckpt_eNNN.pt   best-FID / best-accuracy / per-epoch copies
    events.out.tfevents.*  TensorBoard
    .lock           held (``flock``) by the run writing here; released when its process ends
"""
from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # not POSIX: no lock, as before
    fcntl = None

LOCK_NAME = ".lock"


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder."""


def run_folder_base(dataset: str, model: str, k: int) -> str:
    """``runs/<dataset>-<model>-k<K>``: the folder of a run given no ``out`` (and of ``resume="auto"``)."""
    return os.path.join("runs", f"{dataset}-{model}-k{k}")


def default_run_folder(dataset: str, model: str, k: int) -> str:
    """:func:`run_folder_base`, or the first ``...-2``, ``...-3`` that holds no checkpoint and no live run,
    so that a repeated command starts a new run and never touches an earlier one."""
    base = run_folder_base(dataset, model, k)
    out, i = base, 1
    while os.path.isfile(os.path.join(out, "ckpt.pt")) or holder(out) is not None:
        i += 1
        out = f"{base}-{i}"
    return out


def holder(folder: str) -> int | None:
    """PID written by the live process that holds ``folder``'s lock, 0 if unknown; None when nobody holds it."""
    path = os.path.join(folder, LOCK_NAME)
    if fcntl is None or not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = f.read().strip()
            return int(text) if text.isdigit() else 0
    return None


class RunLock:
    """An exclusive ``flock`` on ``<folder>/.lock`` for this process's lifetime (the kernel drops it when the
    process ends, however it ends, so a killed run never leaves the folder locked).

    Raises:
        RunFolderBusy: another process holds it (message names the folder and that process's PID).
        ValueError: the folder cannot be made or written.
    """

    def __init__(self, folder: str):
        self.folder, self._file = folder, None
        if fcntl is None:
            return
        try:
            os.makedirs(folder, exist_ok=True)
            f = open(os.path.join(folder, LOCK_NAME), "a+")
        except OSError as e:
            raise ValueError(f"--out {folder}: cannot make the run folder there ({e.strerror})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip()
            f.close()
            raise RunFolderBusy(f"run folder {folder!r} is in use by another run (pid {pid or 'unknown'}); "
                                f"wait for it to end or choose another folder") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        """Drop the lock now (it also goes with the process)."""
        if self._file is not None:
            self._file.close()
            self._file = None
