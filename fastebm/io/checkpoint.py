"""Checkpoint files: written atomically, read with a clear error when they do not fit the run (what a training
run puts in them: :mod:`fastebm.run.state`)."""
from __future__ import annotations

import glob
import os
import random
import re
import shutil
import tempfile

import numpy as np
import torch

TMP_PREFIX = ".tmp-"  # temporary files of atomic_save: .tmp-<pid>-<random>.pt beside the target


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or belongs to another model/configuration."""


def _umask() -> int:
    """The process umask, read without changing it (/proc/self/status on Linux ≥ 4.7; else set and restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(obj, path: str) -> None:
    """torch.save ``obj`` to a temporary file in the same folder, fsync, then os.replace onto ``path``.

    A crash or signal mid-write leaves the previous file at ``path`` intact (and a ``.tmp-<pid>-*.pt``
    file that :func:`remove_stale_temporaries` removes at the next start). File mode: an
    existing file's mode is kept; a new file gets 0666 minus the umask (0644 under umask 022), as
    ``open()`` would give — not the 0600 of ``tempfile.mkstemp``.

    Raises:
        CheckpointError: the file could not be written (full disk, no permission, ...): one line naming
            ``path``, the cause and the free space; the temporary file is removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=".pt")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)):  # e.g. a full disk: torch says "[enforce fail at ...]"
            raise CheckpointError(f"{write_failure(path, e)}; the previous file is unchanged") from None
        raise


def write_failure(path: str, e: BaseException) -> str:
    """The one line of a file of the run that could not be written: ``cannot write '<path>': <cause>, <N> MiB
    free there`` (the same for a checkpoint and for the run log)."""
    return f"cannot write {path!r}: {_cause(e)}, {_free(os.path.dirname(os.path.abspath(path)))} free there"


def _cause(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _free(folder: str) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown space"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the ``.tmp-*`` files that a save killed mid-write left in ``folder``; return their paths.

    A temporary file whose name carries the id of a live process other than this one (a save in
    progress elsewhere) is kept; files without a process id (older versions) are removed.
    """
    removed = []
    for p in glob.glob(os.path.join(glob.escape(folder), TMP_PREFIX + "*")):
        m = re.match(re.escape(TMP_PREFIX) + r"(\d+)-", os.path.basename(p))
        if m and int(m.group(1)) != os.getpid() and _alive(int(m.group(1))):
            continue
        try:
            os.remove(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def _numpy_array_globals() -> list:
    """What a NumPy array in a pickle needs (checkpoints of fastebm < 0.2 held NumPy's generator state as one):
    array reconstruction only, which runs no other code."""
    core = getattr(np, "_core", None) or np.core
    names = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    names += [getattr(np.dtypes, n) for n in ("UInt32DType",) if hasattr(np, "dtypes")]
    return names


def safe_load(path: str, map_location="cpu"):
    """``torch.load`` with ``weights_only=True``: tensors and plain values (dicts, lists, numbers, strings)
    only, so a file from a stranger cannot run code; NumPy arrays of older checkpoints are allowed. Raises
    what torch.load raises (the callers turn it into their one-line error)."""
    with torch.serialization.safe_globals(_numpy_array_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_error(e: Exception) -> str:
    """The reason in a torch.load error, in one line: for a refused object, what it would have called (not
    torch's advice to load with weights_only=False, which would run it)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    refused = [line for line in lines if "GLOBAL" in line]
    return (refused[0] if refused else (lines[0] if lines else type(e).__name__))[:300]


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a fastebm checkpoint dict (:func:`safe_load`: no code in it runs). Raises CheckpointError if
    missing, unreadable, holding anything but tensors and plain values, or not a fastebm checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint: expected a file at {path!r}, found none")
    try:
        ckpt = safe_load(path, map_location)
    except Exception as e:  # noqa: BLE001
        if "GLOBAL" in str(e):  # an object that would run code when loaded
            raise CheckpointError(f"checkpoint {path!r}: refused, it could not be read as tensors and plain values "
                                  f"(torch.load weights_only=True): {load_error(e)}") from None
        raise CheckpointError(f"checkpoint {path!r}: truncated or not a torch file ({os.path.getsize(path)} bytes: "
                              f"{load_error(e).split('. ')[0]}); an earlier copy beside it (ckpt_eNNN.pt, best_*.pt) "
                              f"may be whole") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"checkpoint {path!r}: expected a fastebm checkpoint (keys 'model', 'config')")
    return ckpt


def load_model_state(model: torch.nn.Module, ckpt: dict, path: str) -> None:
    """Copy a checkpoint's weights into ``model`` in place: the one checkpoint → model step, used to resume
    (:meth:`Trainer.load_checkpoint <fastebm.run.trainer.Trainer.load_checkpoint>`) and to evaluate
    (:func:`fastebm.eval.load_run`). ``ckpt["model"]`` is the bare module's ``state_dict`` (the trainer never
    saves a ``torch.compile`` or DDP wrapper); copying in place keeps captured CUDA graphs valid.

    Raises:
        CheckpointError: the weights do not fit ``model`` (missing / unexpected keys, other shapes; the
            message keeps torch's first reason), or hold NaN / inf (the trainer never writes such a file).
    """
    bad = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"checkpoint {path!r}: non-finite values in {len(bad)} weight tensor(s), e.g. "
                              f"{bad[0]!r}; not a checkpoint fastebm wrote (it never saves non-finite weights)")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        reason = " ".join(line.strip() for line in str(e).splitlines()[1:3])  # line 0 is a header
        raise CheckpointError(f"checkpoint {path!r}: its weights do not fit this model: {reason[:300]}") from None


def rng_state() -> dict:
    """States of the torch (CPU and CUDA), numpy and Python generators, for checkpoints, as tensors and plain
    values (no NumPy objects: a checkpoint loads under any NumPy, and with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"bit_generator": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (exact resume); also the NumPy tuple of older checkpoints."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    if isinstance(npst, dict):
        npst = (npst["bit_generator"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                npst["cached_gaussian"])
    np.random.set_state(npst)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
