"""The fast path's checks: each fast component against the plain path and its float64 run.

Every check runs a fast component once on the run's own state (the first B replay-buffer samples, the
iteration's batches, the parameters) and the same computation on the plain path, in fp32 and in float64,
from the same random state; :func:`fastebm.numerics.agree` then accepts the fast result when its error
against float64 is within a multiple of the plain fp32 path's error (plus a floor). The same checks serve
the run-time self-check (``--fast-path``, :class:`fastebm.fastpath.FastPath`), the tests and the
benchmarks' ``strict`` mode. A check returns ``(ok, detail)``; the caller restores the run's state.

==================  =====================================================================================
component           what is compared (multiplier of :data:`fastebm.numerics.MULTIPLIERS`)
==================  =====================================================================================
``compile_step``    one compiled iteration vs the same iteration eagerly (same precision): the negatives
                    x− per sample relative to the chain's displacement (kinked); then, from the compiled
                    step's own x−, E(x+), E(x−) and logits per sample, the weight update Δθ and the change
                    of the BatchNorm statistics (smooth)
``compile``         the compiled network's E(x) (smooth) and ∂E/∂x (kinked) per sample on a probe batch
``cuda_graphs``     the replayed K-step SGLD graph vs the same loop op by op: x_K per sample relative to
                    the displacement (kinked); with ``--sgld-bn update`` also the change of the BatchNorm
                    statistics (smooth)
``triton_langevin`` the fused update at σ = 0 vs :func:`~fastebm.sampler.langevin_update` (smooth, whole
                    tensor, relative to the update); its noise: mean and std z-tests (|z| ≤ 6)
``triton_p0``       4,096 fused p0 samples vs the PyTorch sampler: per-pixel mean and variance z-tests
``amp``             the loss pass under bf16/fp16 autocast: its weight-gradient error against float64 must
                    add at most 10 % to the minibatch gradient noise (two batches' fp64 gradients)
``sgld_amp``        SGLD under autocast: the chains' deviation from float64 must add at most 10 % to the
                    noise SGLD itself injects (σ·Σε per sample; σ = 0 leaves no room)
==================  =====================================================================================

Reduced precision is not judged by fp32-level agreement but by whether training stays the same training:
a perturbation that adds at most 10 % to the noise the algorithm already carries (√(1 + 0.46²) = 1.1) is
accepted. The statistical checks of the Triton kernels test distributions, not rounding.
"""
from __future__ import annotations

import copy
import math

import torch

from .numerics import agree, float64_draws
from .sampler import Sampler, energy_grad, langevin_update, sampling_mode

NOISE_SHARE = math.sqrt(1.1 ** 2 - 1)  # 0.458: a perturbation this size of a noise adds 10 % to it
Z_MAX = 6.0
P0_SAMPLES = 4096


# ---------------------------------------------------------------------------------------------- helpers
def float64_copy(alg):
    """The plain path of :class:`~fastebm.algorithm.Algorithm1` ``alg`` in float64: copies of the model,
    optimizer state, replay buffer and p0 in float64, the plain network and SGLD loop, no autocast. Run it
    under :func:`fastebm.numerics.float64_draws` to draw the same random numbers as the fp32 run."""
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


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten() for t in tensors])


def _bn_stats(model) -> torch.Tensor:
    stats = [b for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]
    return _flat(stats) if stats else torch.zeros(0, dtype=torch.float64)


def _probe(fp) -> torch.Tensor:
    """A batch of chain states (the first B replay-buffer samples): the SGLD input of an iteration."""
    return fp.per_piece.layout(fp.buffer.samples[: fp.batch_size].clone())


def _report(results) -> tuple[bool, str]:
    return all(r.ok for r in results), "; ".join(map(str, results))


def _energy(fn, x):
    """E(x) (N,) detached, computed as :func:`~fastebm.sampler.energy_grad` calls ``fn`` (grad mode on, an
    input that requires grad), so a compiled ``fn`` meets the graph it already has (no recompile)."""
    with torch.enable_grad():
        return fn(x.detach().requires_grad_(True)).detach()


