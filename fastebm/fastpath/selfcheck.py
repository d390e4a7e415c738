"""The fast path's checks: each fast component against the plain path and its float64 run.

Every check runs a fast component once on the run's own state (the first B replay-buffer samples, the
iteration's batches, the parameters) and the same computation on the plain path: in float64, and in fp32 in
both memory layouts (NCHW and channels-last, the yardstick of honest rounding), from the same random state.
:func:`fastebm.fastpath.numerics.agree` then judges each output (module docstring there: a ``size`` statistic against
the plain evaluations' largest error, per sample or per weight tensor, and for chains a ``bias`` statistic
that catches a wrong step size below TF32's rounding). The same checks serve the run-time self-check
(``--fast-path``, :class:`fastebm.fastpath.fastpath.FastPath`), the tests and the benchmarks (``strict`` mode,
bench/test_margins.py). A check returns ``(ok, detail, margin)``; the caller restores the run's state.

==================  =====================================================================================
component           what is compared
==================  =====================================================================================
``compile_step``    one compiled iteration vs the same iteration eagerly (same precision): the negatives
                    x− per sample relative to the chain's displacement (size and bias); then, from the
                    compiled step's own x−, E(x+), E(x−) and logits per sample, the weight update Δθ per
                    parameter tensor and the change of the BatchNorm statistics
``compile``         the compiled network's E(x) and ∂E/∂x (size and bias) per sample on a probe batch
``cuda_graphs``     the replayed K-step SGLD graph vs the same loop op by op: x_K per sample relative to
                    the displacement (size and bias); with ``--sgld-bn update`` also the change of the
                    BatchNorm statistics
``triton_langevin`` the fused update at σ = 0 vs :func:`~fastebm.algorithm.sampler.langevin_update` (whole tensor,
                    relative to the update); its noise: mean and std z-tests (|z| ≤ 6)
``triton_p0``       4,096 fused p0 samples vs the PyTorch sampler: per-pixel mean and variance z-tests
==================  =====================================================================================

Reduced precision (``amp``, ``sgld_amp``) is judged apart, by whether training stays the same training
(:mod:`fastebm.fastpath.precision`). The statistical checks of the Triton kernels test distributions, not
rounding. The ``margin`` of a check is limit / error of its tightest statistic (∞ for the statistical ones): ≥ 3
in every measured cell.
"""
from __future__ import annotations

import copy
import math

import torch

from ..algorithm.sampler import Sampler, energy_grad, langevin_update, sampling_mode
from .numerics import agree, float64_draws

Z_MAX = 6.0
P0_SAMPLES = 4096
LAYOUTS = (False, True)  # the plain path's evaluations: NCHW and channels-last


# ---------------------------------------------------------------------------------------------- helpers
def float64_copy(alg):
    """The plain path of :class:`~fastebm.algorithm.algorithm1.Algorithm1` ``alg`` in float64: copies of the model,
    optimizer state, replay buffer and p0 in float64, the plain network and SGLD loop, no autocast. Run it
    under :func:`fastebm.fastpath.numerics.float64_draws` to draw the same random numbers as the fp32 run."""
    model = copy.deepcopy(alg.model).to(torch.float64)
    opt = _optimizer_copy(alg.opt, model)
    buffer = copy.copy(alg.buffer)
    buffer.samples = alg.buffer.samples.to(torch.float64)
    buffer.p0 = alg.buffer.p0.to(alg.buffer.samples.device, torch.float64)
    data = copy.copy(alg.data)
    data.dtype = torch.float64
    cls = None
    if alg.cls_data is not None:
        cls = copy.copy(alg.cls_data)
        cls.dtype = torch.float64
    return alg.replace(model=model, net=model, sampler=Sampler(model, alg.sampler.cfg), buffer=buffer, opt=opt,
                       data=data, cls_data=cls, amp=None, channels_last=False)


def _optimizer_copy(opt, model):
    params = list(model.parameters())
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    new = type(opt)(params, **{k: v for k, v in group.items() if k in opt.defaults})
    for old, p in zip(opt.param_groups[0]["params"], params):
        new.state[p] = {k: (v.to(torch.float64) if torch.is_tensor(v) and k != "step" else
                            v.clone() if torch.is_tensor(v) else v) for k, v in opt.state.get(old, {}).items()}
    return new


class Outcome(tuple):
    """A check's result ``(ok, detail, margin)``: whether the component passes, one line of figures, and the
    margin limit / error of its tightest statistic (> 1 passes; ∞ where nothing bounds it)."""

    def __new__(cls, ok: bool, detail: str, margin: float = math.inf):
        return super().__new__(cls, (bool(ok), detail, float(margin)))

    ok = property(lambda self: self[0])
    detail = property(lambda self: self[1])
    margin = property(lambda self: self[2])


