"""Kernels: the SGLD (Langevin) update, the low-rank p0 sampler and the p0 fit.

Langevin update, x ← clamp(x − α·g + σ·ε) on an SGLD batch (64, 3, 32, 32) and (64, 3, 128, 128):
eager PyTorch (``fastebm.algorithm.sampler.langevin_update``, i.e. the kernel's reference
``kernels.reference.langevin_reference`` with noise drawn by randn_like) against the fused Triton
kernel (``kernels.langevin.langevin_step``, CUDA only). Bandwidth = the minimal traffic of the update,
read x + read g + write x = 12 bytes per element (fp32), over the median time; for the eager paths this is
an *effective* figure (they move more bytes). On CUDA the fraction of the device's copy bandwidth is
reported, from a device-to-device copy of x (8 bytes per element moved) measured in the same run.

Low-rank sampler, n = 64 samples of N(μ, U Uᵀ + diag(d)), r = 100, at D = 3,072 and 49,152: the fused
kernel (CUDA only), ``torch.distributions.LowRankMultivariateNormal.rsample``, the one-GEMM torch formula
(``GaussianInit.sample`` for the lowrank form) and a full-covariance ``MultivariateNormal`` (the reference
code's way; the distribution, i.e. the D×D Cholesky, is built outside the timing and its build time is in
extra_info). The full form at D = 49,152 needs a 49k × 49k covariance (9.7 GB in fp32) and its Cholesky:
skipped on CPU.

p0 fit (``fastebm.p0.gaussian.fit_gaussian``), full vs low-rank (r = 100), on N = 2,000 synthetic uint8 images as
D grows: time and peak memory (CUDA: torch.cuda.max_memory_allocated growth; CPU: peak RSS growth, sampled every
2 ms, of one fit run in a fresh process) next to the analytic size of one D×D float64 matrix.
"""
from __future__ import annotations

import time

import pytest
import torch

from bench import _common as C

gpu = pytest.mark.gpu
SUMMARY_LANGEVIN = "Langevin update (x <- clamp(x - a*g + s*eps)): median per call, bandwidth over 12 B/element"
SUMMARY_SAMPLER = "Low-rank p0 sampler: n = 64 samples, r = 100, median per call"
SUMMARY_FIT = "p0 fit (fit_gaussian) on N = 2,000 synthetic uint8 images: time and peak memory"


def _time_call(benchmark, fn, rounds: int, reps: int = 1, warmup: int = 1) -> float:
    """pytest-benchmark timing of ``reps`` calls of fn followed by a CUDA synchronization; returns the
    median seconds per call."""
    def target():
        for _ in range(reps):
            fn()
        C.sync()

    benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=warmup)
    if C.bench_median(benchmark) is None:  # --benchmark-disable: pedantic ran once untimed; time it here
        return C.median([C.timed(target)[0] for _ in range(rounds)]) / reps
    return C.bench_median(benchmark) / reps


# ---------------------------------------------------------------------------------------------- Langevin
LANGEVIN_SHAPES = [(64, 3, 32, 32), (64, 3, 128, 128)]
STEP, NOISE = 1.0, 0.001

_COPY_BW = {}


def copy_bandwidth(x: torch.Tensor) -> float:
    """GB/s of ``dst.copy_(x)`` (read + write = 8 bytes per fp32 element), median of 20 timed batches."""
    key = tuple(x.shape)
    if key not in _COPY_BW:
        dst = torch.empty_like(x)
        reps = 50 if C.CUDA else 5
        for _ in range(3):
            dst.copy_(x)
        ts = []
        for _ in range(20):
            dt, _ = C.timed(lambda: [dst.copy_(x) for _ in range(reps)])
            ts.append(dt / reps)
        _COPY_BW[key] = 2 * x.numel() * x.element_size() / C.median(ts) / 1e9
    return _COPY_BW[key]


