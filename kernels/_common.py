"""Helpers shared by the fastebm Triton kernels: the device-side Philox state and input checks.

The random state of every fastebm kernel is a tiny *device* tensor ``rng_state`` (int64, shape (2,),
``[seed, offset]``).  The kernel loads both words itself, so a CUDA graph that captured the launch
reads the *current* values on every replay instead of Python ints frozen at capture time; after the
launch the launcher advances the offset in place with a device op (``rng_state[1:].add_(n)``: no
host synchronisation, capturable).  Resetting ``rng_state`` to an earlier value reproduces the draws.

Seed width: Triton's Philox (``tl.randn(seed, offsets)``, Triton >= 2.1 incl. 3.6 and 3.8) converts
the seed to uint64 and uses its low and high 32-bit words as the two Philox key words, so the whole
64-bit seed matters.  The danger of "32-bit seeds" lies elsewhere: a seed passed as a *Python int*
kernel argument is typed i32 or i64 depending on its value (and the value 1 is even specialised into
the binary), and it is frozen by graph capture.  We therefore never pass the seed as a Python int;
the kernels ``tl.load`` it from the int64 tensor.  ``make_rng_state`` accepts seeds in
[0, 2**63) (the int64 range that is non-negative) so that the stored word is unambiguous.

Counter: each normal value is drawn from the Philox counter ``offset + i`` (a 64-bit counter that
Triton splits into two 32-bit counter words), where ``i`` is the index of that value inside the
launch (see each kernel for its index scheme).  A launch that uses counters ``[0, n)`` advances the
offset by ``n``, so consecutive launches use disjoint counter ranges.
"""
from __future__ import annotations

import os

import torch

__all__ = [
    "make_rng_state",
    "rng_state_from_torch",
    "reseed_rng_state",
    "assert_rng_state",
    "advance_rng_state",
    "is_dense",
    "same_layout",
    "assert_runnable",
]


def make_rng_state(seed: int, device=None) -> torch.Tensor:
    """Create the device-side Philox state ``[seed, 0]`` used by the fastebm kernels.

    Args:
        seed: Python int in ``[0, 2**63)``; all 64 bits key Philox (two 32-bit key words).
        device: the device of the tensors the kernel will process (``"cuda"``, ``"cpu"`` for the
            Triton interpreter, a ``torch.device``); ``None`` = the current default device.

    Returns:
        ``torch.int64`` tensor of shape ``(2,)``: ``[seed, offset=0]``.  Kernels advance the offset
        in place; copy or re-create it to replay the same noise.

    """
    assert 0 <= seed < 2**63, f"seed: an int in [0, 2**63), got {seed}"
    return torch.tensor([seed, 0], dtype=torch.int64, device=device)


def rng_state_from_torch(device=None) -> torch.Tensor:
    """A Philox state ``[seed, 0]`` whose seed is drawn from torch's global generator (reproducible by
    ``torch.manual_seed``); int64 (2,) on ``device``."""
    return make_rng_state(int(torch.randint(0, 2 ** 62, (1,))), device)


def reseed_rng_state(rng_state: torch.Tensor, seed: int) -> None:
    """Reset ``rng_state`` to ``[seed, 0]`` in place (a CUDA graph that captured it sees the new seed);
    ``seed`` in ``[0, 2**63)``."""
    rng_state.copy_(make_rng_state(seed))


def assert_rng_state(rng_state: torch.Tensor, device: torch.device) -> None:
    """Assert that ``rng_state`` is an int64 (2,) contiguous tensor on ``device`` (see make_rng_state)."""
    assert (rng_state.dtype == torch.int64 and tuple(rng_state.shape) == (2,) and rng_state.is_contiguous()
            and rng_state.device == device), f"rng_state: int64 [seed, offset] on {device} (make_rng_state)"


def advance_rng_state(rng_state: torch.Tensor, n_counters: int) -> None:
    """Advance the Philox offset ``rng_state[1]`` by ``n_counters`` in place (a device op, no sync)."""
    rng_state[1:].add_(n_counters)


def is_dense(t: torch.Tensor) -> bool:
    """True when ``t`` covers exactly ``t.numel()`` consecutive storage elements without overlap
    (contiguous, channels_last, or any permutation of a contiguous tensor), so that an elementwise
    kernel may walk it in memory order as a flat array of ``numel`` elements."""
    if t.numel() <= 1:
        return True
    dims = [(st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1]
    dims.sort()
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` (same shape) place every element at the same memory index, i.e. their
    strides agree on all dimensions of size > 1 (the stride of a size-1 dimension is irrelevant)."""
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


def assert_runnable(device: torch.device) -> None:
    """Triton compiles for GPUs; CPU tensors only run through the interpreter (``TRITON_INTERPRET=1``,
    which must be set before ``triton`` is imported)."""
    assert device.type != "cpu" or os.environ.get("TRITON_INTERPRET", "0") in ("1", "true", "True"), (
        "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing triton")
