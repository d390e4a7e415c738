"""Checkpoint files: written atomically, read with a clear error when they do not fit the run."""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or belongs to another model/configuration."""


def atomic_save(obj, path: str) -> None:
    """torch.save ``obj`` to a temporary file in the same folder, fsync, then os.replace onto ``path``.

    A crash or signal mid-write leaves the previous file at ``path`` intact.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a fastebm checkpoint dict. Raises CheckpointError if missing or not a fastebm checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint: expected a file at {path!r}, found none")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path!r}: could not be read by torch.load: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"checkpoint {path!r}: expected a fastebm checkpoint (keys 'model', 'config')")
    return ckpt


def rng_state() -> dict:
    """States of the torch (CPU and CUDA), numpy and Python generators, for checkpoints."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (exact resume)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