# ---------------------------------------------------------------------------------------------- checks
def check_compile_step(fp, it):
    """The compiled iteration vs the same iteration eagerly and in float64 (module table)."""
    idx, idx_cls, lr = fp.batch(it)
    snap = fp.snapshot()
    eager = fp.eager_of_compiled()
    theta0, bn0 = _flat(fp.model.parameters()), _bn_stats(fp.model)
    fast = fp.compiled_step(idx, idx_cls, lr)
    fast_theta, fast_bn = _flat(fp.model.parameters()), _bn_stats(fp.model)
    x_neg = fast["_x_neg"].detach().clone()
    fp.restore(snap)
    ref = float64_copy(eager)
    xp, xc, y = eager.batches(idx, idx_cls)
    x0, plain_neg, _ = eager.negatives(len(xp))
    fp.restore(snap)
    with float64_draws():
        xp64, xc64, y64 = ref.batches(idx, idx_cls)
        x0_64, neg64, _ = ref.negatives(len(xp64))
    results = [agree("negatives", x_neg, plain_neg, neg64, "kinked", scale=neg64 - x0_64, per_sample=True)]
    # the update (Eq. 8, backward, optimizer step) from the compiled step's own negatives; with --sgld-bn
    # update the chains' forwards move the BatchNorm statistics too, so they run before it on each side
    chains_move_bn = fp.sgld.bn_mode == "update"
    fp.restore(snap)
    xp, xc, y = eager.batches(idx, idx_cls)
    if chains_move_bn:
        eager.negatives(len(xp))
    plain = eager.update(xp, x_neg, xc, y, lr)
    plain_theta, plain_bn = _flat(fp.model.parameters()), _bn_stats(fp.model)
    fp.restore(snap)
    ref = float64_copy(eager)
    with float64_draws():
        xp64, xc64, y64 = ref.batches(idx, idx_cls)
        if chains_move_bn:
            ref.negatives(len(xp64))
        out64 = ref.update(xp64, x_neg.double(), xc64, y64, lr)
    theta64, bn64 = _flat(ref.model.parameters()), _bn_stats(ref.model)
    results += [agree("E(x+)", fast["_e_pos"][:, None], plain["_e_pos"][:, None], out64["_e_pos"][:, None],
                      per_sample=True),
                agree("E(x-)", fast["_e_neg"][:, None], plain["_e_neg"][:, None], out64["_e_neg"][:, None],
                      per_sample=True),
                agree("weight update", fast_theta - theta0, plain_theta - theta0, theta64 - theta0)]
    if "_logits" in fast:
        results.append(agree("logits", fast["_logits"], plain["_logits"], out64["_logits"], per_sample=True))
    if bn0.numel():
        results.append(agree("BatchNorm statistics", fast_bn - bn0, plain_bn - bn0, bn64 - bn0))
    return _report(results)


def check_compile(fp, it):
    """The compiled network's E(x) and ∂E/∂x on a probe batch vs eager and float64 (module table)."""
    x, model = _probe(fp), fp.model
    model64 = copy.deepcopy(model).to(torch.float64)
    fast, plain = (lambda t: fp.net(t)[0]), (lambda t: model(t)[0])
    with sampling_mode(model, fp.sgld.bn_mode):
        e_fast, g_fast = _energy(fast, x), energy_grad(fast, x)
        e_plain, g_plain = _energy(plain, x), energy_grad(plain, x)
    with sampling_mode(model64, fp.sgld.bn_mode):
        ref = lambda t: model64(t)[0]  # noqa: E731
        e64, g64 = _energy(ref, x.double()), energy_grad(ref, x.double())
    return _report([agree("energy", e_fast[:, None], e_plain[:, None], e64[:, None], per_sample=True),
                    agree("input gradient", g_fast, g_plain, g64, "kinked", per_sample=True)])


def check_cuda_graphs(fp, it):
    """The replayed SGLD graph vs the same loop op by op and in float64 (module table); with ``--sgld-bn
    update`` also the change of the BatchNorm statistics that the replay leaves (smooth)."""
    sampler, x0 = fp.sampler, fp.buffer.samples[: fp.batch_size].clone()
    snap = fp.snapshot()
    bn0 = _bn_stats(fp.model)
    replay = sampler(x0)
    replay_bn = _bn_stats(fp.model)
    fp.restore(snap)
    noise = sampler.noise_draws(x0)          # the numbers the chain draws, from the same state
    fp.restore(snap)
    model64 = copy.deepcopy(fp.model).to(torch.float64)
    with sampling_mode(fp.model, fp.sgld.bn_mode):
        loop = sampler._loop(x0)
    loop_bn = _bn_stats(fp.model)
    chain64 = Sampler(model64, fp.sgld)(x0.double(), [n.double() for n in noise])
    results = [agree("chain", replay, loop, chain64, "kinked", scale=chain64 - x0.double(), per_sample=True)]
    if fp.sgld.bn_mode == "update" and bn0.numel():
        results.append(agree("BatchNorm statistics", replay_bn - bn0, loop_bn - bn0, _bn_stats(model64) - bn0))
    return _report(results)


