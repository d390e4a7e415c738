"""The fast path's reduced-precision checks: bf16 / fp16 autocast of the loss pass (``amp``) and of SGLD's input
gradients (``sgld_amp``), measured against float64.

Reduced precision is not judged by fp32-level agreement (:mod:`fastebm.fastpath.numerics`) but by whether training
stays the same training: a perturbation that adds at most 10 % to the noise the algorithm already carries
(√(1 + 0.46²) = 1.1) is accepted.

==================  =====================================================================================
component           what is compared
==================  =====================================================================================
``amp``             the loss pass under bf16/fp16 autocast: its weight-gradient error against float64 must
                    add at most 10 % to the minibatch gradient noise (two batches' fp64 gradients)
``sgld_amp``        SGLD under autocast: the chains' deviation from float64 must add at most 10 % to the
                    noise SGLD itself injects (σ·Σε per sample; σ = 0 leaves no room)
==================  =====================================================================================

A check returns ``(ok, detail, margin)`` as those of :mod:`fastebm.fastpath.selfcheck`; the ``measure_*``
functions return the figures themselves (bench/test_precision.py).
"""
from __future__ import annotations

import copy
import math

import torch

from ..algorithm.loss import classification_loss, generative_loss
from ..algorithm.sampler import Sampler
from .numerics import float64_draws
from .selfcheck import Outcome, float64_copy

NOISE_SHARE = math.sqrt(1.1 ** 2 - 1)  # 0.458: a perturbation this size of a noise adds 10 % to it


def _loss_grad(alg, x_pos, x_neg, x_cls, y):
    """∇θ of the iteration's loss (Eq. 8 + cross-entropy) at fixed negatives, without an optimizer step, and
    the energy gap mean E(x+) − mean E(x−). Returns (flat float64 gradient, gap as a float)."""
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
