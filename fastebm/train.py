"""The main job: ``python -m fastebm.train --dataset imagenet32 --k 2``.

Trains an M-EBM / M-JEM / LSE-JEM / JEM energy model with Algorithm 1 of the paper, from the presets of
:mod:`fastebm.config.options` with any knob overridden on the command line (one flag per ``Config`` field, generated
by :func:`build_parser`), and writes the run folder described in :mod:`fastebm.run.folder` (one run at a
time: a second run into a folder in use stops with an error). ``--resume RUN/ckpt.pt`` continues a run
exactly where it stopped (same buffer, optimizer, LR schedule position and RNG states); options given with
``--resume`` override the stored configuration, except the architecture, which must match. ``--resume auto``
(for requeued jobs: the same command again) resumes ``OUT/ckpt.pt`` when it exists and was written by the
same options, and starts otherwise. ``--print-config`` prints the resolved configuration as JSON and exits 0
without loading any data.

Data-parallel: ``torchrun --nproc-per-node N -m fastebm.train ...`` trains on N processes (DDP; gloo on
CPU, nccl on GPUs); see :mod:`fastebm.run.distributed`. A plain run creates no process group.

Divergence (non-finite or exploding loss / energies): by default the run rolls back to its latest
``ckpt.pt``, lowers the learning rate and goes on (``--on-divergence rollback``, at most
``--max-rollbacks`` times); ``--on-divergence stop`` stops at once. See :mod:`fastebm.run.recovery`.

Signals: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 finish the current iteration, write ckpt.pt and exit
(:mod:`fastebm.run.stopping`).

Exit status: 0 done, 1 training diverged and was not (or no longer) rolled back, or a checkpoint could not be
written (the last good checkpoint is intact either way), 2 bad input, 128 + signal number after a signal
(143 SIGTERM, 130 SIGINT, 138 SIGUSR1).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys

from . import __version__
from .config import paper
from .config.flags import PresetHelpParser, add_config_flags
from .config.limits import flag
from .config.options import NONE, Config, resolve
from .data.imageset import DatasetError
from .fastpath.fastpath import FastPathError
from .io.checkpoint import CheckpointError, load_checkpoint
from .run.completion import DEVICE_FIELDS, run_folder
from .run.distributed import DataMismatch, env_world_size, exit_process, init_from_env, shutdown
from .run.folder import RunFolderBusy, RunLock, run_folder_base
from .run.recovery import finite
from .run.schedule import decays_after_end
from .run.stopping import GracefulStop, Stopped
from .run.threads import apply_threads
from .run.trainer import DivergenceError, Trainer

CLI_ONLY = ("resume", "print_config")  # flags that are not Config fields


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The command line of ``python -m fastebm.train``: one flag per :class:`Config` field
    (:func:`fastebm.config.flags.add_config_flags`), the help's defaults resolved for the ``--dataset`` /
    ``--model`` / ``--k`` of ``argv`` (``sys.argv[1:]`` when None). CLI-only: ``--resume``, ``--print-config``.
    """
    argv = sys.argv[1:] if argv is None else argv
    p = PresetHelpParser(argv, prog="python -m fastebm.train", description=__doc__.split("\n\n")[0],
                         epilog="Defaults shown are the presets resolved for the --dataset / --model / "
                                "--k given (fastebm/config/options.py; --print-config prints them all).")
    p.add_argument("--version", action="version", version=f"fastebm {__version__}")
    p.add_argument("--resume", metavar="CKPT", help="continue the run stored in this checkpoint; auto: the run "
                   "folder's ckpt.pt if it exists and was written by these options, else start (requeued jobs)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration as JSON and exit (no data is loaded)")
    add_config_flags(p)
    return p


