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
``amp``             the loss pass under bf16/fp16 autocast: its weight-gradient error against float64 must
                    add at most 10 % to the minibatch gradient noise (two batches' fp64 gradients)
``sgld_amp``        SGLD under autocast: the chains' deviation from float64 must add at most 10 % to the
                    noise SGLD itself injects (σ·Σε per sample; σ = 0 leaves no room)
==================  =====================================================================================

Reduced precision is not judged by fp32-level agreement but by whether training stays the same training:
a perturbation that adds at most 10 % to the noise the algorithm already carries (√(1 + 0.46²) = 1.1) is
accepted. The statistical checks of the Triton kernels test distributions, not rounding. The ``margin`` of a
check is limit / error of its tightest statistic (∞ for the statistical ones): ≥ 3 in every measured cell.
"""
from __future__ import annotations

import copy
import math

import torch

from ..algorithm.sampler import Sampler, energy_grad, langevin_update, sampling_mode
from .numerics import agree, float64_draws

NOISE_SHARE = math.sqrt(1.1 ** 2 - 1)  # 0.458: a perturbation this size of a noise adds 10 % to it
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


def _loss_grad(alg, x_pos, x_neg, x_cls, y):
    """∇θ of the iteration's loss (Eq. 8 + cross-entropy) at fixed negatives, without an optimizer step, and
    the energy gap mean E(x+) − mean E(x−). Returns (flat float64 gradient, gap as a float)."""
    from ..algorithm.loss import classification_loss, generative_loss

    dtype = alg.amp
    params = [p for p in alg.model.parameters()]
    with torch.autocast(x_pos.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        e_pos, e_neg = alg.energies(x_pos, x_neg)
        loss = generative_loss(e_pos, e_neg, alg.l2, alg.reg_form)
        if x_cls is not None:
            loss = loss + alg.cls_weight * classification_loss(alg.net(alg.layout(x_cls))[1], y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    gap = float(e_pos.detach().double().mean() - e_neg.detach().double().mean())
    flat = torch.cat([(torch.zeros_like(p) if g is None else g).detach().double().flatten()
                      for p, g in zip(params, grads)])
    return flat, gap


def measure_amp(fp, it) -> dict:
    """What autocast of the loss pass does, against float64, at iteration ``it``'s batches with the buffer's
    first B chains as x−: ``grad_err`` ‖g_amp − g64‖/‖g64‖ (``grad_err_fp32`` the same for fp32),
    ``grad_noise`` the minibatch gradient noise ‖g64(it) − g64(it + 1)‖/√2/‖g64‖, ``gap_err`` and
    ``gap_err_fp32`` the relative error of the energy gap mean E(x+) − mean E(x−)."""
    idx, idx_cls, _ = fp.batch(it)
    snap = fp.snapshot()
    x_neg = fp.buffer.samples[: fp.batch_size].clone()
    runs = {}
    for name, alg in (("amp", fp.eager_plain().replace(amp=fp.amp_dtype)), ("fp32", fp.eager_plain())):
        xp, xc, y = alg.batches(idx, idx_cls)
        runs[name] = _loss_grad(alg, xp, x_neg, xc, y)
        fp.restore(snap)
    ref = float64_copy(fp.eager_plain())
    with float64_draws():
        xp64, xc64, y64 = ref.batches(idx, idx_cls)
        g64, gap64 = _loss_grad(ref, xp64, x_neg.double(), xc64, y64)
        xq64, xd64, z64 = ref.batches(*fp.batch(it + 1)[:2])
        g64b, _ = _loss_grad(ref, xq64, x_neg.double(), xd64, z64)
    fp.restore(snap)
    norm = float(g64.norm())
    out = {"grad_noise": float((g64 - g64b).norm()) / math.sqrt(2) / norm}
    for name, (g, gap) in runs.items():
        suffix = "" if name == "amp" else "_fp32"
        out["grad_err" + suffix] = float((g - g64).norm()) / norm
        out["gap_err" + suffix] = abs(gap - gap64) / max(abs(gap64), 1e-300)
    return out


def check_amp(fp, it):
    """The loss pass under autocast: weight-gradient error against float64 ≤ NOISE_SHARE × the minibatch
    gradient noise (:func:`measure_amp`)."""
    m = measure_amp(fp, it)
    limit = NOISE_SHARE * m["grad_noise"]
    ok = math.isfinite(m["grad_err"]) and m["grad_err"] <= limit
    detail = (f"weight-gradient error {m['grad_err']:.2e} vs minibatch noise {m['grad_noise']:.2e} (limit "
              f"{NOISE_SHARE:.2f}x, relative to |g|; energy gap error {m['gap_err']:.1e}, "
              f"fp32 {m['gap_err_fp32']:.1e})")
    return Outcome(ok, detail, limit / max(m["grad_err"], 1e-300))


def measure_sgld_amp(fp) -> dict:
    """What autocast of the SGLD input gradients does to K-step chains from the buffer's first B samples,
    against float64 with the same noise (medians over samples): ``over_noise`` ‖x_amp − x64‖ / ‖σ Σ ε‖ (inf
    at σ = 0), ``over_displacement`` ‖x_amp − x64‖ / ‖x64 − x0‖, ``fp32_over_displacement`` the same for fp32."""
    x0 = fp.buffer.samples[: fp.batch_size].clone()
    snap = fp.snapshot()
    noise = fp.sampler.noise_draws(x0)
    fp.restore(snap)
    cfg = fp.sgld
    x_amp = Sampler(fp.model, cfg, amp=fp.sgld_amp or "bf16")(x0, noise)
    x32 = Sampler(fp.model, cfg)(x0, noise)
    model64 = copy.deepcopy(fp.model).to(torch.float64)
    x64 = Sampler(model64, cfg)(x0.double(), [n.double() for n in noise])
    rows = lambda t: t.flatten(1).norm(dim=1)  # noqa: E731
    dev, disp = rows(x_amp.double() - x64), rows(x64 - x0.double())
    injected = rows(cfg.noise * sum(n.double() for n in noise))
    return {"over_noise": float((dev / injected).median()) if cfg.noise > 0 else math.inf,
            "over_displacement": float((dev / disp).median()),
            "fp32_over_displacement": float((rows(x32.double() - x64) / disp).median())}


def check_sgld_amp(fp, it):
    """SGLD under autocast: the chains' deviation from float64 ≤ NOISE_SHARE × the injected noise σ·Σ_k ε_k
    (:func:`measure_sgld_amp`)."""
    m = measure_sgld_amp(fp)
    if fp.sgld.noise == 0:
        return Outcome(False, "sigma 0: SGLD injects no noise to cover the autocast deviation (chains deviate "
                       f"from float64 by {m['over_displacement']:.1e} of their displacement, fp32 by "
                       f"{m['fp32_over_displacement']:.1e})", 0.0)
    detail = (f"chain deviation from float64 {m['over_noise']:.2f}x the injected SGLD noise (median over samples; "
              f"limit {NOISE_SHARE:.2f}x; {m['over_displacement']:.1e} of the displacement, fp32 "
              f"{m['fp32_over_displacement']:.1e})")
    return Outcome(m["over_noise"] <= NOISE_SHARE, detail, NOISE_SHARE / max(m["over_noise"], 1e-300))


CHECKS = {"amp": check_amp, "sgld_amp": check_sgld_amp, "compile_step": check_compile_step,
          "compile": check_compile, "cuda_graphs": check_cuda_graphs, "triton_langevin": check_triton_langevin,
          "triton_p0": check_triton_p0}
