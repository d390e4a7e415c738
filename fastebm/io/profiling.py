"""NVTX ranges for Nsight Systems (``--nvtx``): the ``nvtx`` package, falling back to
``torch.cuda.nvtx``; no-ops unless enabled.

Ranges (docs/fastpath.md, "Profiling"): ``data`` (batch gather + augmentation), ``p0`` (buffer draw and
ρ-reinitialization), ``sgld`` (the K-step loop; ``sgld/step`` per step, or ``sgld/graph`` for a CUDA-
graph replay), ``energy/pos`` and ``energy/neg`` (loss forwards), ``classify`` (p(y|x) forward),
``backward``, ``optimizer``.
"""
from __future__ import annotations

import contextlib

_enabled = False
_push = _pop = None


def enable(on: bool = True) -> None:
    """Turn NVTX ranges on or off for this process."""
    global _enabled, _push, _pop
    _enabled = bool(on)
    if _enabled and _push is None:
        try:
            import nvtx as _nvtx

            _push, _pop = (lambda name: _nvtx.push_range(name)), (lambda: _nvtx.pop_range())
        except ImportError:  # pragma: no cover - the nvtx package is a dependency
            import torch

            _push, _pop = torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop


def _compiling() -> bool:
    import torch

    return torch.compiler.is_compiling()


@contextlib.contextmanager
def nvtx_range(name: str):
    """``with nvtx_range("sgld"): ...`` marks a range when profiling is enabled, else does nothing.

    Inside a ``torch.compile``d region (``--compile-step``) it does nothing: a host-side range cannot be
    part of a graph, and the whole iteration is one range of the compiled step's caller."""
    if not _enabled or _compiling():
        yield
        return
    _push(name)
    try:
        yield
    finally:
        _pop()
