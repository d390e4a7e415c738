"""The fast path checks itself at run time (``--fast-path {auto,strict,off}``, issue 12).

At the first iteration (and after :meth:`~fastebm.trainer.Trainer.request_fast_path_check`) each enabled
fast component runs once against the plain path on the same input and, where it draws noise, the same
random state. A component that raises (an Inductor / Triton compile error, a capture error, an
unsupported GPU) or disagrees beyond its tolerance below is switched off with one warning line naming it
and the reason, and the run goes on with the rest (``auto``); ``strict`` raises :class:`FastPathError`
instead (benchmarks); ``off`` skips the check. The run's state (parameters, BatchNorm statistics,
optimizer state, replay buffer, RNG states) is restored after the check, so a check costs time, never
a different run.

Components (``fast_components``) and what each check compares, with its documented tolerance:

==================  ======================================================================================
``amp``             cosine of the input gradients ∂E/∂x under bf16/fp16 autocast and in fp32 > 0.99
``compile_step``    one whole compiled iteration vs the same iteration eager, from the same state and
                    seeds: |Δloss| / |loss| and max|Δθ| / max|θ| ≤ 1e-3 (fp32; 2e-2 under autocast),
                    replay buffers: ‖ΔB‖ / ‖B_after − B_before‖ ≤ 1e-3 (L2, relative to this
                    iteration's update; a max-abs bound of 1e-3 failed on CPU Inductor at 3.9e-3 on one
                    pixel while loss and parameters agreed to 2e-7)
``compile``         compiled x → E(x) and ∂E/∂x (parameters frozen, as in SGLD) vs eager: relative L2
                    error ≤ 1e-3 each
``cuda_graphs``     the captured K-step SGLD loop (replay) vs the same loop run op by op from the same
                    x0 and RNG state: ‖Δx_K‖ / ‖x_K − x0‖ ≤ 1e-3
``triton_langevin`` the fused update vs :func:`~fastebm.sampler.langevin_update` with σ = 0: max abs
                    ≤ 1e-5; its noise (α = 0, no clamp) on the batch: |mean| ≤ 6/√n, |std − 1| ≤ 6/√(2n)
``triton_p0``       4,096 samples of the fused p0 sampler vs the PyTorch sampler: every pixel's mean and
                    variance agree in a two-sample z-test, max |z| ≤ 6
==================  ======================================================================================

When ``compile_step`` passes, the per-piece components (``compile``, ``cuda_graphs``, ``triton_*``) do not
run in the training step and are reported as ``unused (compiled step)``; when it fails they are checked,
since the run falls back to them.
"""
from __future__ import annotations

import math
import sys

import torch

from .sampler import AMP_DTYPES, SGLDConfig, energy_grad, langevin_update, sampling_mode

TOL = {"amp_cos": 0.99, "step_fp32": 1e-3, "step_amp": 2e-2, "buffer": 1e-3, "compile": 1e-3,
       "cuda_graphs": 1e-3, "langevin": 1e-5, "z": 6.0}
P0_SAMPLES = 4096
PER_PIECE = ("compile", "cuda_graphs", "triton_langevin", "triton_p0")


class FastPathError(RuntimeError):
    """``--fast-path strict``: a fast component failed its self-check."""


def fast_components(cfg) -> list[str]:
    """The fast components a resolved config enables, in check order (see the module table)."""
    on = []
    if cfg.amp not in ("off", "auto", None):
        on.append("amp")
    if cfg.compile_step:
        on.append("compile_step")
    if cfg.compile not in ("off", "auto", None):
        on.append("compile")
    if cfg.cuda_graphs:
        on.append("cuda_graphs")
    if cfg.triton:
        on.append("triton_langevin")
        if cfg.p0 == "gaussian":
            on.append("triton_p0")
    return on


