"""Triton kernels of fastebm: one kernel a file with its launcher, and one plain PyTorch reference per kernel
in ``reference.py`` (the library's plain path and the tests' oracle).

- ``langevin``: fused SGLD/Langevin step (paper Eq. 3), Philox noise drawn in-kernel.
- ``lowrank_gaussian``: fused sampler of p0 = N(mu, U U^T + diag(d)) (paper Eq. 6).

Both take their random state as a device tensor ``rng_state = make_rng_state(seed, device)``
(int64 ``[seed, offset]``) and advance it in place, so they are CUDA-graph capturable.

This package imports only torch; importing a kernel module (``fastebm.kernels.langevin``) imports
``triton``: to run the kernels on CPU tensors, set ``TRITON_INTERPRET=1`` in the environment *before*
that import.
"""
from ._common import make_rng_state, reseed_rng_state, rng_state_from_torch

__all__ = ["make_rng_state", "reseed_rng_state", "rng_state_from_torch"]
