"""What a training run holds, written to and restored from its checkpoint: model, optimizer, replay buffer,
p0, RNG states, iteration, the rollback state and the best scores (files: :mod:`fastebm.checkpoint`).

``tr`` below is a :class:`fastebm.trainer.Trainer` (read and written through its attributes).
"""
from __future__ import annotations

import torch

from .checkpoint import CheckpointError, atomic_save, load_checkpoint, load_model_state, rng_state, set_rng_state
from .model import model_outputs
from .p0 import p0_from_state_dict
from .recovery import DivergenceError


def trainer_state(tr) -> dict:
    """Everything a checkpoint of ``tr`` holds: model, optimizer, replay buffer, p0, RNG states (torch,
    numpy, Python, the Triton Philox state), iteration and epoch, the rollback state (``lr_scale``,
    ``rollbacks``), the best FID / accuracy so far (and before the first divergence), the config, the
    options the user gave, the architecture a resume must match, the training classes and the fast
    components that ran."""
    return {"model": tr.model.state_dict(), "optimizer": tr.opt.state_dict(),
            "buffer": tr.buffer.state_dict(), "p0": tr.p0.state_dict(), "rng": rng_state(),
            "iteration": tr.iteration, "epoch": tr.iteration / tr.cfg.iters_per_epoch,
            "lr_scale": tr.lr_scale, "rollbacks": tr.rollbacks,
            "config": tr.cfg.to_dict(), "requested": tr.requested, "arch": tr.cfg.arch(),
            "format": "fastebm-1", "fast_path": tr.fast.active(), "classes": tr.train_data.classes,
            "triton_rng": None if tr.fast.rng is None else tr.fast.rng.cpu(), "best": dict(tr.best),
            "best_before_divergence": tr.best_before_divergence}


def save_trainer(tr, path: str) -> str:
    """Write :func:`trainer_state` of ``tr`` to ``path`` atomically (rank 0, every rank's buffer shard
    gathered); never a model that a rollback or an evaluation could not use: non-finite parameters, BN
    statistics or replay buffer, or finite weights whose energies / logits on a probe batch (the first B buffer
    samples, eval mode) overflow — the optimizer step after the last loss check can leave such weights.
    Collective under DDP. Returns ``path`` and records it as ``tr.last_checkpoint``.

    Raises:
        DivergenceError: non-finite state (nothing written).
        CheckpointError: the write failed (the previous file stays).
    """
    tr.dist.average_buffers(tr.model)                               # BN running stats: mean over ranks
    tensors = [*tr.model.parameters(), *tr.model.buffers(), tr.buffer.samples]
    finite = bool(torch.stack([torch.isfinite(t).all() for t in tensors if t.is_floating_point()]).all())  # 1 sync
    if finite:
        energy, logits = model_outputs(tr.model, tr.buffer.samples[: tr.cfg.batch_size], tr.cfg.batch_size)
        finite = bool(torch.isfinite(energy).all()) and (logits is None or bool(torch.isfinite(logits).all()))
    if not tr.dist.all_ranks(finite):
        raise DivergenceError(f"refusing to write a checkpoint with non-finite values (weights, buffer, or "
                              f"the energies they give) at iteration {tr.iteration}; last good checkpoint: "
                              f"{tr.last_checkpoint}")
    state = tr.dist.gather_checkpoint(trainer_state(tr))            # every rank's buffer shard → rank 0
    if state is not None:
        atomic_save(state, path)
    tr.last_checkpoint, tr.last_checkpoint_iteration = path, tr.iteration
    return path


def restore_trainer(tr, path: str) -> None:
    """Restore model, optimizer, buffer, p0, RNG states, iteration, the rollback state and the best scores of
    ``tr`` from ``path`` (an exact resume; also the restore of a rollback). Parameters, BN buffers, the replay
    buffer and the Triton Philox state are copied into the existing tensors, so captured CUDA graphs stay valid.

    Raises:
        CheckpointError: missing/unreadable file, a checkpoint of another model/architecture, or of classes
            other than the training data's (:func:`class_change`).
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    changed = class_change(ckpt.get("classes"), tr.train_data.classes)
    if changed:
        raise CheckpointError(f"checkpoint {path!r} was trained on other classes than the data's now ({changed}): "
                              f"its classifier's labels would change meaning; restore the class folders' names, "
                              f"or start a new run in another --out")
    if ckpt.get("arch") != tr.cfg.arch():
        raise CheckpointError(f"checkpoint {path!r} is for model {ckpt.get('arch')}, expected {tr.cfg.arch()}")
    load_model_state(tr.model, ckpt, path)
    try:
        tr.opt.load_state_dict(ckpt["optimizer"])
        tr.buffer.load_state_dict(tr.dist.buffer_shard(ckpt["buffer"]))  # re-split across ranks
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path!r} does not fit this run: {e}") from None
    tr.buffer.p0 = p0_from_state_dict(ckpt["p0"]).to(tr.device)
    if tr.fast.rng is not None and ckpt.get("triton_rng") is not None:  # a CPU run's checkpoint has none
        tr.fast.rng.copy_(ckpt["triton_rng"])
    tr.fast.reload()                                                # new optimizer state and p0 objects
    tr.best.update(ckpt.get("best", {}))                            # best FID / accuracy so far
    tr.best_before_divergence = ckpt.get("best_before_divergence")
    tr.iteration = int(ckpt["iteration"])
    tr.lr_scale, tr.rollbacks = float(ckpt.get("lr_scale", 1.0)), int(ckpt.get("rollbacks", 0))
    set_rng_state(ckpt["rng"])
    tr.dist.restore_rng(ckpt, tr.iteration, tr.cfg.seed)            # per-rank streams (no-op single process)
    tr.last_checkpoint, tr.last_checkpoint_iteration = path, tr.iteration


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