def config_from_args(args: argparse.Namespace) -> tuple[Config, dict, int | None]:
    """Resolve the run's Config from parsed arguments (and the checkpoint's config with --resume); also
    returns the options requested explicitly (this command's, on top of the resumed run's), which the
    trainer stores in its checkpoints, and the iteration of the checkpoint resumed (None without --resume).

    A resumed run keeps the stored configuration, with the options given now on top, except the
    device-dependent fields (:data:`fastebm.run.completion.DEVICE_FIELDS`: fast-path flags, host-check and FID
    cadence), which are resolved again for the device the run resumes on unless the original run or this
    command gave them: a GPU checkpoint resumes on a CPU, and a CPU checkpoint gets the fast path on a GPU.
    """
    given = {k: v for k, v in vars(args).items() if k not in CLI_ONLY and v is not None}
    requested = {k: (None if v is NONE else v) for k, v in given.items()}
    iteration, cfg = None, None
    if args.resume == "auto":  # a run that starts comes back resolved; one that goes on resolves below
        args.resume, cfg = _auto_resume(given, requested)
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        changed = [f"{flag(k)} {ckpt['config'][k]} -> {v}" for k, v in given.items()
                   if k != "out" and k in ckpt["config"] and ckpt["config"][k] != (None if v is NONE else v)]
        if changed and os.environ.get("RANK", "0") == "0":
            print(f"fastebm: resuming {args.resume} with options changed from the checkpoint's: {', '.join(changed)} "
                  f"(what the presets derive from them, e.g. the K rule's noise and L2, stays as stored)",
                  file=sys.stderr)
        before = ckpt.get("requested")  # None: a checkpoint of a run that did not record it
        stored = {k: (NONE if v is None else v) for k, v in ckpt["config"].items()
                  if k not in DEVICE_FIELDS or (before is not None and k in before)}
        given = {**stored, **given}
        requested = {**(before or {}), **requested}
        iteration = int(ckpt.get("iteration", 0))
        if not args.out:  # continue in the checkpoint's own run folder
            given["out"] = os.path.dirname(os.path.abspath(args.resume))
    if cfg is None:
        fields = {f.name for f in dataclasses.fields(Config)}
        cfg = resolve({k: v for k, v in given.items() if k in fields})
    if args.resume and ckpt.get("arch"):  # before anything else, even when done: another shape cannot go on
        stored, now = ckpt["arch"], cfg.arch()
        if any(now[k] is not None and stored.get(k) != now[k] for k in now):
            raise CheckpointError(f"checkpoint {args.resume!r} is for model {stored}, expected {now}")
    return cfg, requested, iteration


