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

import torch
import triton
import triton.language as tl

from ._common import (
    advance_rng_state,
    check_device_runnable,
    check_rng_state,
    is_dense,
    make_rng_state,
    same_layout,
)

__all__ = ["langevin_step", "langevin_step_reference", "make_rng_state"]

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
        g = tl.minimum(tl.maximum(g, -grad_clip), grad_clip)
    x = x - step_size * g
    if HAS_NOISE:
        # Two scalar loads per program (8 bytes each, served from cache); counters offset + i.
        seed = tl.load(rng_ptr)
        base = tl.load(rng_ptr + 1)
        eps = tl.randn(seed, base + offs)
        x = x + noise_std * eps
    if CLAMP_X:
        x = tl.minimum(tl.maximum(x, lo), hi)
    # The only write.
    tl.store(out_ptr + offs, x, mask=mask)


def _check_float(name: str, v, allow_none: bool = False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(v).__name__}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _check_clamp(clamp):
    if clamp is None:
        return None
    if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
        raise TypeError(f"clamp must be None or a (lo, hi) pair of floats, got {clamp!r}")
    lo, hi = _check_float("clamp[0]", clamp[0]), _check_float("clamp[1]", clamp[1])
    if lo > hi:
        raise ValueError(f"clamp must satisfy lo <= hi, got ({lo}, {hi})")
    return lo, hi


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

    Raises:
        TypeError: a non-tensor input, ``x``/``out`` not float32, ``grad`` not a float type,
            ``rng_state`` not int64, non-float scalars.
        ValueError: shape or stride mismatch, non-dense layout, device mismatch, CPU tensors without
            ``TRITON_INTERPRET=1``, ``noise_std < 0``, ``grad_clip <= 0``, ``lo > hi``, bad
            ``rng_state`` shape, non-finite scalars.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(grad, torch.Tensor):
        raise TypeError(
            f"x and grad must be torch.Tensors, got {type(x).__name__} and {type(grad).__name__}"
        )
    if x.dtype != torch.float32:
        raise TypeError(f"x must be torch.float32 (the chain state stays fp32), got {x.dtype}")
    if grad.dtype not in _GRAD_DTYPES:
        raise TypeError(f"grad must be float32, bfloat16 or float16, got {grad.dtype}")
    if x.shape != grad.shape:
        raise ValueError(f"x and grad must have the same shape, got {tuple(x.shape)} and {tuple(grad.shape)}")
    if x.device != grad.device:
        raise ValueError(f"x and grad must be on the same device, got {x.device} and {grad.device}")
    if not same_layout(x, grad):
        raise ValueError(
            f"x and grad must have the same strides (the kernel walks both in memory order), got "
            f"{x.stride()} and {grad.stride()}; make them both contiguous or both channels_last"
        )
    if not is_dense(x):
        raise ValueError(
            f"x must be dense (contiguous or channels_last, no gaps or overlaps), got shape "
            f"{tuple(x.shape)} with strides {x.stride()}"
        )
    check_device_runnable(x.device, "langevin_step")
    check_rng_state(rng_state, x.device)
    step_size = _check_float("step_size", step_size)
    noise_std = _check_float("noise_std", noise_std)
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    grad_clip = _check_float("grad_clip", grad_clip, allow_none=True)
    if grad_clip is not None and grad_clip <= 0:
        raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
    bounds = _check_clamp(clamp)
    if block is None:
        block = 16384 if x.device.type == "cpu" else 1024
    if isinstance(block, bool) or not isinstance(block, int) or block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block!r}")
    if out is None:
        out = torch.empty_like(x)  # preserve_format keeps the strides of a dense x
    else:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
        if out.dtype != torch.float32:
            raise TypeError(f"out must be torch.float32, got {out.dtype}")
        if out.shape != x.shape or out.device != x.device or not same_layout(out, x):
            raise ValueError(
                f"out must match x in shape, strides and device: expected {tuple(x.shape)}, "
                f"{x.stride()}, {x.device}; got {tuple(out.shape)}, {out.stride()}, {out.device}"
            )

    n = x.numel()
    if n == 0:
        return out
    has_noise = noise_std != 0.0
    lo, hi = bounds if bounds is not None else (0.0, 0.0)
    grid = (triton.cdiv(n, block),)
    _langevin_step_kernel[grid](
        x, grad, out, rng_state, n,
        step_size, noise_std,
        grad_clip if grad_clip is not None else 0.0,
        lo, hi,
        HAS_NOISE=has_noise,
        CLIP_GRAD=grad_clip is not None,
        CLAMP_X=bounds is not None,
        BLOCK=block,
        # No mul+add -> FMA contraction on the GPU: keeps every rounding step identical to the
        # unfused PyTorch reference (bitwise equality; the kernel is memory-bound, FMAs save nothing).
        # A compile option of the CUDA/HIP backends; the interpreter ignores it.
        enable_fp_fusion=False,
    )
    if has_noise:
        advance_rng_state(rng_state, n)
    return out


def langevin_step_reference(
    x: torch.Tensor,
    g: torch.Tensor,
    step_size: float,
    noise_std: float,
    noise: torch.Tensor | None = None,
    grad_clip: float | None = None,
    clamp: tuple[float, float] | None = (-1.0, 1.0),
) -> torch.Tensor:
    """Plain-PyTorch Langevin step (paper Eq. 3) with an explicit noise tensor.

    ``clamp(x - step_size * clamp(g, -grad_clip, grad_clip) + noise_std * noise, lo, hi)`` in fp32,
    in the same operation order as the kernel, which is compiled without FMA contraction, so with
    ``noise_std == 0`` / ``noise=None`` the two agree bit for bit (also given the kernel's own
    noise: ``x - a*g`` and ``+ sigma*eps`` round separately in both).

    Args:
        x: float32 tensor, any shape/layout.  g: same shape, any float dtype (upcast to fp32).
        step_size, noise_std: floats.  noise: ``N(0,1)`` tensor shaped like ``x`` (fp32) or ``None``
            (no noise term).  grad_clip: ``None`` or ``c > 0``.  clamp: ``(lo, hi)`` or ``None``.

    Returns:
        New float32 tensor shaped like ``x``.
    """
    g = g.to(torch.float32)
    if grad_clip is not None:
        g = g.clamp(-grad_clip, grad_clip)
    y = x - step_size * g
    if noise is not None and noise_std != 0.0:
        y = y + noise_std * noise.to(torch.float32)
    if clamp is not None:
        y = y.clamp(clamp[0], clamp[1])
    return y
