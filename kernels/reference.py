"""The plain PyTorch reference of each fastebm kernel: exactly one per kernel, with the noise passed in.

They are the library's plain path too (:func:`fastebm.algorithm.sampler.langevin_update`, :meth:`GaussianInit.sample
<fastebm.p0.gaussian.GaussianInit.sample>`) and what ``tests/test_kernels.py`` compares each kernel against. Each
uses the same operation order as its kernel (which is compiled without FMA contraction), so on the kernel's
own noise they agree bit for bit (Langevin) or to fp32 GEMM rounding (p0). No Triton import here: the plain
path never loads Triton.
"""
from __future__ import annotations

import torch

__all__ = ["langevin_reference", "lowrank_gaussian_reference"]


def langevin_reference(x: torch.Tensor, g: torch.Tensor, step_size: float, noise_std: float,
                       noise: torch.Tensor | None = None, grad_clip: float | None = None,
                       clamp: tuple[float, float] | None = (-1.0, 1.0)) -> torch.Tensor:
    """One SGLD / Langevin step (paper Eq. 3), reference of ``kernels.langevin.langevin_step``:
    ``clamp(x − step_size · clamp(g, −grad_clip, grad_clip) + noise_std · noise, lo, hi)`` in x's dtype.

    Args:
        x: float32 chain state (float64 in a reference run), any shape / layout (e.g. (B, C, H, W) in [−1, 1]).
        g: ∂E/∂x shaped like ``x``, any float dtype (cast to x's dtype).
        step_size: α. noise_std: σ ≥ 0.
        noise: ε ~ N(0, 1) shaped like ``x``, or None (no noise term).
        grad_clip: ``c > 0`` clamps g to [−c, c]; None = no clamp. clamp: (lo, hi) of the result or None.

    Returns:
        a new tensor shaped like ``x``, of its dtype.
    """
    g = g.to(x.dtype)
    if grad_clip is not None:
        g = g.clamp(-grad_clip, grad_clip)
    y = x - step_size * g
    if noise is not None and noise_std != 0.0:
        y = y + noise_std * noise.to(x.dtype)
    if clamp is not None:
        y = y.clamp(clamp[0], clamp[1])
    return y


def lowrank_gaussian_reference(mean: torch.Tensor, U: torch.Tensor, diag_sqrt: torch.Tensor | None,
                               z: torch.Tensor, eps: torch.Tensor | None = None,
                               clamp: tuple[float, float] | None = (-1.0, 1.0)) -> torch.Tensor:
    """Samples of p0 = N(μ, U Uᵀ + diag(d)) (paper Eq. 6) from given noise, reference of
    ``kernels.lowrank_gaussian.lowrank_gaussian_sample``: ``clamp(μ + z Uᵀ + √d ⊙ ε, lo, hi)``.

    Args:
        mean: μ (D,) float32. U: (D, r) float32 (a Cholesky factor L with r = D for a full Σ).
        diag_sqrt: √d (D,) float32, or None together with ``eps`` (no diagonal part).
        z: (n, r) float32 N(0, 1). eps: (n, D) float32 N(0, 1) or None.
        clamp: (lo, hi) of the result (default the image range [−1, 1]) or None.

    Returns:
        (n, D) float32: one GEMM, then ``+ μ``, then ``+ √d ⊙ ε`` (the kernel's order).
    """
    x = mean + z @ U.T
    if eps is not None:
        x = x + diag_sqrt * eps
    if clamp is not None:
        x = x.clamp(clamp[0], clamp[1])
    return x
