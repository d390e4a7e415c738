"""Recovery from a divergence: notice it without a host sync, then stop or roll back.

Every iteration, on the device and without a host sync, :class:`DivergenceWatch` notes the first iteration
whose loss or mean energies are non-finite or whose |loss| exceeds ``--max-loss``. The host reads that note
every ``--check-every`` iterations (1 on CPU, ``--log-every`` on CUDA) *and* before every log row,
evaluation, sample grid and checkpoint, so a divergence between two checks is still caught before anything
is written, and a checkpoint is never taken between a divergence and its detection. Under DDP the decision
is agreed with an all-reduce, so every rank takes it together. A checkpoint with non-finite parameters or
buffer samples is refused too. Then, with ``--on-divergence``:

- ``stop``: :class:`DivergenceError` (``python -m fastebm.train`` exits 1) with a diagnostic grid
  ``samples/diverged_iter_N.png``; ckpt.pt is left as it was.
- ``rollback`` (default): :func:`fastebm.run.state.roll_back` restores ``ckpt.pt`` (model, optimizer, buffer,
  p0, RNG states, iteration), multiplies a persistent learning-rate scale by ``--rollback-lr-factor`` (stored
  in later checkpoints, so a resume keeps the lowered lr), draws new RNG streams from :func:`rollback_seed`
  so the chains and augmentations differ from the diverged attempt (the data order is a function of the
  iteration and repeats), rewrites ``ckpt.pt`` at once with them; the trainer logs a ``rollback`` row and
  goes on. After ``--max-rollbacks`` rollbacks over the whole run the next divergence stops as with ``stop``.

Nothing is re-captured by a rollback: parameters, BatchNorm buffers, the replay buffer and the Triton Philox
state are copied in place, so CUDA graphs and compiled code that read those addresses stay valid.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch

from ..data.imageset import to_uint8
from ..fastpath.fastpath import FastPath
from .distributed import RANK_SEED_STRIDE, DistContext
from .log import RunLog

ROLLBACK_SEED_STRIDE = 15_485_863  # a prime: rollback r of a run draws from its own RNG streams


class DivergenceError(RuntimeError):
    """Training diverged (non-finite or exploding loss/energies); the last good checkpoint is intact."""


def rollback_seed(seed: int, rank: int, iteration: int, rollbacks: int) -> int:
    """Seed of the RNG streams after rollback number ``rollbacks`` at ``iteration`` on ``rank``: differs from
    the diverged attempt's streams and is reproducible. Range [0, 2**31)."""
    return (seed + RANK_SEED_STRIDE * rank + 7919 * iteration + ROLLBACK_SEED_STRIDE * rollbacks) % (2 ** 31)


class DivergenceWatch:
    """The device-side note of the first diverged iteration.

    Args:
        max_loss: |loss| above this is a divergence (``--max-loss``).
    """

    def __init__(self, max_loss: float):
        self.max_loss = max_loss
        self.clear()

    def clear(self) -> None:
        """Forget what was noted (after a rollback)."""
        self._iter = self._vals = None

    def note(self, m: dict, it: int) -> None:
        """Note ``it`` if it is the first whose ``m["loss"]``, ``m["e_pos"]`` or ``m["e_neg"]`` (0-dim device
        tensors) is non-finite or whose |loss| > max_loss, with those three values. No host sync."""
        vals = torch.stack([m["loss"], m["e_pos"], m["e_neg"]]).detach().float()
        bad = ~torch.isfinite(vals).all() | (vals[0].abs() > self.max_loss)
        if self._iter is None:
            self._iter = torch.zeros((), dtype=torch.int64, device=vals.device)
            self._vals = torch.zeros(3, device=vals.device)
        first = bad & (self._iter == 0)
        self._iter = torch.where(first, it, self._iter)
        self._vals = torch.where(first, vals, self._vals)

    def first(self) -> int:
        """The first diverged iteration noted, 0 if none (one host sync)."""
        return 0 if self._iter is None else int(self._iter)

    def values(self) -> torch.Tensor:
        """(loss, E(x+), E(x-)) of the first diverged iteration, float32 on the CPU."""
        return self._vals.float().cpu()

    def describe(self, first: int, vals: torch.Tensor, detected_at: int) -> str:
        """The one-line account of a divergence at ``first`` with values ``vals`` found at ``detected_at``."""
        return (f"training diverged at iteration {first}: loss {float(vals[0]):.4g}, E(x+) {float(vals[1]):.4g}, "
                f"E(x-) {float(vals[2]):.4g} (limit |loss| <= {self.max_loss:g})"
                + (f", detected at iteration {detected_at}" if first != detected_at else ""))


def finite(best: dict) -> dict:
    """The entries of a best-so-far dict that were reached (finite), e.g. ``{"fid": 12.3, "test_acc": 0.9}``."""
    return {k: v for k, v in best.items() if math.isfinite(v)}


def raise_if_diverged(watch: DivergenceWatch, dist: DistContext, m: dict, it: int, runlog: RunLog,
          last_checkpoint: str | None) -> None:
    """Raise :class:`DivergenceError` if ``watch`` noted a divergence on any rank (one host sync and, under DDP,
    one all-reduce, so every rank decides alike), after saving a diagnostic grid of the last positive and
    negative samples (``samples/diverged_iter_N.png`` through ``runlog``). Runs every ``check_every``
    iterations and before any log row, evaluation, sample grid or checkpoint of iteration ``it``.

    Args:
        m: the iteration's metrics (device tensors ``loss``, ``e_pos``, ``e_neg``, ``_x_pos``, ``_x_neg``).
        last_checkpoint: the last good checkpoint (named in the message), None before any.
    """
    first = watch.first()
    if dist.all_ranks(first == 0):
        return
    vals = watch.values() if first else torch.stack([m["loss"], m["e_pos"], m["e_neg"]]).float().cpu()
    path = runlog.grid(f"diverged_iter_{it:07d}", to_uint8(torch.cat([m["_x_pos"][:32], m["_x_neg"][:32]])), it)
    raise DivergenceError(watch.describe(first or it, vals, it) + f"; diagnostic grid {path}; last good "
                          f"checkpoint: {last_checkpoint or 'none written yet'}")


def reseed(fast: FastPath, seed: int) -> None:
    """New RNG streams for this rank after a rollback: torch (CPU and every CUDA device), numpy, Python and
    the Triton Philox state of ``fast``, all from ``seed`` (:func:`rollback_seed` of seed, rank, iteration and
    rollback count), so the rolled-back run does not replay the diverged trajectory and is still reproducible."""
    fast.reseed(seed)                                               # torch.manual_seed + Philox [seed, 0]
    np.random.seed(seed)
    random.seed(seed)