# ---------------------------------------------------------------------------------------------- state
def _snapshot(tr) -> dict:
    clone = lambda d: {k: v.detach().clone() for k, v in d.items() if isinstance(v, torch.Tensor)}  # noqa: E731
    snap = {"model": clone(tr.model.state_dict()), "buffer": tr.buffer.samples.clone(),
            "opt": [(st, clone(st)) for st in tr.opt.state.values()], "cpu_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        snap["cuda_rng"] = torch.cuda.get_rng_state_all()
    rng = tr._fast["sampler"].rng_state
    snap["triton_rng"] = None if rng is None else rng.clone()
    return snap


def _restore(tr, snap: dict) -> None:
    """Copy a snapshot back in place (addresses kept: a compiled step keeps reading the same storage)."""
    with torch.no_grad():
        for k, v in tr.model.state_dict().items():
            v.copy_(snap["model"][k])
        tr.buffer.samples.copy_(snap["buffer"])
        for st, saved in snap["opt"]:
            for k, v in saved.items():
                st[k].copy_(v)
        for p in tr.model.parameters():
            p.grad = None
    torch.set_rng_state(snap["cpu_rng"])
    if "cuda_rng" in snap:
        torch.cuda.set_rng_state_all(snap["cuda_rng"])
    if snap["triton_rng"] is not None:
        tr._fast["sampler"].rng_state.copy_(snap["triton_rng"])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _probe(tr) -> torch.Tensor:
    """A batch of chain states (the first B replay-buffer samples), the SGLD input of an iteration."""
    return tr.layout(tr.buffer.samples[: tr.cfg.batch_size].clone())


def _energy(fn, x):
    """E(x) (N,) detached, computed as :func:`~fastebm.sampler.energy_grad` calls ``fn`` (grad mode on, an
    input that requires grad), so a compiled ``fn`` meets the graph it already has (no recompile)."""
    with torch.enable_grad():
        return fn(x.detach().requires_grad_(True)).detach()


# ---------------------------------------------------------------------------------------------- checks
def check_amp(tr, it):
    """bf16/fp16 autocast: cosine of ∂E/∂x under autocast and in fp32 on a probe batch > 0.99. Returns (ok, detail)."""
    dtype = AMP_DTYPES[tr.cfg.amp]
    x = _probe(tr)
    with sampling_mode(tr.model, tr.cfg.sgld_bn):
        g32 = energy_grad(lambda t: tr.model(t)[0], x)
        with torch.autocast(x.device.type, dtype=dtype):
            g16 = energy_grad(lambda t: tr.model(t)[0], x)
    cos = float(torch.nn.functional.cosine_similarity(g16.flatten().float(), g32.flatten(), dim=0))
    return cos > TOL["amp_cos"], f"cosine of input gradients {cos:.4f} (needs > {TOL['amp_cos']})"


def check_compile_step(tr, it):
    """The compiled step vs the eager ``Trainer.step`` of iteration ``it`` from the same state and seeds (loss,
    parameters, replay-buffer update; tolerances in the module table). Returns (ok, detail)."""
    idx = tr.gen_batches.shard_indices(it)
    idx_cls = tr.cls_batches.shard_indices(it) if tr.cls_batches is not None else None
    tr.lr.fill_(tr.opt.param_groups[0]["lr"])
    snap = _snapshot(tr)
    fast = {k: v.detach().clone() for k, v in tr._step(idx, idx_cls, tr.lr).items() if not k.startswith("_")}
    fast_params = [p.detach().clone() for p in tr.model.parameters()]
    fast_buffer = tr.buffer.samples.clone()
    _restore(tr, snap)
    plain = tr.step(idx, idx_cls, tr.lr)
    tol = TOL["step_fp32"] if AMP_DTYPES[tr.cfg.amp] is None else TOL["step_amp"]
    d_loss = float((fast["loss"] - plain["loss"]).abs() / plain["loss"].abs().clamp_min(1e-12))
    scale = max(float(p.detach().abs().max()) for p in tr.model.parameters())
    d_par = max(float((a - p.detach()).abs().max()) for a, p in zip(fast_params, tr.model.parameters())) / scale
    moved = (tr.buffer.samples - snap["buffer"]).norm().clamp_min(1e-30)  # what this iteration wrote
    d_buf = float((fast_buffer - tr.buffer.samples).norm() / moved)
    ok = d_loss <= tol and d_par <= tol and d_buf <= TOL["buffer"]
    return ok, (f"loss rel {d_loss:.2e}, parameters rel {d_par:.2e} (tolerance {tol:g}), buffer update rel "
                f"{d_buf:.2e} (tolerance {TOL['buffer']:g})")


def check_compile(tr, it):
    """The compiled network vs eager: E(x) and ∂E/∂x relative L2 error ≤ 1e-3 each. Returns (ok, detail)."""
    x = _probe(tr)
    with sampling_mode(tr.model, tr.cfg.sgld_bn):
        fast, ref = (lambda t: tr._fast["net"](t)[0]), (lambda t: tr.model(t)[0])
        e_fast, g_fast, e_ref, g_ref = _energy(fast, x), energy_grad(fast, x), _energy(ref, x), energy_grad(ref, x)
    de, dg = _rel(e_fast, e_ref), _rel(g_fast, g_ref)
    tol = TOL["compile"]
    return de <= tol and dg <= tol, f"energy rel err {de:.2e}, input-gradient rel err {dg:.2e} (tolerance {tol:g})"


def check_cuda_graphs(tr, it):
    """The captured K-step SGLD graph vs the same loop op by op from the same x0 and RNG state:
    ‖Δx_K‖ / ‖x_K − x0‖ ≤ 1e-3. Returns (ok, detail)."""
    sampler, x0 = tr._fast["sampler"], tr.buffer.samples[: tr.cfg.batch_size].clone()
    snap = _snapshot(tr)
    replay = sampler(x0)
    _restore(tr, snap)
    with sampling_mode(tr.model, tr.cfg.sgld_bn):
        loop = sampler._loop(x0)
    err = float((replay - loop).norm() / (loop - x0).norm().clamp_min(1e-30))
    tol = TOL["cuda_graphs"]
    return err <= tol, f"replay vs op-by-op loop: rel err {err:.2e} (tolerance {tol:g})"


def check_triton_langevin(tr, it):
    """The fused Langevin kernel vs :func:`~fastebm.sampler.langevin_update` at σ = 0 (max abs ≤ 1e-5) and the
    first two moments of its noise (Eq. 3). Returns (ok, detail)."""
    from .kernels.langevin import langevin_step

    cfg, x = tr.sgld_cfg, tr.buffer.samples[: tr.cfg.batch_size].clone()
    rng = tr._fast["sampler"].rng_state.clone()
    g = torch.randn_like(x) * 0.05
    clamp = (-1.0, 1.0) if cfg.clamp_x else None
    fused = langevin_step(x, g, cfg.step_size, 0.0, rng, grad_clip=cfg.grad_clip, clamp=clamp)
    ref = langevin_update(x, g, SGLDConfig(1, cfg.step_size, 0.0, cfg.grad_clip, cfg.clamp_x, cfg.bn_mode))
    err = float((fused - ref).abs().max())
    ok, detail = err <= TOL["langevin"], f"σ = 0: max abs err {err:.2e} (tolerance {TOL['langevin']:g})"
    if cfg.noise > 0:
        eps = (langevin_step(x, torch.zeros_like(x), 1.0, cfg.noise, rng, clamp=None) - x) / cfg.noise
        n = eps.numel()
        mean, std = float(eps.mean()), float(eps.std())
        ok = ok and abs(mean) <= TOL["z"] / math.sqrt(n) and abs(std - 1) <= TOL["z"] / math.sqrt(2 * n)
        detail += f"; noise mean {mean:.2e}, std {std:.4f} over {n} values"
    return ok, detail


def check_triton_p0(tr, it):
    """4,096 fused p0 samples (Eq. 6) vs the PyTorch sampler: per-pixel z-tests of mean and variance, max |z| ≤ 6.
    Returns (ok, detail)."""
    p0, n = tr.p0, P0_SAMPLES
    rng = tr._fast["sampler"].rng_state.clone()
    fast = p0.sample_fused(n, rng, tr.device).flatten(1).double()
    saved, p0._triton_rng = getattr(p0, "_triton_rng", None), None
    try:
        plain = p0.sample(n, device=tr.device).flatten(1).double()  # the PyTorch path
    finally:
        p0._triton_rng = saved
    m1, m2, v1, v2 = fast.mean(0), plain.mean(0), fast.var(0), plain.var(0)
    z_mean = float(((m1 - m2) / ((v1 + v2) / n).sqrt().clamp_min(1e-12)).abs().max())
    # var of a sample variance ≈ (μ4 − σ⁴)/n; estimated from both samples
    mu4 = lambda x, m: ((x - m) ** 4).mean(0)  # noqa: E731
    se_var = ((mu4(fast, m1) - v1 ** 2 + mu4(plain, m2) - v2 ** 2) / n).clamp_min(0).sqrt().clamp_min(1e-12)
    z_var = float(((v1 - v2) / se_var).abs().max())
    ok = z_mean <= TOL["z"] and z_var <= TOL["z"]
    return ok, f"{n} samples: max |z| of pixel means {z_mean:.2f}, of variances {z_var:.2f} (tolerance {TOL['z']:g})"


CHECKS = {"amp": check_amp, "compile_step": check_compile_step, "compile": check_compile,
          "cuda_graphs": check_cuda_graphs, "triton_langevin": check_triton_langevin, "triton_p0": check_triton_p0}


# ---------------------------------------------------------------------------------------------- switch off
def disable(tr, name: str) -> None:
    """Switch one fast component off on a running trainer (the plain path takes its place)."""
    cfg, fast = tr.cfg, tr._fast["sampler"]
    if name == "amp":
        cfg.amp = "off"
        fast.amp = tr.sampler.amp = "off"
        if cfg.compile_step:
            tr.use_compiled_step(True)  # autocast is traced into the graph: trace again
    elif name == "compile_step":
        tr.use_compiled_step(False)
    elif name == "compile":
        cfg.compile = "off"
        tr.compiled = tr._fast["net"] = fast.net = tr.model
        if not cfg.compile_step:
            tr.net = tr.model
    elif name == "cuda_graphs":
        cfg.cuda_graphs = fast.cuda_graphs = False
    elif name == "triton_langevin":
        fast.triton = False
    elif name == "triton_p0":
        tr._fast["p0_triton"] = False
        tr.p0.use_triton(None)
    else:
        raise ValueError(f"unknown fast component {name!r}")


def run(tr, it: int) -> dict:
    """Check every enabled fast component of trainer ``tr`` at iteration ``it``; returns component →
    ``"ok: ..."``, ``"off: ..."`` or ``"unused (compiled step)"``.

    Raises:
        FastPathError: a component failed and ``--fast-path strict``.
    """
    report, names = {}, fast_components(tr.cfg)
    snap = _snapshot(tr)
    was_training = tr.model.training
    tr.model.train()
    try:
        for name in names:
            if name in PER_PIECE and tr.cfg.compile_step:
                report[name] = "unused (compiled step)"
                continue
            try:
                ok, detail = CHECKS[name](tr, it)
            except Exception as e:  # noqa: BLE001 - any failure of a fast component is what is checked
                ok, detail = False, f"raised {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            finally:
                _restore(tr, snap)
            if ok:
                report[name] = f"ok: {detail}"
                continue
            if tr.cfg.fast_path == "strict":
                raise FastPathError(f"--fast-path strict: fast component {name} failed its self-check: {detail}")
            report[name] = f"off: {detail}"
            if tr.dist.is_main:
                print(f"fastebm: warning: fast component {name} switched off: {detail}", file=sys.stderr)
            disable(tr, name)
    finally:
        _restore(tr, snap)
        tr.model.train(was_training)
    return report


def summary(report: dict) -> str:
    """One banner line: which fast components run, which were switched off and why."""
    if not report:
        return "fast path: plain (no fast component enabled)"
    parts = []
    for name, status in report.items():
        word = status.split(":")[0]
        parts.append(f"{name} {word}" if word != "off" else f"{name} OFF ({status[5:]})")
    return "fast path: " + ", ".join(parts)
