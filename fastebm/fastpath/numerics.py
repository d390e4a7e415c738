"""How fastebm decides that a fast component computes what the plain path computes.

Every judgement is made against a **float64** run of the plain path on the same input, parameters and
random numbers (:func:`float64_draws`), as PyTorch's own accuracy checks do
(``torch._dynamo.utils.same(ref, res, fp64_ref)``). What a fast result may deviate from it is measured, not
assumed: the **yardstick of honest rounding** is the largest deviation among legitimate fp32 evaluations of
the plain path itself, the same computation summed in other orders. The self-check runs the plain path in
both memory layouts, NCHW and channels-last (:mod:`fastebm.fastpath.selfcheck`): the kernels of the two layouts
accumulate in different orders, and a compiler picks either (Inductor's C++ backend converts convolutions
to channels-last; the GPU fast path runs channels-last). One evaluation alone is not a yardstick: on the CPU,
ATen's BatchNorm accumulates in float64 and its NCHW convolutions in short blocks, so the NCHW path looked
5-800x more accurate than an Inductor kernel honestly is, on weight tensors and energies alike.

Two statistics are judged for each output (:func:`agree`), each against ``multiplier * yardstick + floor``:

- ``size``: how far the result is from float64, relative to the reference (or to a scale such as a chain's
  displacement). Outputs with a batch dimension take the **median over samples** (a LeakyReLU kink that one
  evaluation puts on the other side of 0 moves a few samples, a wrong kernel all of them); the weight update
  is judged **per parameter tensor**, each against its own yardstick, and fails when any tensor does: the
  update of an early convolution sums 65,536 products that nearly cancel, and was honestly 0.5 % off in
  channels-last on an AVX-512 CPU, while the energy head's is good to 1e-6, where an error of 2 % stands out.
- ``bias``: the least-squares scale of the error on the reference, s = <v − r, d> / <d, d> (d: the reference
  or the displacement). Rounding errors point every which way, so their scale is that of a random vector,
  ‖v − r‖ / ‖d‖ / √D_eff (D_eff = (Σd²)² / Σd⁴, the number of elements that carry d); the yardstick is that
  of the largest honest error. A wrong constant (a step size, a learning rate, an energy scale) is a scale
  error of its full size: this is how a chain that moves 2 % too far is caught under TF32, whose rounding
  moves every chain by several per cent of its displacement.

:data:`MULTIPLIERS` states each multiplier and the measurements behind it (bench/test_margins.py; the table
in bench/RESULTS.md): honest rounding sits at ≤ 1/3 of the limit and the errors the self-check promises to
catch (energies 3 % off, the weight update 2 % off, chains moving 2 % too far) at ≥ 3x the limit, in every
cell of the matrix (Inductor vector width 256 / 512, ATen's default and AVX2 kernels, 1 and 2 threads, three
seeds, M-EBM K = 2 and M-JEM K = 5, TF32 rounding of every convolution and matmul simulated on the CPU).

The same module gives the tests their tolerances (:func:`tolerance`): a stated bound from the number of
rounding operations, never a literal constant.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

U32 = 2.0 ** -24  # unit roundoff of float32
U64 = 2.0 ** -53  # unit roundoff of float64
# unit roundoff of TF32, the operands of a tensor-core product (10 explicit mantissa bits: 2^-(10+1)); an fp32
# operand passed on unconverted (its low 13 bits dropped, truncated) is off by < 2 U_TF32
U_TF32 = 2.0 ** -11

# limit = multiplier * yardstick + FLOOR. bench/test_margins.py, 2026-12-04, AVX-512 CPU, 30 cells on CIFAR-10
# (bench/RESULTS.md "Self-check margins"): honest rounding reached at most 1.9x its yardstick (the weight update,
# Inductor at 256-bit vectors) and the weakest injected error 39x (E(x-) 3 % off under TF32). 8 keeps rounding
# <= 1/3 of the limit (needs >= 5.6) and every injected error >= 3x it (needs <= 13): both sides ~1.4x spare.
MULTIPLIERS = {"size": 8.0, "bias": 8.0}
FLOOR = 16 * U32  # relative: what any fp32 evaluation of a value near zero may be off by


@dataclass(frozen=True)
class Agreement:
    """One statistic of one output, judged (see :func:`agree`).

    Attributes:
        name: the output (``"negatives"``, ``"weight update"``, ...); statistic: ``"size"`` or ``"bias"``.
        fast: the fast result's statistic (relative; for a grouped output, that of the worst group).
        plain: the yardstick of honest rounding for the same group (the plain evaluations' largest).
        limit: ``multiplier * plain + FLOOR``. where: the worst group's name (grouped outputs), else ``""``.
    """

    name: str
    statistic: str
    fast: float
    plain: float
    limit: float
    multiplier: float
    where: str = ""

    @property
    def ok(self) -> bool:
        """The fast statistic is within the limit (False for a non-finite one)."""
        return self.fast <= self.limit

    @property
    def ratio(self) -> float:
        """fast / limit: ≤ 1/3 is honest with the measured margin, ≥ 1 fails."""
        return self.fast / self.limit

    def __str__(self) -> str:
        what = self.name if self.statistic == "size" else f"{self.name} bias"
        at = f" ({self.where})" if self.where else ""
        return (f"{what}{at} err {self.fast:.2e} vs plain {self.plain:.2e} "
                f"(limit {self.multiplier:g}x + floor = {self.limit:.2e})")


# ------------------------------------------------------------------------------------------- statistics
def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().flatten(1)


def relative_error(value: torch.Tensor, ref64: torch.Tensor, scale: torch.Tensor | None = None,
                   per_sample: bool = False) -> float:
    """The ``size`` statistic: error of ``value`` against the float64 ``ref64`` (same shape), relative to
    ``scale`` (default ``ref64``; e.g. a chain's displacement).

    Whole tensor: ‖value − ref64‖ / ‖scale‖. ``per_sample``: rows (dimension 0) are samples and the result is
    the median over samples of ‖value_i − ref64_i‖ / ‖scale_i‖. A non-finite ``value`` gives inf. Returns a
    Python float.
    """
    scale = ref64 if scale is None else scale
    diff = value.detach().double() - ref64.detach().double()
    if not bool(torch.isfinite(diff).all()):
        return math.inf
    if not per_sample:
        return float(diff.norm() / scale.detach().double().norm().clamp_min(1e-300))
    per = diff.flatten(1).norm(dim=1) / _rows(scale).norm(dim=1).clamp_min(1e-300)
    return float(per.median())


def group_errors(values, refs64) -> list[float]:
    """The ``size`` statistic of a grouped output (the weight update: one tensor per parameter): per group
    ‖v_g − r_g‖ / max(‖r_g‖, ‖r‖·√(n_g / n)), so that a tensor whose reference update is near 0 (a bias
    in front of BatchNorm) is judged at the update's average scale, not at its own vanishing one. Lists of
    tensors of equal shapes in, a list of floats out (inf where a value is not finite)."""
    refs = [r.detach().double() for r in refs64]
    n = sum(r.numel() for r in refs)
    total = math.sqrt(sum(float(r.square().sum()) for r in refs))
    out = []
    for v, r in zip(values, refs):
        diff = v.detach().double() - r
        scale = max(float(r.norm()), total * math.sqrt(r.numel() / max(n, 1)), 1e-300)
        out.append(float(diff.norm()) / scale if bool(torch.isfinite(diff).all()) else math.inf)
    return out


def bias(value: torch.Tensor, ref64: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """The signed scale error <value − ref64, d> / <d, d>, d = ``scale`` (default ``ref64``): what a
    least-squares fit of the error on d finds (+0.02 for a result 2 % too large). Returns a Python float;
    inf for a non-finite ``value``."""
    d = (ref64 if scale is None else scale).detach().double().flatten()
    err = (value.detach().double() - ref64.detach().double()).flatten()
    if not bool(torch.isfinite(err).all()):
        return math.inf
    return float(err @ d) / max(float(d @ d), 1e-300)


def random_bias(value: torch.Tensor, ref64: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """The |:func:`bias`| that an error of the same size pointing in a random direction has on average:
    (‖value − ref64‖ / ‖d‖) / √D_eff with D_eff = (Σ d²)² / Σ d⁴ (the number of elements that carry d,
    all of them for a uniform d). The least yardstick of the bias statistic."""
    d = (ref64 if scale is None else scale).detach().double().flatten()
    err = (value.detach().double() - ref64.detach().double()).flatten()
    d2 = d.square()
    d_eff = float(d2.sum()) ** 2 / max(float(d2.square().sum()), 1e-300)
    return float(err.norm()) / max(float(d.norm()), 1e-300) / math.sqrt(max(d_eff, 1.0))


def agree(name: str, fast, plain, ref64, scale=None, per_sample: bool = False, grouped: bool = False,
          with_bias: bool = False, group_names: list[str] | None = None) -> list[Agreement]:
    """Judge a fast result against float64 with the plain path's evaluations as the yardstick (module
    docstring).

    Args:
        name: the output's name, for messages.
        fast: the fast result: a tensor, or with ``grouped`` a list of tensors (one per parameter).
        plain: honest fp32 evaluations of the plain path, each shaped like ``fast`` (a list of at least one;
            a single tensor is one evaluation).
        ref64: the float64 result of the plain path (tensor or list like ``fast``).
        scale: what errors are relative to (default ``ref64``): e.g. a chain's displacement x_K − x_0.
        per_sample: rows are samples; the size statistic is the median over samples.
        grouped: ``fast`` is a list of groups (the weight update by parameter tensor); the size statistic is
            judged per group against that group's yardstick and the worst group is reported.
        with_bias: also judge the bias statistic (over all elements).
        group_names: the groups' names for the report (parameter names).

    Returns:
        ``[size]`` or ``[size, bias]`` :class:`Agreement` s. Raises ValueError when ``plain`` is empty.
    """
    if isinstance(plain, torch.Tensor):
        plain = [plain]
    if not plain:
        raise ValueError("agree: expected at least one plain evaluation as the yardstick")
    m_size, m_bias = MULTIPLIERS["size"], MULTIPLIERS["bias"]
    if grouped:
        e_fast = group_errors(fast, ref64)
        yard = [max(g) for g in zip(*(group_errors(p, ref64) for p in plain))]
        worst = max(range(len(e_fast)), key=lambda g: e_fast[g] / (m_size * yard[g] + FLOOR))
        where = group_names[worst] if group_names else f"group {worst}"
        out = [Agreement(name, "size", e_fast[worst], yard[worst], m_size * yard[worst] + FLOOR, m_size, where)]
        flat = lambda ts: torch.cat([t.detach().double().flatten() for t in ts])  # noqa: E731
        fast, plain, ref64 = flat(fast), [flat(p) for p in plain], flat(ref64)
        scale = None
    else:
        e_fast = relative_error(fast, ref64, scale, per_sample)
        yard = max(relative_error(p, ref64, scale, per_sample) for p in plain)
        out = [Agreement(name, "size", e_fast, yard, m_size * yard + FLOOR, m_size)]
    if with_bias:
        b_plain = [bias(p, ref64, scale) for p in plain]
        shared = sum(b_plain) / len(b_plain)  # what every honest evaluation shares (e.g. clamping under TF32)
        b_fast = abs(bias(fast, ref64, scale) - shared)
        b_yard = max([abs(b - shared) for b in b_plain] + [random_bias(p, ref64, scale) for p in plain])
        out.append(Agreement(name, "bias", b_fast, b_yard, m_bias * b_yard + FLOOR, m_bias))
    return out


# ------------------------------------------------------------------------------------------- tolerances
def gamma(n: int, u: float = U32) -> float:
    """Higham's γ_n = n·u / (1 − n·u): the relative error bound of a computation with n roundings of unit
    roundoff u (a sum or dot product of n + 1 terms, n chained operations). Raises ValueError when n·u ≥ 1."""
    if n * u >= 1:
        raise ValueError(f"gamma: n·u = {n * u:g} ≥ 1, no bound")
    return n * u / (1 - n * u)


def tolerance(ops: int, magnitude: float = 1.0, u: float = U32) -> dict:
    """``rtol`` / ``atol`` for comparing two float32 results of the same formula that differ only in the
    order of their ``ops`` roundings each (one is the reference): each is within γ_ops of the exact value,
    so they are within 2·γ_ops of each other, relative to ``magnitude`` (the size of the terms; ``atol`` for
    values that cancel to near 0). For ``torch.testing.assert_close(..., **tolerance(n))``."""
    g = 2 * gamma(ops, u)
    return {"rtol": g, "atol": g * magnitude}


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
