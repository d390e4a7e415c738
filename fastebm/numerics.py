"""How fastebm decides that a fast component computes the same thing as the plain path.

The criterion is the one of PyTorch's own accuracy checks (``torch._dynamo.utils.same(ref, res, fp64_ref,
multiplier)``, used by its benchmark suites): run the plain path once more in **float64** on the same
input, parameters and random numbers, and accept the fast result when its error against that float64
result is within a multiple of the **plain fp32 path's own error** against it, plus a floor for values
near zero::

    err(fast) <= multiplier * err(plain fp32) + floor

A fixed tolerance cannot tell an Inductor kernel that sums in another order (or on another vector width,
thread count or GPU) from a wrong kernel; the plain path's own error is the yardstick of honest rounding.

Errors are relative and robust to one effect of this model family. LeakyReLU has a kink at 0: when a
pre-activation lies within rounding of 0, two correct fp32 evaluations can put it on different sides, and
that sample's input gradient then differs by ~(1 − 0.2) of the upstream gradient at one pixel, and through
train-mode BatchNorm's batch statistics every other sample's by a little. So for outputs with a batch
dimension the error is the **median over samples** of the per-sample relative error (a flip in a few
samples does not move it; a wrong kernel moves every sample), and the multiplier of kinked outputs (input
gradients, SGLD chains) is larger than that of smooth ones. :data:`MULTIPLIERS` states each value and the
measurement behind it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

U32 = 2.0 ** -24  # unit roundoff of float32

# err(fast) <= multiplier * err(plain fp32) + FLOOR (all relative errors)
MULTIPLIERS = {
    # smooth outputs (energies, logits, loss terms, the weight update, BatchNorm statistics): a fast path may
    # lose one decimal digit against the plain path. On CPU, ATen's BatchNorm accumulates in float64 and
    # Inductor in float32: Inductor's energies were measured 5x the eager error (median over samples,
    # WRN-10-1, batch 64); a wrong kernel is >= 1e4x (a 1 % error against ~1e-6).
    "smooth": 10.0,
    # input gradients and SGLD chains (median over samples): a LeakyReLU kink flip in one sample raises every
    # other sample's error through the BatchNorm batch statistics; one flip was measured at 38x the eager
    # median (WRN-10-1). A 1 % gradient error is still >= 80x the allowance.
    "kinked": 100.0,
}
FLOOR = 16 * U32  # relative: what any fp32 evaluation of a value near zero may be off by


@dataclass(frozen=True)
class Agreement:
    """The outcome of one comparison (see :func:`agree`): relative errors against float64."""

    name: str
    fast: float      # err(fast)
    plain: float     # err(plain fp32)
    budget: float    # multiplier * plain + floor
    multiplier: float

    @property
    def ok(self) -> bool:
        """The fast error is within the budget (False for a non-finite fast error)."""
        return self.fast <= self.budget

    def __str__(self) -> str:
        return (f"{self.name} err {self.fast:.2e} vs plain {self.plain:.2e} "
                f"(limit {self.multiplier:g}x + floor = {self.budget:.2e})")


def relative_error(value: torch.Tensor, ref64: torch.Tensor, scale: torch.Tensor | None = None,
                   per_sample: bool = False) -> float:
    """Error of ``value`` against the float64 ``ref64`` (same shape), relative to ``scale`` (default:
    ``ref64``; e.g. the displacement of a chain, or of the weights in one update).

    Whole tensor: ‖value − ref64‖ / ‖scale‖ (RMSE over RMS). ``per_sample``: rows (dimension 0) are
    samples, and the result is the median over samples of ‖value_i − ref64_i‖ / ‖scale_i‖. A non-finite
    ``value`` gives inf. Returns a Python float.
    """
    scale = ref64 if scale is None else scale
    diff = value.detach().double() - ref64.detach().double()
    if not bool(torch.isfinite(diff).all()):
        return float("inf")
    scale = scale.detach().double()
    if not per_sample:
        return float(diff.norm() / scale.norm().clamp_min(1e-300))
    per = diff.flatten(1).norm(dim=1) / scale.flatten(1).norm(dim=1).clamp_min(1e-300)
    return float(per.median())


def agree(name: str, fast: torch.Tensor, plain: torch.Tensor, ref64: torch.Tensor, kind: str = "smooth",
          scale: torch.Tensor | None = None, per_sample: bool = False) -> Agreement:
    """Compare a fast result and the plain fp32 result with the plain path's float64 result (module
    docstring). ``kind`` picks the multiplier (:data:`MULTIPLIERS`); ``scale`` and ``per_sample`` as in
    :func:`relative_error`."""
    m = MULTIPLIERS[kind]
    e_fast = relative_error(fast, ref64, scale, per_sample)
    e_plain = relative_error(plain, ref64, scale, per_sample)
    return Agreement(name, e_fast, e_plain, m * e_plain + FLOOR, m)


# ------------------------------------------------------------------------------------------- float64 runs
_FLOAT_DRAWS = {"randn", "rand", "randn_like", "rand_like", "normal_", "uniform_", "normal"}


class _Float32Draws(TorchDispatchMode):
    """Random ops that would produce float64 produce float32 and are widened, so a float64 run consumes the
    generator exactly as the float32 run and sees the same numbers."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = func._schema.name.split("::")[-1]
        if name not in _FLOAT_DRAWS:
            return func(*args, **kwargs)
        if name.endswith("_"):  # in place on a float64 tensor: draw into a float32 copy
            target = args[0]
            if target.dtype != torch.float64:
                return func(*args, **kwargs)
            tmp = torch.empty_like(target, dtype=torch.float32)
            func(tmp, *args[1:], **kwargs)
            return target.copy_(tmp)
        if name.endswith("_like"):
            if args[0].dtype != torch.float64 and kwargs.get("dtype") != torch.float64:
                return func(*args, **kwargs)
            kwargs["dtype"] = torch.float32
            return func(*args, **kwargs).to(torch.float64)
        if kwargs.get("dtype", torch.get_default_dtype()) != torch.float64:
            return func(*args, **kwargs)
        kwargs["dtype"] = torch.float32
        return func(*args, **kwargs).to(torch.float64)


@contextlib.contextmanager
def float64_draws():
    """Context for the float64 reference run: random draws in float32 (then widened), so that the run
    draws the same numbers as the float32 run it checks from the same generator state."""
    with _Float32Draws():
        yield
