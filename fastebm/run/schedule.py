"""The learning-rate schedule: linear warm-up, then a step decay at fixed epochs (mebm ``train_maebm.py``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.options import Config


def lr_at(cfg: Config, it: int) -> float:
    """Learning rate at iteration ``it`` (0-based): lr · it / warmup_iters while it < warmup_iters (so 0 at
    the first iteration, as mebm ``train_maebm.py`` and JEM ``train_wrn_ebm.py``: ``lr * cur_iter /
    warmup_iters``), then ×decay_rate at the start of each epoch in ``decay_epochs``."""
    lr = cfg.lr * cfg.decay_rate ** sum(it >= e * cfg.iters_per_epoch for e in cfg.decay_epochs)
    if it < cfg.warmup_iters:
        lr *= it / cfg.warmup_iters
    return lr


def decays_after_end(cfg: Config) -> list[int]:
    """The epochs of ``cfg.decay_epochs`` at which :func:`lr_at` never decays in a run of ``cfg.epochs`` epochs,
    sorted: a decay at epoch e applies from iteration e · iters_per_epoch on, and the run's last iteration is
    epochs · iters_per_epoch − 1, so every e ≥ epochs is never reached (e.g. the ``imagenet32`` preset: 50
    epochs, paper Section 5, with the CIFAR scripts' decays at 60 / 120 / 180)."""
    return sorted(e for e in cfg.decay_epochs if e >= cfg.epochs)