@pytest.mark.parametrize("variant", ["eager_sampler", pytest.param("triton", marks=gpu)])
@pytest.mark.parametrize("shape", LANGEVIN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_langevin_update(benchmark, shape, variant):
    from fastebm.algorithm.sampler import SGLDConfig, langevin_update
    from fastebm.kernels.langevin import langevin_step, make_rng_state

    torch.manual_seed(0)
    x = torch.rand(shape, device=C.DEVICE) * 2 - 1
    g = torch.randn(shape, device=C.DEVICE) * 0.01
    if variant == "eager_sampler":
        cfg = SGLDConfig(n_steps=1, step_size=STEP, noise=NOISE)
        fn = lambda: langevin_update(x, g, cfg)  # noqa: E731
    else:
        rng = make_rng_state(0, x.device)
        out = torch.empty_like(x)
        fn = lambda: langevin_step(x, g, STEP, NOISE, rng, out=out)  # noqa: E731
    benchmark.group = f"langevin-{'x'.join(map(str, shape))}"
    reps = 20 if C.CUDA else 1
    t = _time_call(benchmark, fn, rounds=20 if C.CUDA else 15, reps=reps, warmup=2)
    gbs = 12 * x.numel() / t / 1e9
    info = dict(device=C.DEVICE, shape=list(shape), variant=variant, median_s=t, bytes_moved=12 * x.numel(),
                gb_per_s=gbs)
    frac = ""
    if C.CUDA:
        cbw = copy_bandwidth(x)
        info.update(copy_gb_per_s=cbw, fraction_of_copy_bw=gbs / cbw)
        frac = f"{100 * gbs / cbw:.0f} % of copy ({cbw:.0f} GB/s)"
    benchmark.extra_info.update(info)
    sec = C.summary_section(SUMMARY_LANGEVIN, ["shape", "variant", "us/call", "GB/s", "of copy bandwidth"])
    sec["rows"].append(["x".join(map(str, shape)), variant, f"{t * 1e6:.1f}", f"{gbs:.1f}", frac or "- (CPU)"])


# ---------------------------------------------------------------------------------------------- sampler
SAMPLER_D = [3 * 32 * 32, 3 * 128 * 128]
N_SAMPLES, RANK = 64, 100
_PARAMS = {}


def _lowrank_params(d: int):
    if d not in _PARAMS:
        g = torch.Generator().manual_seed(d)
        mean = (torch.rand(d, generator=g) * 0.2 - 0.1).to(C.DEVICE)
        u = (torch.randn(d, RANK, generator=g) * 0.02).to(C.DEVICE)
        dsq = torch.full((d,), 0.1, device=C.DEVICE)
        _PARAMS.clear()  # keep one D at a time
        _PARAMS[d] = (mean, u, dsq)
    return _PARAMS[d]


@pytest.mark.parametrize("variant", [pytest.param("triton", marks=gpu), "lowrank_mvn", "gemm", "full_mvn"])
@pytest.mark.parametrize("d", SAMPLER_D, ids=lambda d: f"D{d}")
def test_lowrank_sampler(benchmark, d, variant):
    from fastebm.kernels.lowrank_gaussian import lowrank_gaussian_sample, make_rng_state
    from fastebm.p0.gaussian import GaussianInit

    if variant == "full_mvn" and d > 12_288 and not C.CUDA:
        pytest.skip(f"full-covariance MultivariateNormal at D = {d} needs a {d}x{d} covariance "
                    f"({d * d * 4 / 1e9:.1f} GB fp32) and its Cholesky (~{d ** 3 / 3 / 1e12:.0f} TFLOP): "
                    "not on a 2-core CPU")
    mean, u, dsq = _lowrank_params(d)
    info = dict(device=C.DEVICE, d=d, n=N_SAMPLES, rank=RANK, variant=variant)
    if variant == "triton":
        rng = make_rng_state(0, mean.device)
        fn = lambda: lowrank_gaussian_sample(mean, u, dsq, N_SAMPLES, rng)  # noqa: E731
    elif variant == "lowrank_mvn":
        dist = torch.distributions.LowRankMultivariateNormal(mean, cov_factor=u, cov_diag=dsq ** 2)
        fn = lambda: dist.rsample((N_SAMPLES,)).clamp_(-1, 1)  # noqa: E731
    elif variant == "gemm":
        p0 = GaussianInit((3, int((d // 3) ** 0.5), int((d // 3) ** 0.5)), mean, "lowrank", factor=u, diag_sqrt=dsq)
        fn = lambda: p0.sample(N_SAMPLES)  # noqa: E731
    else:
        cov = u @ u.T
        cov.diagonal().add_(dsq ** 2)
        C.sync()
        t0 = time.perf_counter()
        dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
        C.sync()
        info["build_s"] = time.perf_counter() - t0  # the D×D Cholesky, once per run
        del cov
        fn = lambda: dist.rsample((N_SAMPLES,)).clamp_(-1, 1)  # noqa: E731
    benchmark.group = f"lowrank-sampler-D{d}"
    # MultivariateNormal.rsample runs n batched matrix-vector products over the D×D factor (it reads the
    # factor n times): seconds per call on CPU at D = 3,072, ~0.2 s on an H200 at D = 49,152.
    slow = variant == "full_mvn"
    reps = 1 if slow or not C.CUDA else 10
    rounds = (3 if slow else 10) if C.CUDA else (2 if slow else 5)
    t = _time_call(benchmark, fn, rounds=rounds, reps=reps, warmup=0 if slow and not C.CUDA else 1)
    info.update(median_s=t, samples_per_s=N_SAMPLES / t)
    benchmark.extra_info.update(info)
    sec = C.summary_section(SUMMARY_SAMPLER, ["D", "variant", "ms/call", "samples/s", "note"])
    note = f"MVN build (Cholesky) {info['build_s']:.2f} s" if "build_s" in info else ""
    sec["rows"].append([d, variant, f"{t * 1e3:.3f}", f"{N_SAMPLES / t:,.0f}", note])
    if variant == "full_mvn":
        del dist


# ---------------------------------------------------------------------------------------------- p0 fit
N_FIT = 2000
FIT_SIDES = [32, 64, 128] if C.CUDA else [16, 24, 32]
FULL_MAX_SIDE = 64  # the engine's default: full up to 64×64, lowrank above


@pytest.mark.parametrize("form", ["full", "lowrank"])
@pytest.mark.parametrize("side", FIT_SIDES, ids=lambda s: f"3x{s}x{s}")
def test_p0_fit(benchmark, side, form):
    from fastebm.p0.gaussian import fit_gaussian

    d = 3 * side * side
    if form == "full" and side > FULL_MAX_SIDE:
        pytest.skip(f"full covariance at D = {d}: {d * d * 8 / 1e9:.0f} GB per D×D float64 matrix; "
                    "the engine uses lowrank above 64×64")
    images = torch.randint(0, 256, (N_FIT, 3, side, side), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(side))
    peak = {}

    def fit():
        if C.CUDA:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            p0 = fit_gaussian(images, form=form, rank=100, device="cuda")
            torch.cuda.synchronize()
            peak["bytes"] = torch.cuda.max_memory_allocated() - base
        else:
            p0 = fit_gaussian(images, form=form, rank=100, device="cpu")
        return p0

    benchmark.group = "p0-fit"
    rounds = 3 if C.CUDA else (1 if form == "full" and d >= 3072 else 2)
    benchmark.pedantic(fit, rounds=rounds, iterations=1, warmup_rounds=1 if C.CUDA else 0)
    t = C.bench_median(benchmark)
    if t is None:  # --benchmark-disable
        t = C.timed(fit)[0]
    if not C.CUDA:  # memory from one more fit in a fresh process (see fit_peak_rss_subprocess)
        peak["bytes"] = C.fit_peak_rss_subprocess(side, N_FIT, form)["growth_bytes"]
    analytic = d * d * 8
    measure = "cuda.max_memory_allocated" if C.CUDA else "RSS growth sampled every 2 ms, fresh process"
    benchmark.extra_info.update(device=C.DEVICE, d=d, n=N_FIT, form=form, median_s=t, peak_bytes=peak["bytes"],
                                peak_measure=measure, dxd_float64_bytes=analytic)
    sec = C.summary_section(SUMMARY_FIT, ["D", "form", "s/fit", "peak MB", "one DxD f64 (MB)"])
    if not sec["notes"]:
        sec["notes"].append("peak = " + ("torch.cuda.max_memory_allocated growth" if C.CUDA else
                                         "peak RSS growth (sampled every 2 ms) of one fit in a fresh process"))
    sec["rows"].append([d, form, f"{t:.2f}", f"{peak['bytes'] / 2**20:.0f}", f"{analytic / 2**20:.0f}"])
