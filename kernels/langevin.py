"""Fused SGLD / Langevin update (M-EBM paper, Eq. 3):

    x  <-  clamp( x - alpha * clamp(dE/dx, -c, c) + sigma * eps,  lo, hi ),   eps ~ N(0, I)

Unfused PyTorch runs this as ~5 elementwise kernels (clamp g, scale, subtract, randn, axpy, clamp),
each reading and writing a full tensor, plus the separate noise tensor.  The fused kernel reads x
(fp32) and g (fp32/bf16/fp16) once and writes the new x once: 4 + 4 + 4 bytes per element with fp32 g
(4 + 2 + 4 with bf16 g); the Gaussian noise never touches memory, it is drawn in registers from
Philox (``tl.randn``).  The op is elementwise, so it runs over the flat *memory order* of dense
tensors: contiguous and channels_last inputs work alike as long as x, g and out share their strides.

Blocking: a 1-D grid of ``cdiv(numel, BLOCK)`` programs, each handling ``BLOCK`` consecutive
elements (coalesced, vectorisable loads/stores); the last block is masked.

Philox index scheme: the noise of the element at flat memory index ``i`` (``0 <= i < numel``) is
``tl.randn(seed, offset + i)`` with ``[seed, offset] = rng_state`` loaded by the kernel; after the
launch the offset is advanced by ``numel`` (in place, on the device), so consecutive calls use
disjoint counter ranges.  When ``noise_std == 0`` no noise is drawn and ``rng_state`` is untouched.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import advance_rng_state, assert_rng_state, assert_runnable, is_dense, make_rng_state, same_layout

__all__ = ["langevin_step", "make_rng_state"]  # reference: kernels/reference.py (langevin_reference)

_GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _langevin_step_kernel(
    x_ptr,  # *fp32, flat memory order of x
    g_ptr,  # *fp32 / *bf16 / *fp16, same memory layout as x
    out_ptr,  # *fp32, same layout as x (may alias x_ptr: each element is read before it is written
    #            by the same program, so in-place is safe)
    rng_ptr,  # *int64 [seed, offset]
    n_elements,
    step_size,  # alpha (fp32)
    noise_std,  # sigma (fp32)
    grad_clip,  # c (fp32), used only when CLIP_GRAD
    lo,
    hi,  # x clamp bounds (fp32), used only when CLAMP_X
    HAS_NOISE: tl.constexpr,
    CLIP_GRAD: tl.constexpr,
    CLAMP_X: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    # int64 indices: numel may exceed 2**31 and the index also feeds the 64-bit Philox counter.
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements

    # The only two reads of the kernel: x (fp32) and g (any float type, upcast in registers).
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if CLIP_GRAD:
        # NaN stays NaN through both clamps, as in torch.clamp (tl.minimum / tl.maximum drop it by
        # default): the trainer's non-finite-negatives guard must see it.
        g = tl.minimum(tl.maximum(g, -grad_clip, propagate_nan=tl.PropagateNan.ALL), grad_clip,
                       propagate_nan=tl.PropagateNan.ALL)
    x = x - step_size * g
    if HAS_NOISE:
        # Two scalar loads per program (8 bytes each, served from cache); counters offset + i.
        seed = tl.load(rng_ptr)
        base = tl.load(rng_ptr + 1)
        eps = tl.randn(seed, base + offs)
        x = x + noise_std * eps
    if CLAMP_X:
        x = tl.minimum(tl.maximum(x, lo, propagate_nan=tl.PropagateNan.ALL), hi, propagate_nan=tl.PropagateNan.ALL)
    # The only write.
    tl.store(out_ptr + offs, x, mask=mask)


def langevin_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    noise_std: float,
    rng_state: torch.Tensor,
    grad_clip: float | None = None,
    clamp: tuple[float, float] | None = (-1.0, 1.0),
    out: torch.Tensor | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """One fused SGLD/Langevin step (paper Eq. 3), noise drawn in-kernel.

    Computes ``clamp(x - step_size * clamp(grad, -grad_clip, grad_clip) + noise_std * eps, lo, hi)``
    with ``eps ~ N(0, 1)`` i.i.d. per element, in fp32, reading ``x`` and ``grad`` once and writing
    the result once.  The update *descends* the energy (``grad`` = dE/dx).

    Args:
        x: chain state, ``torch.float32``, any shape (typically (B, C, H, W) images in [-1, 1]);
            dense (contiguous, channels_last, or another permutation of a contiguous tensor).
        grad: dE/dx, same shape *and strides* as ``x``; ``float32``, ``bfloat16`` or ``float16``
            (upcast to fp32 in the kernel); same device.
        step_size: alpha, finite float (any sign is accepted; normally > 0).
        noise_std: sigma >= 0.  ``0`` skips the noise entirely (result equals the reference without
            noise, and ``rng_state`` is not advanced).
        rng_state: int64 tensor of shape (2,) ``[seed, offset]`` on the same device (see
            ``make_rng_state``).  Element at flat memory index ``i`` uses Philox counter
            ``offset + i``; after the launch ``offset += x.numel()`` in place (a device op, so the
            call is CUDA-graph capturable and each replay draws fresh noise).
        grad_clip: ``c > 0`` clamps ``grad`` to ``[-c, c]`` before the step; ``None`` = no clamp.
        clamp: ``(lo, hi)`` bounds of the result (default ``(-1, 1)``, the image range);
            ``None`` = no clamp.
        out: optional fp32 output with the same shape and strides as ``x``; may be ``x`` itself
            (in place).  Must not partially overlap ``x`` or ``grad`` otherwise.
        block: elements per program (power of two >= 16); ``None`` = 1024 on a GPU, 16384 under
            the CPU interpreter (whose cost is per program, so fewer, larger programs run faster).

    Returns:
        ``out`` (or a new tensor laid out like ``x``), ``torch.float32``.

    Inputs are checked with asserts (the library validates user options once, in ``fastebm.config.options``).
    """
    assert x.dtype == torch.float32, f"x: the chain state stays float32, got {x.dtype}"
    assert grad.dtype in _GRAD_DTYPES, f"grad: float32, bfloat16 or float16, got {grad.dtype}"
    assert x.shape == grad.shape and x.device == grad.device, "x and grad: one shape, one device"
    assert same_layout(x, grad), f"x and grad walk one memory order: strides {x.stride()} vs {grad.stride()}"
    assert is_dense(x), f"x must be dense (contiguous or channels_last), strides {x.stride()}"
    assert_runnable(x.device)
    assert_rng_state(rng_state, x.device)
    assert math.isfinite(step_size) and noise_std >= 0 and (grad_clip is None or grad_clip > 0), (
        step_size, noise_std, grad_clip)
    assert clamp is None or clamp[0] <= clamp[1], clamp
    if block is None:
        block = 16384 if x.device.type == "cpu" else 1024
    assert block >= 16 and block & (block - 1) == 0, f"block: a power of two >= 16, got {block}"
    if out is None:
        out = torch.empty_like(x)  # preserve_format keeps the strides of a dense x
    assert out.dtype == torch.float32 and out.shape == x.shape and same_layout(out, x), "out: laid out like x"

    n = x.numel()
    if n == 0:
        return out
    has_noise = noise_std != 0.0
    lo, hi = clamp if clamp is not None else (0.0, 0.0)
    grid = (triton.cdiv(n, block),)
    _langevin_step_kernel[grid](
        x, grad, out, rng_state, n,
        float(step_size), float(noise_std),
        float(grad_clip or 0.0),
        float(lo), float(hi),
        HAS_NOISE=has_noise,
        CLIP_GRAD=grad_clip is not None,
        CLAMP_X=clamp is not None,
        BLOCK=block,
        # No mul+add -> FMA contraction on the GPU: keeps every rounding step identical to the
        # unfused PyTorch reference (bitwise equality; the kernel is memory-bound, FMAs save nothing).
        # A compile option of the CUDA/HIP backends; the interpreter ignores it.
        enable_fp_fusion=False,
    )
    if has_noise:
        advance_rng_state(rng_state, n)
    return out
