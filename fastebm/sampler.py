"""SGLD sampling of negatives (paper Eq. 3, Algorithm 1 lines 4–6).

    x_{k+1} = x_k − α ∂E_θ(x_k)/∂x_k + σ ε,   ε ~ N(0, I),   k = 0 … K−1

with step size α (1 in the paper) and noise σ (0.001; 0 for K ≤ 2 in the reference scripts). As in the
reference code the step size and noise are decoupled (not the α/2, √α of exact Langevin dynamics).
Options of the reference code: clamp the gradient to [−c, c], clamp x to [−1, 1] after each step.

Guarantees (tested):
- gradients are taken w.r.t. the input only: the parameters are frozen (``requires_grad=False``) while
  sampling, so no weight gradient is computed and every parameter's ``.grad`` is left untouched;
- no autograd graph is kept between steps or returned (the result is detached);
- BatchNorm layers normalize with batch statistics (``bn_mode="batch"``, as the reference code) but
  their running statistics are restored afterwards, so sampling never changes evaluation; or, with
  ``bn_mode="eval"``, sampling runs the network in eval mode.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

BN_MODES = ("batch", "eval")


@dataclass
class SGLDConfig:
    """SGLD settings.

    Attributes:
        n_steps: K ≥ 1.
        step_size: α > 0 (pixel units of the [−1, 1] range per unit energy gradient).
        noise: σ ≥ 0, standard deviation of the Gaussian noise per step.
        grad_clip: clamp ∂E/∂x elementwise to [−c, c] (None: no clamp).
        clamp_x: clamp x to [−1, 1] after each step.
        bn_mode: ``"batch"`` (batch statistics, running stats restored) or ``"eval"``.
    """

    n_steps: int = 5
    step_size: float = 1.0
    noise: float = 0.001
    grad_clip: float | None = None
    clamp_x: bool = True
    bn_mode: str = "batch"

    def __post_init__(self):
        if int(self.n_steps) != self.n_steps or self.n_steps < 1:
            raise ValueError(f"SGLD steps K: expected an integer >= 1, got {self.n_steps}")
        if self.step_size <= 0:
            raise ValueError(f"SGLD step size α: expected > 0, got {self.step_size}")
        if self.noise < 0:
            raise ValueError(f"SGLD noise σ: expected >= 0, got {self.noise}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"SGLD gradient clamp: expected > 0 or None, got {self.grad_clip}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"SGLD BatchNorm mode: expected one of {BN_MODES}, got {self.bn_mode!r}")


_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """Context in which BatchNorm layers may normalize with batch statistics but their running
    mean / var / batch count are left unchanged (so they keep estimating the data's statistics).

    Inside, each BatchNorm works on copies of its running buffers; on exit the original tensors are put
    back. No in-place write touches the originals, so autograd graphs built inside stay valid.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    names = ("running_mean", "running_var", "num_batches_tracked")
    saved = [[getattr(m, n) for n in names] for m in bns]
    for m, bufs in zip(bns, saved):
        for n, b in zip(names, bufs):
            setattr(m, n, b.clone())
    try:
        yield
    finally:
        for m, bufs in zip(bns, saved):
            for n, b in zip(names, bufs):
                setattr(m, n, b)


@contextlib.contextmanager
def sampling_mode(model: nn.Module, bn_mode: str = "batch"):
    """Context for sampling: parameters frozen, BatchNorm running statistics preserved.

    ``bn_mode="batch"`` keeps the model's mode (training BatchNorm normalizes with batch statistics)
    and restores the running statistics on exit (:func:`frozen_bn_stats`); ``"eval"`` switches the
    model to eval mode. On exit ``requires_grad`` flags and the train/eval mode are restored.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    for p in params:
        p.requires_grad_(False)
    if bn_mode == "eval":
        model.eval()
    try:
        with frozen_bn_stats(model):
            yield
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)


def energy_grad(energy_fn, x: torch.Tensor) -> torch.Tensor:
    """∂(Σ_i E(x_i))/∂x for a batch x (N, C, H, W) → (N, C, H, W); no graph kept."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(energy_fn(x).sum(), x)
    return g


def langevin_update(x: torch.Tensor, grad: torch.Tensor, cfg: SGLDConfig, noise: torch.Tensor | None = None):
    """One SGLD update (Eq. 3): clamp(x − α·clamp(g) + σ·ε). Reference path of the fused kernel.

    Args:
        x: (N, C, H, W) float32 chain state; grad: ∂E/∂x, same shape (any float dtype).
        noise: ε of x's shape; drawn from the global RNG when None and σ > 0.
    Returns a new (N, C, H, W) float32 tensor.
    """
    g = grad.float()
    if cfg.grad_clip is not None:
        g = g.clamp(-cfg.grad_clip, cfg.grad_clip)
    x = x - cfg.step_size * g
    if cfg.noise > 0:
        x = x + cfg.noise * (torch.randn_like(x) if noise is None else noise)
    return x.clamp(-1.0, 1.0) if cfg.clamp_x else x


def sgld(model: nn.Module, x0: torch.Tensor, cfg: SGLDConfig, energy_fn=None, noise=None) -> torch.Tensor:
    """Run K SGLD steps from x0 (Algorithm 1 lines 4–6).

    Args:
        model: the :class:`~fastebm.model.EnergyModel` (frozen and BN-protected while sampling).
        x0: (N, C, H, W) float32 initial chain states in [−1, 1].
        cfg: :class:`SGLDConfig`.
        energy_fn: x → E(x) (N,); defaults to ``model.energy``.
        noise: optional sequence of K noise tensors ε_k (tests); drawn from the global RNG otherwise.

    Returns:
        x_K: (N, C, H, W) float32, detached.
    """
    energy_fn = model.energy if energy_fn is None else energy_fn
    x = x0.detach().float()
    with sampling_mode(model, cfg.bn_mode):
        for k in range(cfg.n_steps):
            g = energy_grad(energy_fn, x)
            x = langevin_update(x, g, cfg, None if noise is None else noise[k])
    return x.detach()