def _params(model) -> list:
    return [p.detach().double().clone() for p in model.parameters()]


def _delta(after: list, before: list) -> list:
    return [a - b for a, b in zip(after, before)]


def _bn_stats(model) -> torch.Tensor:
    stats = [b for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]
    return torch.cat([t.detach().double().flatten() for t in stats]) if stats else torch.zeros(0, dtype=torch.float64)


def _probe(fp) -> torch.Tensor:
    """A batch of chain states (the first B replay-buffer samples): the SGLD input of an iteration."""
    return fp.per_piece.layout(fp.buffer.samples[: fp.batch_size].clone())


def _report(results) -> Outcome:
    margin = min((r.limit / r.fast if r.fast > 0 else math.inf) for r in results)
    return Outcome(all(r.ok for r in results), "; ".join(map(str, results)), margin)


def _energy(fn, x):
    """E(x) (N,) detached, computed as :func:`~fastebm.algorithm.sampler.energy_grad` calls ``fn`` (grad mode on, an
    input that requires grad), so a compiled ``fn`` meets the graph it already has (no recompile)."""
    with torch.enable_grad():
        return fn(x.detach().requires_grad_(True)).detach()


def plain_variants(device) -> list[tuple[bool, int]]:
    """The plain path's legitimate fp32 evaluations, (channels_last, threads): both memory layouts with this
    run's CPU thread count and, when it has more than one, with one thread too, since a split of a reduction
    over threads sums in another order (Inductor's weight update on 2 threads was 17x the NCHW error on one
    tensor, within the single-thread channels-last one). On CUDA the thread count does not enter the kernels."""
    threads = torch.get_num_threads()
    counts = (threads, 1) if threads > 1 and torch.device(device).type != "cuda" else (threads,)
    return [(cl, n) for cl in LAYOUTS for n in counts]


class _Threads:
    """Context: torch's intra-op thread count ``n`` inside, the previous one restored on exit."""

    def __init__(self, n: int):
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def _in_layout(alg, channels_last: bool):
    """The plain iteration ``alg`` with its network and chains in one memory layout (a plain evaluation)."""
    sampler = Sampler(alg.model, alg.sampler.cfg, net=alg.model, amp=alg.sampler.amp, channels_last=channels_last)
    return alg.replace(net=alg.model, sampler=sampler, channels_last=channels_last)


def _negatives(alg, idx, idx_cls, plain_sampler):
    """x0 and x− of an iteration's chains with ``alg``'s sampler, drawing x0 and the noise numbers as the
    iteration does (noise in the NCHW order, which a chain's layout does not change)."""
    xp, _, _ = alg.batches(idx, idx_cls)
    x0, _ = alg.buffer.sample(len(xp))
    return x0, alg.sampler(x0, plain_sampler.noise_draws(x0))


def _update(alg, idx, idx_cls, lr, x_neg, chains_move_bn) -> dict:
    """The update part of an iteration (Eq. 8, backward, optimizer step) from given negatives: E(x+), E(x−)
    (N, 1), logits, Δθ per parameter tensor and the change of the BatchNorm statistics (with ``--sgld-bn
    update`` the chains' forwards run before it, as in the iteration)."""
    theta0, bn0 = _params(alg.model), _bn_stats(alg.model)
    xp, xc, y = alg.batches(idx, idx_cls)
    if chains_move_bn:
        alg.negatives(len(xp))
    out = alg.update(xp, x_neg.to(xp.dtype), xc, y, lr)
    return _outputs(out, _delta(_params(alg.model), theta0), _bn_stats(alg.model) - bn0)


def _outputs(out: dict, dtheta: list, dbn: torch.Tensor) -> dict:
    got = {"E(x+)": out["_e_pos"].detach()[:, None], "E(x-)": out["_e_neg"].detach()[:, None],
           "weight update": dtheta, "BatchNorm statistics": dbn}
    if "_logits" in out:
        got["logits"] = out["_logits"].detach()
    return got


