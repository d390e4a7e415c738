"""The main job: ``python -m fastebm.train --dataset imagenet32 --k 2``.

Trains an M-EBM / M-JEM / JEM energy model with Algorithm 1 of the paper, from the dataset's preset
(see :mod:`fastebm.config`) with any knob overridden on the command line, and writes the run folder
described in :mod:`fastebm.trainer`. ``--resume RUN/ckpt.pt`` continues a run exactly where it stopped
(same buffer, optimizer, LR schedule position and RNG states); options given with ``--resume`` override
the stored configuration, except the architecture, which must match.

Data-parallel: ``torchrun --nproc-per-node N -m fastebm.train ...`` trains on N processes (DDP; gloo on
CPU, nccl on GPUs); see :mod:`fastebm.distributed`. A plain run creates no process group.

Exit status: 0 done, 1 training diverged (the last good checkpoint is intact), 2 bad input.
"""
from __future__ import annotations

import argparse
import os
import sys

from .checkpoint import CheckpointError
from .config import CHOICES, Config, resolve
from .data import DatasetError
from .distributed import init_from_env, shutdown
from .selfcheck import FastPathError
from .selfcheck import summary as fast_path_summary
from .trainer import DivergenceError, Trainer, checkpoint_config


def _optional_float(s: str):
    return None if s.lower() == "none" else float(s)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m fastebm.train``; every default is None (the preset decides)."""
    p = argparse.ArgumentParser(prog="python -m fastebm.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    # Every default is None: unset options take the dataset preset (fastebm/config.py).
    a("--dataset", choices=CHOICES["dataset"], help="dataset (default: digits, embedded)")
    a("--data-root", help="folder holding the dataset's files")
    a("--download", action="store_true", default=None, help="allow torchvision to download CIFAR")
    a("--model", choices=CHOICES["model"], help="mebm, mjem (default) or the jem baseline")
    a("--k", type=int, help="SGLD steps K per iteration (preset 5; JEM 20)")
    a("--epochs", type=int)
    a("--iters-per-epoch", type=int, help="iterations per epoch (390 in the paper)")
    a("--device", help="auto, cpu, cuda, cuda:N")
    a("--out", help="run folder (default runs/<dataset>-<model>-k<K>)")
    a("--resume", metavar="CKPT", help="continue the run stored in this checkpoint")
    a("--seed", type=int)
    g = p.add_argument_group("model")
    g.add_argument("--depth", type=int, help="WRN depth 6n+4")
    g.add_argument("--width", type=int, help="WRN widening factor")
    g.add_argument("--norm", choices=CHOICES["norm"])
    g.add_argument("--dropout", type=float)
    g = p.add_argument_group("informative initialization and replay buffer")
    g.add_argument("--p0", choices=CHOICES["p0"], help="gaussian (informative, Eq. 6) or uniform")
    g.add_argument("--cov", choices=CHOICES["cov"], help="p0 covariance form (auto: full up to 64 px)")
    g.add_argument("--rank", type=int, help="rank of the low-rank p0 covariance")
    g.add_argument("--buffer-size", type=int)
    g.add_argument("--reinit-freq", type=float, help="ρ, fraction of chains restarted from p0")
    g = p.add_argument_group("SGLD and loss")
    g.add_argument("--step-size", type=float, help="SGLD step size α")
    g.add_argument("--noise", type=float, help="SGLD noise σ (default by K)")
    g.add_argument("--grad-clip", type=_optional_float, help="clamp ∂E/∂x to [-c, c]")
    g.add_argument("--no-clamp-x", dest="clamp_x", action="store_false", default=None,
                   help="do not clamp SGLD samples to [-1, 1]")
    g.add_argument("--sgld-bn", choices=CHOICES["sgld_bn"], help="BatchNorm while sampling")
    g.add_argument("--l2", type=float, help="λ, L2 energy regularization (default by K)")
    g.add_argument("--reg-form", choices=CHOICES["reg_form"], help="eq8 (paper) or reference (code)")
    g.add_argument("--cls-weight", type=float)
    g.add_argument("--batch-size", type=int, help="p(x) batch (64)")
    g.add_argument("--cls-batch-size", type=int, help="augmented p(y|x) batch of M-JEM (128)")
    g.add_argument("--data-noise", type=float, help="Gaussian noise added to data batches")
    g = p.add_argument_group("optimization")
    g.add_argument("--optimizer", choices=CHOICES["optimizer"])
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-iters", type=int)
    g.add_argument("--decay-epochs", type=int, nargs="*")
    g.add_argument("--decay-rate", type=float)
    g.add_argument("--max-loss", type=float, help="stop when |loss| exceeds this")
    g = p.add_argument_group("fast path (auto: on for CUDA, plain reference path on CPU)")
    g.add_argument("--compile", choices=CHOICES["compile"], help="torch.compile of the energy network")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the K-step SGLD loop in a CUDA graph")
    g.add_argument("--amp", choices=CHOICES["amp"], help="autocast precision of the network")
    g.add_argument("--triton", action=argparse.BooleanOptionalAction, default=None,
                   help="fused Triton kernels (Langevin update, p0 sampling)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--nvtx", action="store_true", default=None, help="NVTX ranges for nsys")
    g = p.add_argument_group("fast path II: one graph per iteration, run-time self-check (issue 12)")
    g.add_argument("--compile-step", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the whole training iteration as one graph (CUDA graphs on CUDA); "
                        "auto: on for CUDA, off on CPU")
    g.add_argument("--fast-path", choices=CHOICES["fast_path"],
                   help="self-check of the fast components at the first iteration: auto (switch a failing "
                        "one off with a warning), strict (error), off (no check); default auto")
    g = p.add_argument_group("data subsets (demos, tests)")
    g.add_argument("--train-subset", type=int)
    g.add_argument("--test-subset", type=int)
    g.add_argument("--max-per-class", type=int, help="folder layouts: files read per class")
    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int)
    g.add_argument("--eval-every", type=int)
    g.add_argument("--sample-every", type=int)
    g.add_argument("--ckpt-every", type=int)
    g.add_argument("--check-every", type=int, help="host-side divergence check interval")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve the run's Config from parsed arguments (and the checkpoint's config with --resume)."""
    given = {k: v for k, v in vars(args).items() if k != "resume" and v is not None}
    if args.resume:
        stored = checkpoint_config(args.resume)
        stored.update(given)
        given = stored
        if not args.out:  # continue in the checkpoint's own run folder
            given["out"] = os.path.dirname(os.path.abspath(args.resume))
    return resolve(given)


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (0 done, 1 diverged, 2 bad input via SystemExit, 130 interrupted)."""
    try:
        return _main(argv)
    finally:
        shutdown()  # the torchrun process group, if any


def _main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        init_from_env(cfg.device)  # torchrun (WORLD_SIZE > 1): process group from RANK/WORLD_SIZE/LOCAL_RANK
        trainer = Trainer(cfg)
        if args.resume:
            trainer.load_checkpoint(args.resume)
        elif os.path.isfile(os.path.join(trainer.out, "ckpt.pt")):
            raise CheckpointError(f"run folder {trainer.out!r} already holds ckpt.pt: pass --resume "
                                  f"{os.path.join(trainer.out, 'ckpt.pt')} or choose another --out")
    except (ValueError, DatasetError, CheckpointError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    say = trainer.dist.is_main  # only rank 0 talks
    if say:
        print(f"fastebm: {cfg.model} on {cfg.dataset} ({len(trainer.train_data)} images, "
              f"{cfg.image_size}px, {cfg.n_classes} classes), WRN-{cfg.depth}-{cfg.width}, K={cfg.k}, "
              f"device {trainer.device}, {trainer.dist.world_size} process(es), run folder {trainer.out}",
              file=sys.stderr)
    try:  # the fast-path self-check (issue 12) before the first iteration, so the banner can say what runs
        if trainer.fast_path_pending:
            trainer.check_fast_path()
    except FastPathError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if say:
        print(f"fastebm: {fast_path_summary(trainer.fast_path_report)}", file=sys.stderr)
    try:
        last = trainer.fit()
    except DivergenceError as e:
        print(f"{parser.prog}: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; last checkpoint: {trainer.last_checkpoint}", file=sys.stderr)
        return 130
    if say:
        print(f"fastebm: done at iteration {trainer.iteration}; last metrics {last}; checkpoint "
              f"{trainer.last_checkpoint}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
