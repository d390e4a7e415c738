"""Training curves of one or several runs, read from their metrics.jsonl: test accuracy, FID and IS against
epoch (the paper's Fig. 2(b): M-JEM against LSE-JEM on CIFAR-100)."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

from .options import EvalError, EvalOptions
from .records import out_dir, run_name, write_json
from .run import Run

PANELS = (("test accuracy", "eval", "test_acc"), ("FID", "fid", "fid"), ("Inception Score", "fid", "is_mean"))


def read_curves(run: Run) -> dict[str, tuple[list[float], list[float]]]:
    """``{panel: (epochs, values)}`` from the ``eval`` and ``fid`` rows of the metrics.jsonl beside ``run``'s
    checkpoint (epoch = iteration / iterations per epoch; a later row of an iteration replaces an earlier one,
    as after a rollback). Raises EvalError when the file is missing."""
    path = os.path.join(os.path.dirname(os.path.abspath(run.ckpt)), "metrics.jsonl")
    if not os.path.isfile(path):
        raise EvalError(f"task 'curves' reads the run's metrics.jsonl, and {path!r} does not exist")
    rows: dict[tuple[str, int], dict] = {}
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:  # a line cut by a killed process
                continue
            if r.get("kind") in ("eval", "fid"):
                rows[(r["kind"], r["iter"])] = r
    out = {}
    for title, kind, key in PANELS:
        points = sorted((it / run.cfg.iters_per_epoch, r[key]) for (k, it), r in rows.items()
                        if k == kind and r.get(key) is not None)
        out[title] = ([p[0] for p in points], [p[1] for p in points])
    return out


def task_curves(run: Run, opts: EvalOptions, more_runs: Sequence[Run] = ()) -> dict:
    """Test accuracy, FID and IS against epoch of ``run`` and ``more_runs`` (one line each, labelled by run
    folder, model and K), from their metrics.jsonl. Writes ``curves.png`` and ``curves.json`` (the series)."""
    from . import plots

    runs = [run, *more_runs]
    series = {f"{run_name(r)} ({r.cfg.model}, K={r.cfg.k})": read_curves(r) for r in runs}
    panels = [(title, {label: s[title] for label, s in series.items()}) for title, _, _ in PANELS]
    out = out_dir(run, opts)
    record = {"task": "curves", "checkpoints": [r.ckpt for r in runs],
              "series": {label: {t: {"epoch": x, "value": y} for t, (x, y) in s.items()}
                         for label, s in series.items()},
              "png": plots.curves(os.path.join(out, "curves.png"), panels)}
    return write_json(out, "curves.json", record)