# ---------------------------------------------------------------------------------------------- checks
def gather_compile_step(fp, it) -> dict:
    """Everything :func:`compare_compile_step` judges, from the run's state at iteration ``it`` (restored
    after): ``fast`` (the compiled step's outputs), ``plain`` (one dict per :func:`plain_variants`), ``ref64``
    (float64), ``x0`` (the float64 chains' start) and ``names`` (the parameters). Each outputs dict holds
    ``negatives`` (N, C, H, W), ``E(x+)``, ``E(x-)`` (N, 1), ``logits`` (N_cls, C) for classifier models,
    ``weight update`` (a list of Δθ per parameter) and ``BatchNorm statistics`` (their change, flat)."""
    idx, idx_cls, lr = fp.batch(it)
    snap = fp.snapshot()
    eager = fp.eager_of_compiled()
    chains_move_bn = fp.sgld.bn_mode == "update"
    theta0, bn0 = _params(fp.model), _bn_stats(fp.model)
    out = fp.compiled_step(idx, idx_cls, lr)
    fast = _outputs(out, _delta(_params(fp.model), theta0), _bn_stats(fp.model) - bn0)
    fast["negatives"] = x_neg = out["_x_neg"].detach().clone()
    noise_order = _in_layout(eager, False).sampler
    plain = []
    for cl, threads in plain_variants(fp.device):
        alg = _in_layout(eager, cl)
        with _Threads(threads):
            fp.restore(snap)
            _, neg = _negatives(alg, idx, idx_cls, noise_order)
            fp.restore(snap)
            got = _update(alg, idx, idx_cls, lr, x_neg, chains_move_bn)  # from the compiled step's x−
        got["negatives"] = neg
        plain.append(got)
    fp.restore(snap)
    ref = float64_copy(eager)
    with float64_draws():
        x0_64, neg64 = _negatives(ref, idx, idx_cls, ref.sampler)
    fp.restore(snap)
    ref = float64_copy(eager)
    with float64_draws():
        ref64 = _update(ref, idx, idx_cls, lr, x_neg.double(), chains_move_bn)
    ref64["negatives"] = neg64
    fp.restore(snap)
    return {"fast": fast, "plain": plain, "ref64": ref64, "x0": x0_64,
            "names": [n for n, _ in fp.model.named_parameters()]}


def compare_compile_step(g: dict) -> list:
    """The compiled step's outputs (:func:`gather_compile_step`) judged by :func:`fastebm.fastpath.numerics.agree`:
    chains per sample relative to their displacement (size and bias); energies and logits per sample; the
    weight update per parameter tensor; the BatchNorm statistics as a whole. Returns the
    :class:`~fastebm.fastpath.numerics.Agreement` s."""
    fast, plain, ref = g["fast"], g["plain"], g["ref64"]
    col = lambda key: [p[key] for p in plain]  # noqa: E731
    results = agree("negatives", fast["negatives"], col("negatives"), ref["negatives"],
                    scale=ref["negatives"] - g["x0"], per_sample=True, with_bias=True)
    for key in ("E(x+)", "E(x-)", "logits"):
        if key in fast:
            results += agree(key, fast[key], col(key), ref[key], per_sample=True)
    results += agree("weight update", fast["weight update"], col("weight update"), ref["weight update"],
                     grouped=True, group_names=g["names"])
    if ref["BatchNorm statistics"].numel():
        results += agree("BatchNorm statistics", fast["BatchNorm statistics"], col("BatchNorm statistics"),
                         ref["BatchNorm statistics"])
    return results


def check_compile_step(fp, it) -> Outcome:
    """The compiled iteration vs the same iteration eagerly (:func:`plain_variants`) and in float64."""
    return _report(compare_compile_step(gather_compile_step(fp, it)))


def gather_compile(fp, it) -> dict:
    """What :func:`compare_compile` judges: on a probe batch x (the buffer's first B samples), E(x) (N, 1) and
    ∂E/∂x of the compiled network (``fast``), of the plain network per :func:`plain_variants` (``plain``) and
    in float64 (``ref64``), each a dict with ``energy`` and ``input gradient``."""
    x, model = _probe(fp), fp.model
    model64 = copy.deepcopy(model).to(torch.float64)

    def run(fn, v):
        return {"energy": _energy(fn, v)[:, None], "input gradient": energy_grad(fn, v)}

    with sampling_mode(model, fp.sgld.bn_mode):
        fast = run(lambda t: fp.net(t)[0], x)
        plain = []
        for cl, threads in plain_variants(fp.device):
            with _Threads(threads):
                fmt = torch.channels_last if cl else torch.contiguous_format
                plain.append(run(lambda t: model(t)[0], x.contiguous(memory_format=fmt)))
    with sampling_mode(model64, fp.sgld.bn_mode):
        ref64 = run(lambda t: model64(t)[0], x.double())
    return {"fast": fast, "plain": plain, "ref64": ref64}


def compare_compile(g: dict) -> list:
    """Energies per sample (size); input gradients per sample (size and bias). Returns the Agreements."""
    fast, plain, ref = g["fast"], g["plain"], g["ref64"]
    return (agree("energy", fast["energy"], [p["energy"] for p in plain], ref["energy"], per_sample=True)
            + agree("input gradient", fast["input gradient"], [p["input gradient"] for p in plain],
                    ref["input gradient"], per_sample=True, with_bias=True))


def check_compile(fp, it) -> Outcome:
    """The compiled network's E(x) and ∂E/∂x on a probe batch vs eager and float64 (module table)."""
    return _report(compare_compile(gather_compile(fp, it)))