def _auto_resume(given: dict, requested: dict) -> tuple[str | None, Config | None]:
    """``--resume auto``: ``(the run folder's ckpt.pt, None)`` when it exists and was written by the same options
    (then the run goes on, its Config resolved with the checkpoint's), ``(None, the resolved Config)`` when there is
    none (then the run starts in that folder: ``out`` set there and in ``given``).

    Raises:
        CheckpointError: the checkpoint there was written by other options (which ones differ).
    """
    fields = {f.name for f in dataclasses.fields(Config)}
    cfg = resolve({k: v for k, v in given.items() if k in fields})
    out = cfg.out or run_folder_base(cfg.dataset, cfg.model, cfg.k)
    path = os.path.join(out, "ckpt.pt")
    if not os.path.isfile(path):
        given["out"] = out
        return None, dataclasses.replace(cfg, out=out)
    ckpt = load_checkpoint(path)
    before, stored = ckpt.get("requested"), ckpt["config"]
    differ = sorted(k for k in set(before or {}) | set(requested) if k != "out"
                    and (before or {}).get(k) != requested.get(k) and stored.get(k) != getattr(cfg, k, None))
    if before is None or differ:
        what = ", ".join(f"{flag(k)} {stored.get(k)!r} there, {getattr(cfg, k, None)!r} now"
                         for k in differ[:4]) or "it does not record its options"
        raise CheckpointError(f"--resume auto: {path!r} holds a run with other options ({what}); pass "
                              f"--resume {path} to continue it with these, or another --out")
    return path, None


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (0 done, 1 diverged or a checkpoint not written, 2 bad input via
    SystemExit, 128 + signal number after a signal)."""
    locks: list[RunLock] = []
    try:
        return _main(argv, locks)
    finally:
        for lock in locks:  # also when an error's traceback keeps _main's frame alive
            lock.release()
        shutdown()  # the torchrun process group, if any


def _main(argv, locks: list) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    created = False  # whether this run made its run folder
    try:
        cfg, requested, resumed = config_from_args(args)
        if args.print_config:
            print(cfg.to_json())
            return 0
        if resumed is not None and cfg.iters_per_epoch and resumed >= cfg.total_iters:
            print(f"fastebm: the run in {args.resume} is done: iteration {resumed} of {cfg.total_iters} "
                  f"({cfg.epochs} epochs); to train on, pass --resume {args.resume} --epochs N with N > "
                  f"{cfg.epochs}", file=sys.stderr)
            return 0
        cfg = dataclasses.replace(cfg, out=run_folder(cfg))  # decided now: the folder is locked before the data
        if not args.resume and os.path.isfile(os.path.join(cfg.out, "ckpt.pt")):
            raise CheckpointError(f"run folder {cfg.out!r} already holds ckpt.pt: pass --resume "
                                  f"{os.path.join(cfg.out, 'ckpt.pt')} (or --resume auto) or choose another --out")
        if os.environ.get("RANK", "0") == "0":  # the rank that writes holds the folder
            created = not os.path.exists(cfg.out)
            locks.append(RunLock(cfg.out))
        threads = apply_threads(cfg.threads, env_world_size())
        init_from_env(cfg.device)  # torchrun (WORLD_SIZE > 1): process group from RANK/WORLD_SIZE/LOCAL_RANK

        def stage(tr: Trainer, what: str) -> None:  # "checked" comes after every check: errors stay one line
            if not tr.dist.is_main:
                return
            lines = [banner(tr, threads), paper_notice(tr.cfg), decay_warning(tr.cfg, requested)] if (
                what == "checked") else [
                f"fastebm: WRN-{tr.cfg.depth}-{tr.cfg.width} and optimizer built; p0 (Eq. 6, --p0 {tr.cfg.p0}) next"]
            for line in filter(None, lines):
                print(line, file=sys.stderr, flush=True)

        trainer = Trainer(cfg, requested=requested, on_stage=stage)
        cfg = trainer.cfg  # completed for the device and the data
        if args.resume:
            trainer.load_checkpoint(args.resume)
            trainer.drop_rows_after(trainer.state.iteration)  # the iterations re-run are logged again
            if trainer.dist.is_main:
                print(f"fastebm: resuming {args.resume} at iteration {trainer.state.iteration} of {cfg.total_iters}",
                      file=sys.stderr)
    except (ValueError, DatasetError, CheckpointError, RunFolderBusy) as e:
        if created:  # a run that never started leaves no folder behind
            for lock in locks:
                lock.release()
            shutil.rmtree(cfg.out, ignore_errors=True)
        said = not isinstance(e, DataMismatch) or os.environ.get("RANK", "0") == "0"  # every rank has it: once
        parser.exit(2, f"{parser.prog}: error: {e}\n" if said else None)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted before training started; nothing was written", file=sys.stderr)
        return 130
    say = trainer.dist.is_main  # only rank 0 talks
    try:  # the fast-path self-check before the first iteration, so the banner can say what runs
        if trainer.fast.pending:
            if say:
                print(f"fastebm: checking the fast path ({', '.join(k for k, v in trainer.fast.on.items() if v)}) "
                      f"against the plain path and float64", file=sys.stderr, flush=True)
            trainer.check_fast_path()
    except FastPathError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except CheckpointError as e:  # its row in metrics.jsonl could not be written (a full disk)
        print(f"{parser.prog}: stopped: {e}", file=sys.stderr)
        return 1
    if say:
        print(f"fastebm: {trainer.fast.summary()}", file=sys.stderr)
    try:
        with GracefulStop() as stop:
            last = trainer.fit(stop)
    except Stopped as e:
        if say:
            print(f"{parser.prog}: {e}: the same command with --resume auto (or --resume {e.checkpoint}) goes "
                  f"on from there", file=sys.stderr)
            print(json.dumps({**run_summary(trainer, {}), "stopped": signal.Signals(e.signum).name}))
        return e.status
    except (DivergenceError, CheckpointError) as e:
        run = trainer.state
        last = (f"; the last checkpoint {run.last_checkpoint} holds iteration {run.last_checkpoint_iteration}"
                if isinstance(e, CheckpointError) and run.last_checkpoint else "")
        print(f"{parser.prog}: stopped: {e}{last}", file=sys.stderr)
        if say and isinstance(e, DivergenceError):
            print(json.dumps({**run_summary(trainer, {}, diverged=True), "diverged": str(e)}))
        return 1
    except KeyboardInterrupt:
        last, at = trainer.state.last_checkpoint, trainer.state.last_checkpoint_iteration
        print(f"{parser.prog}: interrupted at iteration {trainer.state.iteration}; "
              + (f"the last checkpoint {last} holds iteration {at}: --resume {last} re-runs "
                 f"{trainer.state.iteration - at} iteration(s)" if last else "no checkpoint was written"),
              file=sys.stderr)
        return 130
    if say:
        summary = run_summary(trainer, last)
        print(f"fastebm: done at iteration {trainer.state.iteration}; last metrics {last}; checkpoint "
              f"{trainer.state.last_checkpoint}", file=sys.stderr)
        if "paper" in summary:
            print(f"fastebm: {summary['paper']['beside']}", file=sys.stderr)
        print(json.dumps(summary))  # stdout: one JSON document (| jq)
    return 0


def banner(trainer: Trainer, threads: str) -> str:
    """The run's first line on stderr: model, data, network, K, iterations, device, threads, processes, run
    folder. Printed as soon as the options and the data have passed every check, before the model, optimizer
    and p0 are built (``Trainer(on_stage=...)``), so that a run says what it does within seconds of its start."""
    cfg, n_test = trainer.cfg, trainer.test_size
    if n_test is not None and cfg.test_subset:  # the images each evaluation scores
        n_test = min(n_test, cfg.test_subset)
    images = (f"{len(trainer.train_data)} training images" if n_test is None else
              f"{len(trainer.train_data)} training and {n_test} test images")
    return (f"fastebm: {cfg.model} on {cfg.dataset} ({images}, {cfg.image_size}px, "
            f"{cfg.n_classes} classes), WRN-{cfg.depth}-{cfg.width}, K={cfg.k}, {cfg.total_iters} iterations "
            f"({cfg.epochs} epoch(s) of {cfg.iters_per_epoch}), device {trainer.device}, {threads}, "
            f"{trainer.dist.world_size} process(es), run folder {trainer.out}; building the model and p0")


def paper_notice(cfg: Config) -> str | None:
    """The run's second line when it aims at a row of the paper (:func:`fastebm.config.paper.nearest`): which row, and
    every setting that differs from the row and from its authors' code (``cfg`` resolved for its device, so that
    ``--amp`` says the precision), with the ``--paper`` option that sets them all; None for no row."""
    row = paper.nearest(cfg)
    if row is None:
        return None
    what = paper.what_differs(row, cfg)
    head = (f"fastebm: --paper {row.key}: {row.label} as the authors' code runs it" if cfg.paper
            else f"fastebm: this is {row.label} ({row.key})")
    if not what:
        return head + ("" if cfg.paper else f", with the authors' code settings ({row.code_source})")
    return f"{head}; {what}" + ("" if cfg.paper else f"; --paper {row.key} sets the row's and the authors' values")


def decay_warning(cfg: Config, requested: dict) -> str | None:
    """The warning line for learning-rate decays that never happen: the ``--decay-epochs`` at or after the
    run's last epoch (:func:`fastebm.run.schedule.decays_after_end`), with where they came from (the options given or
    the recipe's presets) and the flag that changes them; None when every decay falls within the run."""
    never = decays_after_end(cfg)
    if not never:
        return None
    whose = "as given" if "decay_epochs" in requested else "the recipe's"
    return (f"fastebm: warning: the learning rate never decays at epoch(s) {', '.join(map(str, never))} of "
            f"--decay-epochs {' '.join(map(str, cfg.decay_epochs))} ({whose}): the run ends after --epochs "
            f"{cfg.epochs}; pass --decay-epochs with epochs below {cfg.epochs} to decay within it, or "
            f"--decay-epochs alone (no value) for no decay")


