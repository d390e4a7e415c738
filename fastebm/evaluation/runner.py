"""Running tasks: the one list of them by name, several tasks on one checkpoint, several checkpoints at once."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

from .curves import task_curves
from .featurefd import task_feature_fd
from .fid import fid_and_is, task_fid, task_is
from .options import EvalError, EvalOptions
from .records import run_name
from .run import Run, check_task
from .tasks import task_acc, task_ece, task_energy, task_extremes, task_gen, task_logpx, task_ood, task_p0, task_tsne

# The one list of the tasks: name -> task_<name>(run, opts) -> dict. Its order is the order of --task's help.
TASK_FUNCTIONS = {"fid": task_fid, "is": task_is, "feature-fd": task_feature_fd, "gen": task_gen, "acc": task_acc,
                  "ece": task_ece, "ood": task_ood, "logpx": task_logpx, "tsne": task_tsne, "extremes": task_extremes,
                  "energy": task_energy, "p0": task_p0, "curves": task_curves}
TASKS = tuple(TASK_FUNCTIONS)
JOINT = ("tsne", "curves")  # one record for several checkpoints together: task(run, opts, more_runs)


def check_task_names(tasks: Iterable[str]) -> None:
    """Raise EvalError (option ``tasks``) unless every name in ``tasks`` is one of :data:`TASKS`; called by
    :func:`evaluate`, :func:`run_tasks` and the command line before any work (EvalOptions cannot see the list:
    the task modules import it)."""
    unknown = [t for t in tasks if t not in TASK_FUNCTIONS]
    if unknown:
        raise EvalError(f"unknown task(s) {unknown}; expected some of {list(TASKS)}", "tasks")


def run_tasks(run: Run, opts: EvalOptions) -> dict[str, dict]:
    """Run ``opts.tasks`` on one checkpoint, in order, after checking that every one of them can run;
    ``fid`` and ``is`` share one Inception pass. Returns task -> record (as written to ``<task>.json``).
    Raises EvalError (an unknown task name first), DatasetError, ImportError (a figure without matplotlib)."""
    check_task_names(opts.tasks)
    for task in opts.tasks:
        check_task(run, opts, task)
    results: dict[str, dict] = {}
    for task in opts.tasks:
        if task in results:
            continue
        if task in ("fid", "is"):
            results.update(fid_and_is(run, opts, tuple(t for t in opts.tasks if t in ("fid", "is"))))
        else:
            results[task] = TASK_FUNCTIONS[task](run, opts)
    return results


def evaluate(runs: list[Run], opts: EvalOptions) -> tuple[dict, list[str]]:
    """Run ``opts.tasks`` on one or several checkpoints, checking every (checkpoint, task) pair first.

    One checkpoint: its results go to ``opts.out`` (default ``eval/`` next to it). Several: ``tsne`` embeds them
    jointly and ``curves`` draws them in one figure (one record each, in ``opts.out``, default ``eval/`` next to the
    first), and every other task runs per checkpoint, into ``opts.out/<run folder name>`` (``-1``, ``-2``, ...
    appended when two names clash) or, without ``opts.out``, ``eval/<checkpoint stem>`` next to each checkpoint.

    Returns:
        (results, folders written). Results: one checkpoint, task -> record; several, task -> checkpoint path ->
        record, except the joint ``tsne`` and ``curves``: one record each.

    Raises:
        EvalError (an unknown task name, a task this checkpoint or these options cannot serve), DatasetError,
        ImportError (a figure without matplotlib).
    """
    check_task_names(opts.tasks)
    for run in runs:  # reject model/task mismatches before any expensive work
        for task in opts.tasks:
            check_task(run, opts, task)
    results: dict = {}
    folders: list[str] = []
    joint = [t for t in opts.tasks if t in JOINT] if len(runs) > 1 else []
    for task in dict.fromkeys(joint):
        out = opts.out or os.path.join(os.path.dirname(runs[0].ckpt), "eval")
        results[task] = TASK_FUNCTIONS[task](runs[0], dataclasses.replace(opts, out=out), runs[1:])
        folders.append(out)
    rest = dataclasses.replace(opts, tasks=tuple(t for t in opts.tasks if t not in joint))
    if not rest.tasks:
        return results, folders
    if len(runs) == 1:
        out = opts.out or os.path.join(os.path.dirname(runs[0].ckpt), "eval")
        return run_tasks(runs[0], dataclasses.replace(rest, out=out)), [out]
    names = [run_name(r) for r in runs]
    if len(set(names)) < len(names):  # A/run/ckpt.pt and B/run/ckpt.pt: one folder each, not one shared
        names = [f"{name}-{i + 1}" for i, name in enumerate(names)]
    for run, name in zip(runs, names):
        out = (os.path.join(opts.out, name) if opts.out else
               os.path.join(os.path.dirname(run.ckpt), "eval", os.path.splitext(os.path.basename(run.ckpt))[0]))
        for task, record in run_tasks(run, dataclasses.replace(rest, out=out)).items():
            results.setdefault(task, {})[run.ckpt] = record
        folders.append(out)
    return results, folders