def check_cuda_graphs(fp, it):
    """The replayed SGLD graph vs the same loop op by op (both layouts) and in float64 (module table); with
    ``--sgld-bn update`` also the change of the BatchNorm statistics that the replay leaves."""
    sampler, x0 = fp.sampler, fp.buffer.samples[: fp.batch_size].clone()
    snap = fp.snapshot()
    bn0 = _bn_stats(fp.model)
    replay = sampler(x0)
    replay_bn = _bn_stats(fp.model)
    fp.restore(snap)
    noise = sampler.noise_draws(x0)          # the numbers the chain draws, from the same state
    loops, loop_bn = [], []
    for cl, threads in plain_variants(fp.device):
        fp.restore(snap)
        plain = Sampler(fp.model, fp.sgld, amp=sampler.amp, channels_last=cl)
        with _Threads(threads), sampling_mode(fp.model, fp.sgld.bn_mode):
            loops.append(plain._loop(x0, noise))
        loop_bn.append(_bn_stats(fp.model) - bn0)
    fp.restore(snap)
    model64 = copy.deepcopy(fp.model).to(torch.float64)
    chain64 = Sampler(model64, fp.sgld)(x0.double(), [n.double() for n in noise])
    results = agree("chain", replay, loops, chain64, scale=chain64 - x0.double(), per_sample=True, with_bias=True)
    if fp.sgld.bn_mode == "update" and bn0.numel():
        results += agree("BatchNorm statistics", replay_bn - bn0, loop_bn, _bn_stats(model64) - bn0)
    return _report(results)


def check_triton_langevin(fp, it):
    """The fused Langevin kernel at σ = 0 vs :func:`~fastebm.algorithm.sampler.langevin_update` and float64; the first
    two moments of its noise (module table)."""
    from ..kernels.langevin import langevin_step

    cfg, x = fp.sgld, fp.buffer.samples[: fp.batch_size].clone()
    rng = fp.rng.clone()
    g = torch.randn_like(x) * 0.05
    clamp = (-1.0, 1.0) if cfg.clamp_x else None
    fused = langevin_step(x, g, cfg.step_size, 0.0, rng, grad_clip=cfg.grad_clip, clamp=clamp)
    quiet = type(cfg)(1, cfg.step_size, 0.0, cfg.grad_clip, cfg.clamp_x, cfg.bn_mode)
    plain = langevin_update(x, g, quiet)
    ref = langevin_update(x.double(), g.double(), quiet)
    result = _report(agree("update at sigma 0", fused, [plain], ref, scale=ref - x.double(), with_bias=True))
    ok, detail, margin = result
    if cfg.noise > 0:
        eps = (langevin_step(x, torch.zeros_like(x), 1.0, cfg.noise, rng, clamp=None) - x) / cfg.noise
        n = eps.numel()
        mean, std = float(eps.mean()), float(eps.std())
        z_mean, z_std = abs(mean) * math.sqrt(n), abs(std - 1) * math.sqrt(2 * n)
        ok = ok and max(z_mean, z_std) <= Z_MAX
        margin = min(margin, Z_MAX / max(z_mean, z_std, 1e-12))
        detail += f"; noise mean {mean:.2e}, std {std:.4f} over {n} values"
    return Outcome(ok, detail, margin)


def check_triton_p0(fp, it):
    """4,096 fused p0 samples (Eq. 6) vs the PyTorch sampler: per-pixel z-tests of mean and variance."""
    p0, n = fp.buffer.p0, P0_SAMPLES
    fast = p0.sample_fused(n, fp.rng.clone(), fp.device).flatten(1).double()
    plain = p0.plain_sample(n, fp.device).flatten(1).double()
    m1, m2, v1, v2 = fast.mean(0), plain.mean(0), fast.var(0), plain.var(0)
    z_mean = float(((m1 - m2) / ((v1 + v2) / n).sqrt().clamp_min(1e-12)).abs().max())
    # var of a sample variance ≈ (μ4 − σ⁴)/n; estimated from both samples
    mu4 = lambda x, m: ((x - m) ** 4).mean(0)  # noqa: E731
    se_var = ((mu4(fast, m1) - v1 ** 2 + mu4(plain, m2) - v2 ** 2) / n).clamp_min(0).sqrt().clamp_min(1e-12)
    z_var = float(((v1 - v2) / se_var).abs().max())
    detail = f"{n} samples: max |z| of pixel means {z_mean:.2f}, of variances {z_var:.2f} (limit {Z_MAX:g})"
    return Outcome(z_mean <= Z_MAX and z_var <= Z_MAX, detail, Z_MAX / max(z_mean, z_var, 1e-12))
