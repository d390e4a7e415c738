"""What reduced precision does to training, measured against float64 (docs/fastpath.md, "bf16 and SGLD").

For each autocast precision (bf16; fp16 too on CUDA) and the two SGLD rules of the authors' scripts (K = 5
with σ = 0.001, K = 2 with σ = 0), from an M-JEM trainer's own state at the bench sizes (CPU: WRN-10-1;
CUDA and FASTEBM_BENCH_SIZE=full: the paper's WRN-28-10; real CIFAR-10 JPEGs), at initialization and, at
the CPU size, after 20 plain iterations:

- SGLD under autocast (:func:`fastebm.fastpath.precision.measure_sgld_amp`): the K-step chains' deviation from the
  float64 chains with the same noise, relative to the noise SGLD injects (σ·Σε) and to the displacement
  ‖x_K − x_0‖, beside the fp32 chains' deviation;
- the loss pass under autocast (:func:`fastebm.fastpath.precision.measure_amp`): the weight gradient's error against
  float64 relative to the minibatch gradient noise, and the energy gap E(x+) − E(x−) error beside fp32's.

The self-check accepts a precision when its perturbation adds at most 10 % to the noise the algorithm
already carries (0.46x of it); the last columns say whether each passes. The timing is of one measurement.
"""
from __future__ import annotations

import pytest
import torch

from bench import _common as C

STATES = [0] if C.FULL else [0, 20]  # plain iterations before measuring (full size: the GPU check's time)
PRECISIONS = ["bf16"] + (["fp16"] if C.CUDA else [])
CONFIGS = [(5, 0.001), (2, 0.0)]


def _trainer(k, noise, precision):
    from fastebm.config.options import plain_flags

    flags = dict(plain_flags(), amp=precision, sgld_amp=precision, fast_path="off")
    return C.make_trainer("mjem", k, flags, noise=noise)


@pytest.mark.parametrize("trained", STATES, ids=[f"after{n}" if n else "init" for n in STATES])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("k,noise", CONFIGS, ids=[f"k{k}" for k, _ in CONFIGS])
def test_reduced_precision_against_float64(benchmark, k, noise, precision, trained):
    from fastebm.fastpath.precision import NOISE_SHARE, measure_amp, measure_sgld_amp
    from fastebm.run.trainer import lr_at

    tr = _trainer(k, noise, precision)
    plain = tr.fast.plain
    for it in range(trained):  # plain fp32 iterations: the network the measurement sees has trained a little
        for g in tr.opt.param_groups:
            g["lr"] = lr_at(tr.cfg, it)
        tr.fast.lr.fill_(tr.opt.param_groups[0]["lr"])
        plain(*tr.fast.batch(it))
    tr.model.train()
    out = {}

    def measure():
        out.update(sgld=measure_sgld_amp(tr.fast), amp=measure_amp(tr.fast, trained))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    s, a = out["sgld"], out["amp"]
    sgld_ok = s["over_noise"] <= NOISE_SHARE
    amp_ok = a["grad_err"] <= NOISE_SHARE * a["grad_noise"]
    benchmark.extra_info.update(device=C.DEVICE, k=k, noise=noise, precision=precision, trained=trained, **s,
                                **a, sgld_passes=sgld_ok, amp_passes=amp_ok)
    sec = C.summary_section(
        "Reduced precision vs float64 (M-JEM; chains from the buffer, loss pass on the iteration's batches)",
        ["K, sigma", "prec.", "iters", "SGLD dev/noise", "SGLD dev/disp", "fp32 dev/disp", "grad err",
         "grad noise", "gap err", "fp32 gap err", "SGLD passes", "loss pass passes"])
    if not sec["notes"]:
        sec["notes"].append(f"dev/noise: chain deviation from float64 over the injected SGLD noise (inf: sigma 0); "
                            f"passes: at most {NOISE_SHARE:.2f}x the noise the algorithm carries (adds <= 10 %)")
    sec["rows"].append([f"{k}, {noise:g}", precision, trained, f"{s['over_noise']:.2f}",
                        f"{s['over_displacement']:.1e}", f"{s['fp32_over_displacement']:.1e}",
                        f"{a['grad_err']:.1e}", f"{a['grad_noise']:.1e}", f"{a['gap_err']:.1e}",
                        f"{a['gap_err_fp32']:.1e}", "yes" if sgld_ok else "no", "yes" if amp_ok else "no"])
    assert torch.isfinite(torch.tensor([s["over_displacement"], a["grad_err"], a["gap_err"]])).all()
