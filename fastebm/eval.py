"""Evaluation of trained checkpoints: ``python -m fastebm.eval --ckpt RUN/ckpt.pt [MORE.pt ...] --task ...``.

Reproduces the measurements and figures of the M-EBM paper (Yang & Ji, "M-EBM: Towards Understanding the
Manifolds of Energy-Based Models") from checkpoints written by :class:`fastebm.run.trainer.Trainer`: the tasks of
:data:`fastebm.evaluation.TASKS` (``--help`` lists them). Each task writes ``<task>.json`` and its figures into
``--out`` (default: ``eval/`` next to the checkpoint).

Output: stdout is one JSON object, for ``| jq``: with one ``--ckpt``, task -> record; with several, task ->
checkpoint path -> record. Everything else (progress, warnings, the folders written, errors) goes to stderr.
The library behind it is :mod:`fastebm.evaluation` (typed options, one function per task). Every task, its
files, the metrics' references and the conventions: docs/evaluation.md.

Exit status: 0 done, 2 bad input (one line ``python -m fastebm.eval: error: ...`` on stderr).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

from . import __version__
from .config import paper
from .config.flags import OneLineParser
from .config.limits import flag
from .data.datasets import DATASETS
from .data.imageset import DatasetError
from .evaluation import TASKS, EvalError, EvalOptions, Run, check_task_names, evaluate, load_run
from .evaluation.options import FID_SPLITS
from .evaluation.records import jsonable
from .io.checkpoint import CheckpointError
from .run.threads import apply_threads

__all__ = ["PROG", "Run", "build_parser", "cli", "load_run", "main", "options_from_args"]  # Run, load_run: as before

PROG = "python -m fastebm.eval"
DEFAULTS = EvalOptions()


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one; a None default (its help says what happens) shows none."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _splits(text: str) -> int | None:
    """``--splits``: a count, or ``auto`` (None: one split per 5,000 images)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m fastebm.eval`` (argparse errors are one line, exit 2). Every option
    but ``--ckpt`` is a field of :class:`~fastebm.evaluation.EvalOptions` (``--task``: ``tasks``), with its
    default."""
    d = DEFAULTS
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=_DefaultsShown)
    a = p.add_argument
    a("--version", action="version", version=f"fastebm {__version__}")
    a("--ckpt", nargs="+", required=True, help="checkpoint(s) written by fastebm.train (RUN/ckpt.pt); several: "
      "tsne and curves take them together, other tasks run per checkpoint")
    a("--task", nargs="+", required=True, help=f"one or several of {', '.join(TASKS)} (or comma-separated)")
    a("--out", help="output folder (default: eval/ next to the checkpoint)")
    a("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    a("--threads", type=int, help="CPU threads of torch (default: the usable cores minus the current load, at "
      "least 1; OMP_NUM_THREADS if set)")
    a("--batch-size", type=int, default=d.batch_size, help="images per forward pass / SGLD batch")
    a("--n-samples", type=int, help="images per set (fid/is: all buffer images or |B| chains; gen: 64; "
      "tsne / energy: 500; logpx: all buffer images)")
    a("--seed", type=int, default=d.seed)
    g = p.add_argument_group("data (default: the checkpoint's)")
    g.add_argument("--dataset", help=f"one of {', '.join(DATASETS)}")
    g.add_argument("--data-root")
    g.add_argument("--max-per-class", type=int, help="folder layouts: files read per class")
    g.add_argument("--test-subset", type=int, help="use this many test images (default all)")
    g = p.add_argument_group("fid / is")
    g.add_argument("--source", default=d.source, help="buffer (replay buffer) or chains (fresh SGLD from p0)")
    g.add_argument("--sgld-steps", type=int, help="SGLD steps for chains and gen (default: the training K)")
    g.add_argument("--keep-ratio", type=float, help="buffer: keep the most confident fraction per "
                   "predicted class (> 1: a count per class); classifier models (default 0.9, the authors' "
                   "protocol; 1: the whole buffer)")
    g.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (default: "
                   "pytorch-fid's cache, torch.hub.get_dir()/checkpoints)")
    g.add_argument("--random-inception", action="store_true", help=argparse.SUPPRESS)  # tests only
    g.add_argument("--splits", type=_splits, default=d.splits,
                   help="Inception Score splits; auto: one per 5,000 images, at least 1 (the authors' eval_buffer.py)")
    g.add_argument("--fid-split", default=d.fid_split, choices=FID_SPLITS,
                   help="FID's real images: one split or train+test (the 60k reference of the paper's period)")
    g.add_argument("--n-real", type=int, help="real images for the statistics (default all)")
    g.add_argument("--stats-cache", help="folder of cached real statistics (default "
                   "$FASTEBM_CACHE/fid_stats or ~/.cache/fastebm/fid_stats)")
    g = p.add_argument_group("feature-fd (no Inception weights needed; --source, --keep-ratio as fid)")
    g.add_argument("--features", help="the feature network's file: read when it exists, else trained on the "
                   "training split and written there; score every run with one file (default: one cached per "
                   "training split beside --stats-cache's statistics)")
    g = p.add_argument_group("ece / ood / logpx / tsne / extremes / energy")
    g.add_argument("--ece-bins", type=int, default=d.ece_bins)
    g.add_argument("--ood-dataset", help=f"one of {', '.join(DATASETS)}")
    g.add_argument("--ood-root", help="the OOD dataset's folder (all but digits)")
    g.add_argument("--ood-max-per-class", type=int)
    g.add_argument("--ood-subset", type=int, help="use this many OOD images (default all)")
    g.add_argument("--bins", type=int, default=d.bins, help="histogram bins (ood, logpx, energy)")
    g.add_argument("--perplexity", type=float, default=d.perplexity, help="t-SNE perplexity (capped by the size)")
    g.add_argument("--n-show", type=int, default=d.n_show, help="extremes: images per row")
    return p


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    """The :class:`EvalOptions` of parsed arguments (``--task a,b c`` → tasks ``(a, b, c)``), task names checked.
    Raises EvalError."""
    tasks = tuple(t for item in args.task for t in item.split(",") if t)
    check_task_names(tasks)
    values = {k: v for k, v in vars(args).items() if k not in ("ckpt", "task")}
    return EvalOptions(tasks=tasks, **values)


def _message(e: Exception) -> str:
    """One line; an EvalError about an option speaks of its flag (``batch_size`` → ``--batch-size``)."""
    if isinstance(e, EvalError) and e.option:
        text = f"{'--task' if e.option == 'tasks' else flag(e.option)}: {e.detail}"
    else:
        text = str(e)
    return " ".join(text.split())


def main(argv=None) -> int:
    """Command-line entry point: prints the results as one JSON object on stdout and returns 0, or exits with
    status 2 and a one-line error on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        opts = options_from_args(args)
        apply_threads(opts.threads)
        with contextlib.redirect_stdout(sys.stderr):  # a stray print of any library must not corrupt the JSON
            runs = [load_run(c, opts.device, opts.dataset, opts.data_root, opts.max_per_class) for c in args.ckpt]
            results, folders = evaluate(runs, opts)
    except (EvalError, CheckpointError, DatasetError, OSError, ImportError, ValueError) as e:
        parser.error(_message(e))
    print(f"fastebm.eval: wrote {', '.join(dict.fromkeys(folders))}", file=sys.stderr)
    for run in runs:
        beside = paper_row(run, results if len(runs) == 1 else
                           {t: r.get(run.ckpt) for t, r in results.items() if isinstance(r, dict)})
        if beside is not None:
            print(f"fastebm.eval: {beside['beside']}", file=sys.stderr)
            if len(runs) == 1:
                results["paper"] = beside
            else:
                results.setdefault("paper", {})[run.ckpt] = beside
    json.dump(jsonable(results), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def paper_row(run, results: dict) -> dict | None:
    """The paper row a checkpoint's configuration reproduces (:func:`fastebm.config.paper.match`) with the paper's
    numbers and one line setting this evaluation's accuracy / IS / FID beside them; None when it reproduces
    none. ``results``: task -> record of this checkpoint."""
    row = paper.match(run.cfg)
    if row is None:
        return None
    pick = {"acc": ("acc", "accuracy"), "inception_score": ("is", "is_mean"), "fid": ("fid", "fid")}
    measured = {k: (results.get(task) or {}).get(key) for k, (task, key) in pick.items()
                if "meaningless" not in (results.get(task) or {})}  # a random Inception's numbers stay out
    return {"row": row.key, "acc": row.acc, "inception_score": row.inception_score, "fid": row.fid,
            "beside": paper.beside(row, measured)}


def cli() -> None:
    """The ``fastebm-eval`` console script (and ``python -m fastebm.eval``)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
