"""The state of a training run and its checkpoint: :class:`RunState` (the run's progress: iteration, the
rollback state, the best scores, the last checkpoint), :class:`RunParts` (the objects a checkpoint is written from
and restored into: model, optimizer, replay buffer, p0, RNG states), and what moves the run through its
checkpoint: write (:func:`save_run`), exact resume (:func:`restore_run`) and the return to ckpt.pt after a
divergence (:func:`roll_back`). Files: :mod:`fastebm.io.checkpoint`; noticing a divergence: :mod:`fastebm.run.recovery`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..algorithm.buffer import ReplayBuffer
from ..algorithm.model import model_outputs
from ..config.options import Config
from ..fastpath.fastpath import FastPath
from ..io.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_model_state, rng_state, set_rng_state
from ..p0 import p0_from_state_dict
from .distributed import DistContext
from .recovery import DivergenceError, DivergenceWatch, finite, reseed, rollback_seed
from .schedule import lr_at


def _no_best() -> dict:
    return {"fid": math.inf, "test_acc": -math.inf}


@dataclass
class RunState:
    """The run's progress: what the loop advances, a checkpoint stores and a resume or rollback restores.

    Attributes:
        iteration: iterations done (the next one is ``iteration``, 0-based).
        lr_scale: the persistent learning-rate scale, ``--rollback-lr-factor`` ** rollbacks (1.0 before any).
        rollbacks: rollbacks over the whole run so far.
        best: the best FID (lower is better) and test accuracy (fraction) so far; inf / -inf before any.
        best_before_divergence: ``{"iter", "fid", "test_acc"}`` (reached ones only) at the first rollback, else
            None (the paper's "best before diverging").
        last_checkpoint: path of the last ckpt.pt written or read, None before any.
        last_checkpoint_iteration: the iteration that checkpoint holds.
    """

    iteration: int = 0
    lr_scale: float = 1.0
    rollbacks: int = 0
    best: dict = field(default_factory=_no_best)
    best_before_divergence: dict | None = None
    last_checkpoint: str | None = None
    last_checkpoint_iteration: int = 0


@dataclass(frozen=True)
class RunParts:
    """The objects a checkpoint is written from and restored into, in place (CUDA graphs stay valid).

    Attributes:
        cfg: the completed configuration (stored; its architecture must match on restore).
        model, opt, buffer: the network, its optimizer and the replay buffer (this rank's shard; ``buffer.p0``
            is the run's p0).
        fast: the fast path (its Triton Philox state, its reload after a restore, its reseed).
        dist: the process group context (buffer shards, per-rank RNG streams, collective checks).
        classes: the training data's class names (label i is classes[i]), None for datasets without names.
        requested: the options the user gave explicitly, None when unknown.
        device: where the run's tensors live.
    """

    cfg: Config
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    buffer: ReplayBuffer
    fast: FastPath
    dist: DistContext
    classes: list[str] | None
    requested: dict | None
    device: torch.device


def run_state_dict(parts: RunParts, state: RunState) -> dict:
    """Everything a checkpoint holds: model, optimizer, replay buffer, p0, RNG states (torch, numpy, Python,
    the Triton Philox state), iteration and epoch, the rollback state (``lr_scale``, ``rollbacks``), the best
    FID / accuracy so far (and before the first divergence), the config, the options the user gave, the
    architecture a resume must match, the training classes and the fast components that ran."""
    return {"model": parts.model.state_dict(), "optimizer": parts.opt.state_dict(),
            "buffer": parts.buffer.state_dict(), "p0": parts.buffer.p0.state_dict(), "rng": rng_state(),
            "iteration": state.iteration, "epoch": state.iteration / parts.cfg.iters_per_epoch,
            "lr_scale": state.lr_scale, "rollbacks": state.rollbacks,
            "config": parts.cfg.to_dict(), "requested": parts.requested, "arch": parts.cfg.arch(),
            "format": "fastebm-1", "fast_path": parts.fast.active(), "classes": parts.classes,
            "triton_rng": None if parts.fast.rng is None else parts.fast.rng.cpu(), "best": dict(state.best),
            "best_before_divergence": state.best_before_divergence}


def save_run(parts: RunParts, state: RunState, path: str) -> str:
    """Write :func:`run_state_dict` to ``path`` atomically (rank 0, every rank's buffer shard gathered); never
    a model that a rollback or an evaluation could not use: non-finite parameters, BN statistics or replay
    buffer, or finite weights whose energies / logits on a probe batch (the first B buffer samples, eval mode)
    overflow — the optimizer step after the last loss check can leave such weights. Collective under DDP.
    Returns ``path`` and records it as ``state.last_checkpoint`` (of ``state.iteration``).

    Raises:
        DivergenceError: non-finite state (nothing written).
        CheckpointError: the write failed (the previous file stays).
    """
    model, buffer, dist, batch = parts.model, parts.buffer, parts.dist, parts.cfg.batch_size
    dist.average_buffers(model)                                     # BN running stats: mean over ranks
    tensors = [*model.parameters(), *model.buffers(), buffer.samples]
    finite_now = bool(torch.stack([torch.isfinite(t).all() for t in tensors if t.is_floating_point()]).all())
    if finite_now:                                                  # 1 sync above, 1 here
        energy, logits = model_outputs(model, buffer.samples[:batch], batch)
        finite_now = bool(torch.isfinite(energy).all()) and (logits is None or bool(torch.isfinite(logits).all()))
    if not dist.all_ranks(finite_now):
        raise DivergenceError(f"refusing to write a checkpoint with non-finite values (weights, buffer, or "
                              f"the energies they give) at iteration {state.iteration}; last good checkpoint: "
                              f"{state.last_checkpoint}")
    ckpt = dist.gather_checkpoint(run_state_dict(parts, state))     # every rank's buffer shard → rank 0
    if ckpt is not None:
        atomic_save(ckpt, path)
    state.last_checkpoint, state.last_checkpoint_iteration = path, state.iteration
    return path


def restore_run(parts: RunParts, state: RunState, path: str) -> None:
    """Restore model, optimizer, buffer, p0, RNG states from ``path`` and set ``state`` (iteration, the rollback
    state, the best scores) from it (an exact resume; also the restore of a rollback). Parameters, BN buffers,
    the replay buffer and the Triton Philox state are copied into the existing tensors, so captured CUDA graphs
    stay valid.

    Raises:
        CheckpointError: missing/unreadable file, a checkpoint of another model/architecture, or of classes
            other than the training data's (:func:`class_change`).
    """
    cfg, fast = parts.cfg, parts.fast
    ckpt = load_checkpoint(path, map_location="cpu")
    changed = class_change(ckpt.get("classes"), parts.classes)
    if changed:
        raise CheckpointError(f"checkpoint {path!r} was trained on other classes than the data's now ({changed}): "
                              f"its classifier's labels would change meaning; restore the class folders' names, "
                              f"or start a new run in another --out")
    if ckpt.get("arch") != cfg.arch():
        raise CheckpointError(f"checkpoint {path!r} is for model {ckpt.get('arch')}, expected {cfg.arch()}")
    load_model_state(parts.model, ckpt, path)
    try:
        parts.opt.load_state_dict(ckpt["optimizer"])
        parts.buffer.load_state_dict(parts.dist.buffer_shard(ckpt["buffer"]))  # re-split across ranks
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path!r} does not fit this run: {e}") from None
    parts.buffer.p0 = p0_from_state_dict(ckpt["p0"]).to(parts.device)
    if fast.rng is not None and ckpt.get("triton_rng") is not None:  # a CPU run's checkpoint has none
        fast.rng.copy_(ckpt["triton_rng"])
    fast.reload()                                                   # new optimizer state and p0 objects
    state.best.update(ckpt.get("best", {}))                         # best FID / accuracy so far
    state.best_before_divergence = ckpt.get("best_before_divergence")
    state.iteration = int(ckpt["iteration"])
    state.lr_scale, state.rollbacks = float(ckpt.get("lr_scale", 1.0)), int(ckpt.get("rollbacks", 0))
    set_rng_state(ckpt["rng"])
    parts.dist.restore_rng(ckpt, state.iteration, cfg.seed)         # per-rank streams (no-op single process)
    state.last_checkpoint, state.last_checkpoint_iteration = path, state.iteration


def roll_back(parts: RunParts, state: RunState, watch: DivergenceWatch, path: str, reason: str) -> dict:
    """Recover from a divergence: restore ``path`` (ckpt.pt: model, optimizer, buffer, p0, RNG states,
    iteration), multiply ``state.lr_scale`` by ``--rollback-lr-factor``, count the rollback, draw new RNG
    streams (:func:`fastebm.run.recovery.reseed`), keep the best FID / accuracy so far (the files best_*.pt hold
    them) and, at the first rollback, note them as ``best_before_divergence`` (the paper's "best before
    diverging" protocol, reported in both ``--on-divergence`` modes), forget ``watch``'s note and rewrite
    ``path`` with them (same model, so a process killed now resumes with the lowered lr and the new streams, and
    a run stopped after ``max_rollbacks`` keeps its count). Every rank calls it together (it starts with a
    barrier). Returns the ``"rollback"`` row for the run log (:mod:`fastebm.run.recovery`'s docstring).

    Args:
        reason: the divergence message (logged).
    Raises:
        CheckpointError: ``path`` is missing or unreadable.
    """
    cfg, at = parts.cfg, state.iteration
    scale, count = state.lr_scale * cfg.rollback_lr_factor, state.rollbacks + 1
    best, before = dict(state.best), state.best_before_divergence or {"iter": at, **finite(state.best)}
    parts.dist.barrier()                                            # rank 0 has finished writing ckpt.pt
    restore_run(parts, state, path)
    state.lr_scale, state.rollbacks = scale, count                  # not the checkpoint's older values
    state.best, state.best_before_divergence = best, before         # best_*.pt on disk hold these, not the older
    reseed(parts.fast, rollback_seed(cfg.seed, parts.dist.rank, state.iteration, state.rollbacks))
    watch.clear()
    save_run(parts, state, path)                                    # the new lr scale, count and streams, at once
    return {"kind": "rollback", "iter": state.iteration, "from_iter": at, "lr": lr_at(cfg, state.iteration) * scale,
            "lr_scale": scale, "rollbacks": count, "reason": reason}


def class_change(before: list[str] | None, now: list[str] | None) -> str | None:
    """What differs between the class names a checkpoint was trained on (``before``, label i is before[i]) and
    the training data's (``now``), in a few words: ``'airplane' gone, 'plane' new: 8 of 10 labels change
    meaning``; None when they are the same, or when either side has no names (datasets without class
    folders)."""
    if before is None or now is None or list(before) == list(now):
        return None
    gone, new = [c for c in before if c not in now], [c for c in now if c not in before]
    moved = sum(a != b for a, b in zip(before, now)) + abs(len(before) - len(now))
    parts = [f"{', '.join(map(repr, names[:3]))}{' ...' if len(names) > 3 else ''} {what}"
             for names, what in ((gone, "gone"), (new, "new")) if names]
    return f"{', '.join(parts) or 'the same names in another order'}: {moved} of {len(before)} labels change meaning"
