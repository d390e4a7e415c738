"""Triton kernels of fastebm (installed as ``fastebm.kernels``): one kernel a file, each with its
launcher, a plain PyTorch reference and a correctness check in ``tests/``.

- ``langevin``: fused SGLD/Langevin step (paper Eq. 3), Philox noise drawn in-kernel.
- ``lowrank_gaussian``: fused sampler of p0 = N(mu, U U^T + diag(d)) (paper Eq. 6).

Both take their random state as a device tensor ``rng_state = make_rng_state(seed, device)``
(int64 ``[seed, offset]``) and advance it in place, so they are CUDA-graph capturable.

Importing this package imports ``triton``: to run the kernels on CPU tensors, set
``TRITON_INTERPRET=1`` in the environment *before* that import.
"""
from ._common import make_rng_state
from .langevin import langevin_step, langevin_step_reference
from .lowrank_gaussian import (
    lowrank_gaussian_sample,
    lowrank_gaussian_sample_reference,
    lowrank_gaussian_sample_torch,
)

__all__ = [
    "make_rng_state",
    "langevin_step",
    "langevin_step_reference",
    "lowrank_gaussian_sample",
    "lowrank_gaussian_sample_reference",
    "lowrank_gaussian_sample_torch",
]