def run_summary(trainer: Trainer, last: dict, diverged: bool = False) -> dict:
    """The end-of-run summary printed on stdout: iterations, run folder, checkpoint, the last training row,
    the best test accuracy / FID, the best before the first divergence (the paper's "best before diverging":
    at the first rollback, or everything of a run that stopped at its divergence), and the paper row the run
    aims at (:func:`fastebm.config.paper.nearest`) with both sides' numbers and every setting that differs from it."""
    state = trainer.state
    best = finite(state.best)
    out = {"iteration": state.iteration, "run_folder": trainer.out, "checkpoint": state.last_checkpoint,
           "last": last, "best": best}
    before = state.best_before_divergence or ({"iter": state.iteration, **best} if diverged else None)
    if before is not None:
        out["best_before_divergence"] = before
    row = paper.nearest(trainer.cfg)
    if row is not None:
        measured = {"acc": best.get("test_acc"), "fid": best.get("fid")}
        differs = paper.differences(row, trainer.cfg)
        out["paper"] = {"row": row.key, "acc": row.acc, "inception_score": row.inception_score, "fid": row.fid,
                        "differs": {k: {"ours": a, "row": b} for k, (a, b) in differs.items()},
                        "beside": paper.beside(row, measured, trainer.cfg, before)}
    return out


def cli() -> None:
    """The ``fastebm-train`` console script (and ``python -m fastebm.train``): exits with :func:`main`'s
    status; under torchrun through :func:`~fastebm.run.distributed.exit_process`."""
    exit_process(main(), multi_process=env_world_size() > 1)


if __name__ == "__main__":
    cli()
