"""The whole training iteration as one graph (``--compile-step``).

:class:`fastebm.algorithm.algorithm1.Algorithm1` is Algorithm 1 as a function of tensors: the dataset indices of the
iteration and the learning rate come in, the losses come out, and everything between — batch gather and
augmentation, buffer draw with ρ-reinitialization, K SGLD steps, energies, loss, backward, optimizer
step, buffer write — is device work with static shapes. :func:`compile_step` hands that *same* callable to
``torch.compile(fullgraph=True)``; eager and compiled runs execute one definition of the algorithm.

What makes the iteration traceable in one graph:

- ``torch._dynamo.config.trace_autograd_ops``: Dynamo traces ``torch.autograd.grad`` (SGLD's input
  gradient) and ``loss.backward()`` into the graph instead of breaking it (torch ≥ 2.11);
- :func:`~fastebm.algorithm.optimizer.optimizer_step`: ``torch.optim.Optimizer.step`` inserts a graph break on purpose
(its
  ``_use_grad`` wrapper), so the step calls torch's functional SGD / Adam (``torch.optim.sgd.sgd``,
  ``torch.optim.adam.adam``: the same update code ``Optimizer.step`` runs) on the optimizer's own state,
  which :func:`~fastebm.algorithm.optimizer.init_optimizer_state` creates up front so that the first step has the shapes
  of every later one; the learning rate is a 0-dim tensor (a float would be a guard: one recompile per value of the
  warm-up schedule);
- ``fallback_random``: random ops in the compiled graph call the eager ATen kernels, so the compiled step
  draws exactly the numbers of the eager step (same data augmentation, buffer indices, p0 samples and SGLD
  noise for the same seed) — what the fast path's check (:mod:`fastebm.fastpath.selfcheck`) relies on, and what
  keeps ``--resume`` exact;
- on CUDA the compiled step runs as CUDA graphs (Inductor's ``triton.cudagraphs``, i.e. ``reduce-overhead``);
  the replay buffer, optimizer state and lr live at fixed addresses (``mark_static_address``).

Inside the compiled step the SGLD update and the p0 sampler are the plain PyTorch expressions; Inductor
fuses them into generated Triton kernels, so the hand-written kernels of ``fastebm.kernels`` serve the
other fast path (``--no-compile-step``).
"""
from __future__ import annotations

import torch

from ..algorithm.sampler import compile_mode


def step_compile_kwargs(mode: str, device_type: str) -> dict:
    """``torch.compile`` keyword arguments of the compiled step for ``--compile`` ``mode``.

    ``aot_eager``: Dynamo + AOTAutograd without code generation (tests). Otherwise Inductor with
    ``fallback_random`` (the eager random streams) and, on CUDA, CUDA graphs (``reduce-overhead``);
    ``max-autotune`` adds autotuned GEMM / convolution templates. ``off`` means ``default`` here
    (``--compile-step`` asks for compilation). Always ``fullgraph=True``, ``dynamic=False``.
    """
    if mode == "aot_eager":
        return dict(compile_mode(mode, False), fullgraph=True)
    options = {"fallback_random": True, "triton.cudagraphs": device_type == "cuda"}
    if mode == "max-autotune":
        options["max_autotune"] = True
    return {"options": options, "dynamic": False, "fullgraph": True}


def compile_step(step, mode: str, device_type: str, static: list | None = None):
    """``torch.compile`` of the training step ``step`` (a bound method of tensors → dict of tensors).

    Args:
        step: an :class:`~fastebm.algorithm.algorithm1.Algorithm1`'s ``__call__``.
        mode: the ``--compile`` value (see :func:`step_compile_kwargs`).
        device_type: ``"cuda"`` or ``"cpu"``.
        static: tensors whose storage is reused every step (replay buffer, optimizer state, lr); on CUDA
            they are marked static addresses so the CUDA graphs read and update them in place.

    Returns a callable with ``step``'s signature; compilation happens at its first call. Each call sets
    θ's gradients to None eagerly (:meth:`~fastebm.algorithm.algorithm1.Algorithm1.zero_grad`), then runs the graph.
    """
    if device_type == "cuda":
        for t in static or []:
            torch._dynamo.mark_static_address(t)
    return _TraceAutograd(torch.compile(step, **step_compile_kwargs(mode, device_type)), step.__self__.zero_grad)


class _TraceAutograd:
    """Calls a compiled step with ``trace_autograd_ops`` on (SGLD's ``autograd.grad`` and
    ``loss.backward()`` traced into the graph), scoped to these calls: other compiled functions of the
    process (the per-piece compiled network) keep torch's default. ``zero_grad`` runs first, outside the
    graph (why: :meth:`~fastebm.algorithm.algorithm1.Algorithm1.zero_grad`); the graph guards on gradients being
    None."""

    def __init__(self, fn, zero_grad):
        self.fn, self.zero_grad = fn, zero_grad

    def __call__(self, *args):
        self.zero_grad()
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return self.fn(*args)


def graph_breaks(step, *args) -> tuple[int, list[str]]:
    """Graph breaks of ``step(*args)`` (an :class:`~fastebm.algorithm.algorithm1.Algorithm1`'s ``__call__``) according
    to ``torch._dynamo.explain`` (runs the step once, eager backend, as :func:`compile_step`'s calls do):
    (count, the reason of each break)."""
    step.__self__.zero_grad()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        out = torch._dynamo.explain(step)(*args)
    return out.graph_break_count, [str(b.reason) for b in out.break_reasons]
