"""Fused low-rank-plus-diagonal Gaussian sampler for the informative initialisation of the chains
(M-EBM paper, Eq. 6: p0 = N(mu, Sigma)), with Sigma approximated as ``U U^T + diag(d)``:

    x[i, :] = clamp( mu + U z_i + sqrt(d) * eps_i,  lo, hi ),   z_i ~ N(0, I_r),  eps_i ~ N(0, I_D)

for ``i = 0..n-1``.  In matrix form ``X = 1 mu^T + Z U^T + E diag(sqrt d)`` with ``Z`` (n, r) and
``E`` (n, D).

Unfused PyTorch materialises Z and E in memory (randn, randn, GEMM, two adds, clamp: ~6 kernels and
~4 full (n, D) round trips).  Here one kernel draws Z and E in registers (Philox, ``tl.randn``), does
the rank-r product with ``tl.dot`` and writes X once: the only large memory stream is the 4*n*D-byte
output; mu, sqrt(d) (4*D bytes each) and U (4*D*r bytes) are re-read once per row tile and stay in
L2.

Blocking: the (n, D) output is tiled into BLOCK_M x BLOCK_N tiles, one program per tile (2-D grid:
axis 0 over row tiles, axis 1 over column tiles).  Each program loops over the rank dimension in
steps of BLOCK_K: it draws its (BLOCK_M, BLOCK_K) tile of Z, loads the (BLOCK_K, BLOCK_N) tile of
U^T and accumulates ``tl.dot`` in fp32.  ``tl.dot`` needs every block dimension >= 16, so r and D are
padded inside the kernel: U^T loads are masked to 0 outside ``k < r`` / ``col < D`` (and Z is zeroed
for ``k >= r``), so any r >= 1 and any D work.

Philox index scheme (``[seed, offset] = rng_state``, loaded by the kernel):
    eps[i, j] = tl.randn(seed, offset + i * D + j)            0 <= i < n, 0 <= j < D
    z[i, k]   = tl.randn(seed, offset + n * D + i * r + k)    0 <= i < n, 0 <= k < r
Z is indexed by (row, k) only, so every column tile of the same rows recomputes the *same* z_i.
After the launch the offset advances by ``n * (D + r)`` (in place, on the device): consecutive calls
use disjoint counter ranges.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import advance_rng_state, assert_rng_state, assert_runnable, make_rng_state

__all__ = ["lowrank_gaussian_sample", "make_rng_state"]  # reference: kernels/reference.py

_INPUT_PRECISIONS = ("ieee", "tf32", "tf32x3")


@triton.jit
def _lowrank_gaussian_kernel(
    mean_ptr,  # *fp32 (D,)
    u_ptr,  # *fp32 (D, R), strides (stride_ud, stride_ur)
    dsq_ptr,  # *fp32 (D,) = sqrt(d)
    out_ptr,  # *fp32 (n, D) contiguous
    z_ptr,  # *fp32 (n, R) contiguous, written only when WRITE_NOISE
    eps_ptr,  # *fp32 (n, D) contiguous, written only when WRITE_NOISE
    rng_ptr,  # *int64 [seed, offset]
    n,
    D,
    # R is a compile-time constant (one compilation per rank, fixed for a run): the K loop's bound is
    # then a Python int, also under the Triton interpreter, whose runtime scalars are 1-element numpy
    # arrays that Triton 3.6 turns into ints with int(array), which NumPy >= 2.4 rejects.
    R: tl.constexpr,
    nD,  # n * D, computed on the host in Python ints (no int32 overflow)
    stride_ud,
    stride_ur,
    lo,
    hi,
    CLAMP: tl.constexpr,
    WRITE_NOISE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # int64 row indices: they feed the 64-bit Philox counters and the output offsets (n*D may
    # exceed 2**31).
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    col_ok = cols < D

    seed = tl.load(rng_ptr)
    base = tl.load(rng_ptr + 1)

    # ---- low-rank part: acc = Z[rows, :] @ U[cols, :]^T, accumulated over r in BLOCK_K steps ----
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, R, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < R
        # z drawn by (row, k) only -> identical in every column tile of these rows.
        z = tl.randn(seed, base + nD + rows[:, None] * R + ks[None, :])
        z = tl.where(row_ok[:, None] & k_ok[None, :], z, 0.0)
        # U^T tile (BLOCK_K, BLOCK_N); zero padding for k >= R and col >= D.
        ut = tl.load(
            u_ptr + cols[None, :] * stride_ud + ks[:, None] * stride_ur,
            mask=k_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(z, ut, acc, input_precision=INPUT_PRECISION)
        if WRITE_NOISE:
            # debug output: only the first column tile writes z (the others hold the same values).
            tl.store(
                z_ptr + rows[:, None] * R + ks[None, :],
                z,
                mask=row_ok[:, None] & k_ok[None, :] & (pid_n == 0),
            )

    # ---- diagonal part and mean ----
    mean = tl.load(mean_ptr + cols, mask=col_ok, other=0.0)
    dsq = tl.load(dsq_ptr + cols, mask=col_ok, other=0.0)
    offs = rows[:, None] * D + cols[None, :]
    eps = tl.randn(seed, base + offs)
    x = mean[None, :] + acc
    x = x + dsq[None, :] * eps
    if CLAMP:
        x = tl.minimum(tl.maximum(x, lo, propagate_nan=tl.PropagateNan.ALL), hi,
                       propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in torch.clamp
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(out_ptr + offs, x, mask=mask)
    if WRITE_NOISE:
        tl.store(eps_ptr + offs, eps, mask=mask)


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def lowrank_gaussian_sample(
    mean: torch.Tensor,
    U: torch.Tensor,
    diag_sqrt: torch.Tensor,
    n: int,
    rng_state: torch.Tensor,
    clamp: tuple[float, float] | None = (-1.0, 1.0),
    out: torch.Tensor | None = None,
    input_precision: str = "ieee",
    return_noise: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
):
    """Draw ``n`` samples of ``N(mean, U U^T + diag(diag_sqrt**2))`` (paper Eq. 6) in one kernel.

    ``x_i = clamp(mean + U z_i + diag_sqrt * eps_i, lo, hi)`` with ``z_i ~ N(0, I_r)``,
    ``eps_i ~ N(0, I_D)`` drawn in-kernel from Philox (index scheme in the module docstring).

    Args:
        mean: (D,) float32 contiguous, mu (e.g. the flattened per-pixel data mean, in [-1, 1]).
        U: (D, r) float32, r >= 1, any strides: low-rank covariance factor.
        diag_sqrt: (D,) float32 contiguous, ``sqrt(d)`` (>= 0; not checked on the device).
        n: number of samples, int >= 0.
        rng_state: int64 (2,) ``[seed, offset]`` on the same device (see ``make_rng_state``);
            advanced in place by ``n * (D + r)`` after the launch (device op, graph capturable).
        clamp: ``(lo, hi)`` output bounds (default ``(-1, 1)``, the image range) or ``None``.
        out: optional (n, D) float32 contiguous output on the same device.
        input_precision: ``tl.dot`` precision for the fp32 product ``Z U^T``: ``"ieee"`` (default,
            exact fp32 FMAs), ``"tf32"`` (tensor cores, ~1e-3 relative error) or ``"tf32x3"``.
            The CPU interpreter always computes in fp32.
        return_noise: debug/testing option: also return the kernel's own ``z`` (n, r) and
            ``eps`` (n, D) (float32, written by the same launch), so the result can be compared with
            ``reference.lowrank_gaussian_reference`` on identical noise.
        block_m, block_n: output tile size (powers of two >= 16); ``None`` = 64 x 64 on a GPU,
            256 x 256 (capped by the padded sizes) under the CPU interpreter.

    Returns:
        ``x`` of shape (n, D) float32 contiguous (reshape to images as needed), or
        ``(x, z, eps)`` when ``return_noise``.

    Inputs are checked with asserts (the library validates user options once, in ``fastebm.config.options``).
    """
    D, R = U.shape
    device = mean.device
    for name, t in (("mean", mean), ("diag_sqrt", diag_sqrt)):
        assert t.dtype == torch.float32 and t.shape == (D,) and t.is_contiguous(), f"{name}: contiguous ({D},) fp32"
        assert t.device == device == U.device, "mean, U and diag_sqrt: one device"
    assert U.dtype == torch.float32 and R >= 1, f"U: (D, r >= 1) float32, got {tuple(U.shape)} {U.dtype}"
    assert n >= 0, n
    assert_runnable(device)
    assert_rng_state(rng_state, device)
    assert clamp is None or clamp[0] <= clamp[1], clamp
    assert input_precision in _INPUT_PRECISIONS, input_precision
    lo, hi = (float(clamp[0]), float(clamp[1])) if clamp is not None else (0.0, 0.0)
    if out is None:
        out = torch.empty((n, D), dtype=torch.float32, device=device)
    assert out.dtype == torch.float32 and out.shape == (n, D) and out.is_contiguous() and out.device == device
    cpu = device.type == "cpu"
    if block_m is None:
        block_m = min(256, max(16, _next_pow2(n))) if cpu else 64
    if block_n is None:
        block_n = min(256, max(16, _next_pow2(D))) if cpu else 64
    assert all(b >= 16 and b & (b - 1) == 0 for b in (block_m, block_n)), "blocks: powers of two >= 16 (tl.dot)"
    block_k = min(64, max(16, _next_pow2(R)))

    if return_noise:
        z = torch.empty((n, R), dtype=torch.float32, device=device)
        eps = torch.empty((n, D), dtype=torch.float32, device=device)
    else:
        z = eps = out  # never written (WRITE_NOISE=False); any valid pointer will do
    if n > 0 and D > 0:
        grid = (triton.cdiv(n, block_m), triton.cdiv(D, block_n))
        _lowrank_gaussian_kernel[grid](
            mean, U, diag_sqrt, out, z, eps, rng_state,
            n, D, R, n * D, U.stride(0), U.stride(1), lo, hi,
            CLAMP=clamp is not None,
            WRITE_NOISE=return_noise,
            INPUT_PRECISION=input_precision,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            # no FMA contraction of mean + acc + dsq * eps: same roundings as the torch formula
            enable_fp_fusion=False,
        )
        advance_rng_state(rng_state, n * (D + R))
    if return_noise:
        return out, z, eps
    return out
