"""What the tasks write: a JSON record per task, .npz image sets, and where they go."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch

from ..data.imageset import to_uint8
from .options import EvalOptions
from .run import Run


def jsonable(obj):
    """``obj`` with NumPy / torch values turned into plain JSON values (non-finite floats become None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None  # NaN (an empty bin) -> null
    return obj


def out_dir(run: Run, opts: EvalOptions) -> str:
    """The folder a task writes into (created): ``opts.out``, or ``eval/`` next to the checkpoint."""
    folder = opts.out or os.path.join(os.path.dirname(run.ckpt), "eval")
    os.makedirs(folder, exist_ok=True)
    return folder


def run_name(run: Run) -> str:
    """``<run folder>`` for RUN/ckpt.pt, ``<run folder>-<stem>`` for other files (best_fid.pt, ckpt_e010.pt)."""
    folder, name = os.path.split(run.ckpt)
    return os.path.basename(folder) + ("" if name == "ckpt.pt" else f"-{os.path.splitext(name)[0]}")


def header(run: Run, task: str) -> dict:
    """The first fields of every record: task, checkpoint, iteration, model, dataset."""
    return {"task": task, "checkpoint": run.ckpt, "iteration": run.iteration, "model": run.cfg.model,
            "dataset": run.cfg.dataset}


def write_json(folder: str, name: str, record: dict) -> dict:
    """Write ``folder/name`` (indented JSON, strict: no NaN) and return the record as written."""
    record = jsonable(record)
    with open(os.path.join(folder, name), "w") as f:
        json.dump(record, f, indent=2, allow_nan=False)
    return record


def save_npz_images(path: str, images: torch.Tensor, labels: torch.Tensor, **extra) -> str:
    """Images float [-1, 1] (N, 3, H, W) -> ``path`` (.npz) with ``images`` uint8 (N, H, W, 3), ``labels``
    int64 (N,) and the arrays in ``extra``. Returns ``path``."""
    u8 = to_uint8(images).permute(0, 2, 3, 1).contiguous().numpy()
    np.savez_compressed(path, images=u8, labels=labels.cpu().numpy().astype(np.int64),
                        **{k: np.asarray(v) for k, v in extra.items()})
    return path