def check_triton_langevin(fp, it):
    """The fused Langevin kernel at σ = 0 vs :func:`~fastebm.sampler.langevin_update` and float64; the first
    two moments of its noise (module table)."""
    from .kernels.langevin import langevin_step

    cfg, x = fp.sgld, fp.buffer.samples[: fp.batch_size].clone()
    rng = fp.rng.clone()
    g = torch.randn_like(x) * 0.05
    clamp = (-1.0, 1.0) if cfg.clamp_x else None
    fused = langevin_step(x, g, cfg.step_size, 0.0, rng, grad_clip=cfg.grad_clip, clamp=clamp)
    quiet = type(cfg)(1, cfg.step_size, 0.0, cfg.grad_clip, cfg.clamp_x, cfg.bn_mode)
    plain = langevin_update(x, g, quiet)
    ref = langevin_update(x.double(), g.double(), quiet)
    result = agree("update at sigma 0", fused, plain, ref, scale=ref - x.double())
    ok, detail = result.ok, str(result)
    if cfg.noise > 0:
        eps = (langevin_step(x, torch.zeros_like(x), 1.0, cfg.noise, rng, clamp=None) - x) / cfg.noise
        n = eps.numel()
        mean, std = float(eps.mean()), float(eps.std())
        ok = ok and abs(mean) <= Z_MAX / math.sqrt(n) and abs(std - 1) <= Z_MAX / math.sqrt(2 * n)
        detail += f"; noise mean {mean:.2e}, std {std:.4f} over {n} values"
    return ok, detail


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
    ok = z_mean <= Z_MAX and z_var <= Z_MAX
    return ok, f"{n} samples: max |z| of pixel means {z_mean:.2f}, of variances {z_var:.2f} (limit {Z_MAX:g})"


def _loss_grad(alg, x_pos, x_neg, x_cls, y):
    """∇θ of the iteration's loss (Eq. 8 + cross-entropy) at fixed negatives, without an optimizer step, and
    the energy gap mean E(x+) − mean E(x−). Returns (flat float64 gradient, gap as a float)."""
    from .loss import classification_loss, generative_loss

    dtype = alg.amp
    params = [p for p in alg.model.parameters()]
    with torch.autocast(x_pos.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        e_pos, e_neg = alg.energies(x_pos, x_neg)
        loss = generative_loss(e_pos, e_neg, alg.l2, alg.reg_form)
        if x_cls is not None:
            loss = loss + alg.cls_weight * classification_loss(alg.net(alg.layout(x_cls))[1], y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    gap = float(e_pos.detach().double().mean() - e_neg.detach().double().mean())
    return _flat([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]), gap


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
    ok = math.isfinite(m["grad_err"]) and m["grad_err"] <= NOISE_SHARE * m["grad_noise"]
    return ok, (f"weight-gradient error {m['grad_err']:.2e} vs minibatch noise {m['grad_noise']:.2e} (limit "
                f"{NOISE_SHARE:.2f}x, relative to |g|; energy gap error {m['gap_err']:.1e}, "
                f"fp32 {m['gap_err_fp32']:.1e})")


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
        return False, ("sigma 0: SGLD injects no noise to cover the autocast deviation (chains deviate from "
                       f"float64 by {m['over_displacement']:.1e} of their displacement, fp32 by "
                       f"{m['fp32_over_displacement']:.1e})")
    return m["over_noise"] <= NOISE_SHARE, (
        f"chain deviation from float64 {m['over_noise']:.2f}x the injected SGLD noise (median over samples; "
        f"limit {NOISE_SHARE:.2f}x; {m['over_displacement']:.1e} of the displacement, fp32 "
        f"{m['fp32_over_displacement']:.1e})")


CHECKS = {"amp": check_amp, "sgld_amp": check_sgld_amp, "compile_step": check_compile_step,
          "compile": check_compile, "cuda_graphs": check_cuda_graphs, "triton_langevin": check_triton_langevin,
          "triton_p0": check_triton_p0}
