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

from ._common import advance_rng_state, check_device_runnable, check_rng_state, make_rng_state

__all__ = [
    "lowrank_gaussian_sample",
    "lowrank_gaussian_sample_reference",
    "lowrank_gaussian_sample_torch",
    "make_rng_state",
]

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
    # arrays that Triton 3.6 turns into ints with int(array), which NumPy >= 2.4 rejects (issue 11).
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
        x = tl.minimum(tl.maximum(x, lo), hi)
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(out_ptr + offs, x, mask=mask)
    if WRITE_NOISE:
        tl.store(eps_ptr + offs, eps, mask=mask)


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _check_vec(name: str, t, D_expected: int | None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be torch.float32, got {t.dtype}")
    if t.dim() != 1 or (D_expected is not None and t.shape[0] != D_expected):
        exp = f"({D_expected},)" if D_expected is not None else "(D,)"
        raise ValueError(f"{name} must have shape {exp}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got stride {t.stride()}")


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
            ``lowrank_gaussian_sample_torch`` on identical noise.
        block_m, block_n: output tile size (powers of two >= 16); ``None`` = 64 x 64 on a GPU,
            256 x 256 (capped by the padded sizes) under the CPU interpreter.

    Returns:
        ``x`` of shape (n, D) float32 contiguous (reshape to images as needed), or
        ``(x, z, eps)`` when ``return_noise``.

    Raises:
        TypeError: non-tensor inputs, non-float32 tensors, non-int ``n``, ``rng_state`` not int64.
        ValueError: shape mismatch (mean/diag_sqrt not (D,), U not (D, r) with r >= 1), non-contiguous
            mean/diag_sqrt/out, device mismatch, CPU tensors without ``TRITON_INTERPRET=1``,
            ``n < 0``, ``lo > hi``, unknown ``input_precision``, bad block sizes.
    """
    if not isinstance(U, torch.Tensor):
        raise TypeError(f"U must be a torch.Tensor, got {type(U).__name__}")
    if U.dtype != torch.float32:
        raise TypeError(f"U must be torch.float32, got {U.dtype}")
    if U.dim() != 2 or U.shape[1] < 1:
        raise ValueError(f"U must have shape (D, r) with r >= 1, got {tuple(U.shape)}")
    D, R = U.shape
    _check_vec("mean", mean, D)
    _check_vec("diag_sqrt", diag_sqrt, D)
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be a Python int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    device = mean.device
    if U.device != device or diag_sqrt.device != device:
        raise ValueError(
            f"mean, U and diag_sqrt must be on one device, got {mean.device}, {U.device}, {diag_sqrt.device}"
        )
    check_device_runnable(device, "lowrank_gaussian_sample")
    check_rng_state(rng_state, device)
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError(f"clamp must be None or a (lo, hi) pair of floats, got {clamp!r}")
        lo, hi = float(clamp[0]), float(clamp[1])
        if not lo <= hi:
            raise ValueError(f"clamp must satisfy lo <= hi, got ({lo}, {hi})")
    else:
        lo, hi = 0.0, 0.0
    if input_precision not in _INPUT_PRECISIONS:
        raise ValueError(f"input_precision must be one of {_INPUT_PRECISIONS}, got {input_precision!r}")
    if out is None:
        out = torch.empty((n, D), dtype=torch.float32, device=device)
    else:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
        if out.dtype != torch.float32:
            raise TypeError(f"out must be torch.float32, got {out.dtype}")
        if tuple(out.shape) != (n, D) or out.device != device or not out.is_contiguous():
            raise ValueError(
                f"out must be a contiguous ({n}, {D}) tensor on {device}, got shape {tuple(out.shape)}, "
                f"stride {out.stride()}, device {out.device}"
            )
    cpu = device.type == "cpu"
    if block_m is None:
        block_m = min(256, max(16, _next_pow2(n))) if cpu else 64
    if block_n is None:
        block_n = min(256, max(16, _next_pow2(D))) if cpu else 64
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if isinstance(b, bool) or not isinstance(b, int) or b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot needs >= 16), got {b!r}")
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


def lowrank_gaussian_sample_torch(
    mean: torch.Tensor,
    U: torch.Tensor,
    diag_sqrt: torch.Tensor,
    z: torch.Tensor,
    eps: torch.Tensor,
    clamp: tuple[float, float] | None = (-1.0, 1.0),
) -> torch.Tensor:
    """Plain-PyTorch formula with explicit noise: ``clamp(mean + z @ U^T + diag_sqrt * eps, lo, hi)``.

    Args: mean (D,), U (D, r), diag_sqrt (D,), z (n, r), eps (n, D), all float32 on one device;
    clamp ``(lo, hi)`` or ``None``.  Returns (n, D) float32.  Same operation order as the kernel
    (one GEMM, then ``+ mean``, then ``+ diag_sqrt * eps``), so results agree to fp32 GEMM rounding.
    """
    x = mean + z @ U.T
    x = x + diag_sqrt * eps
    if clamp is not None:
        x = x.clamp(clamp[0], clamp[1])
    return x


def lowrank_gaussian_sample_reference(
    mean: torch.Tensor,
    U: torch.Tensor,
    diag_sqrt: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
    clamp: tuple[float, float] | None = (-1.0, 1.0),
) -> torch.Tensor:
    """Reference sampler: ``torch.distributions.LowRankMultivariateNormal(mean, cov_factor=U,
    cov_diag=diag_sqrt**2).rsample((n,))``, then the optional clamp.

    ``rsample`` has no ``generator`` argument; when ``generator`` is given, it is used by swapping
    its state into the default generator of the device inside ``torch.random.fork_rng`` and storing
    the advanced state back into ``generator`` (the global RNG is left untouched).

    Args: mean (D,), U (D, r), diag_sqrt (D,) float32 with ``diag_sqrt > 0`` (the distribution
    validates ``cov_diag > 0``); n int.  Returns (n, D) float32.
    Raises: ValueError from ``torch.distributions`` for invalid parameters.
    """
    dist = torch.distributions.LowRankMultivariateNormal(mean, cov_factor=U, cov_diag=diag_sqrt**2)
    if generator is None:
        x = dist.rsample((n,))
    else:
        dev = mean.device
        cuda = dev.type == "cuda"
        with torch.random.fork_rng(devices=[dev] if cuda else []):
            if cuda:
                torch.cuda.set_rng_state(generator.get_state(), dev)
            else:
                torch.set_rng_state(generator.get_state())
            x = dist.rsample((n,))
            generator.set_state(torch.cuda.get_rng_state(dev) if cuda else torch.get_rng_state())
    if clamp is not None:
        x = x.clamp(clamp[0], clamp[1])
    return x
