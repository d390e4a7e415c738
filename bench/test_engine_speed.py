"""The engine's fast path against the plain reference path, same iteration, side by side.

Configurations: M-EBM K = 2 and M-JEM K = 5 (a full ``Trainer.train_step`` each, as in
``test_epoch_speed``), built twice:

- ``plain``: ``fastebm.config.options.plain_flags()``, every fast-path flag off;
- ``fast``: today's per-piece fast path: on CUDA ``fast_flags("cuda")`` without the compiled step
  (torch.compile of the network, CUDA-graph SGLD loop, bf16 autocast, Triton kernels, channels_last);
  on CPU ``fast_flags("cpu")`` is the plain path, so the CPU comparison is ``compile="default"``
  (torch.compile with the C++/OpenMP Inductor backend) against plain;
- ``step``: the whole iteration as one compiled graph (``compile_step=True``; on CUDA with
  ``fast_flags("cuda")``, i.e. Inductor + CUDA graphs + bf16 + channels_last; on CPU Inductor C++ with
  ``compile="default"``).

The fast and step runs use ``fast_path="strict"``: their self-check runs at the first (warm-up) call and
a component that fails it is an error, so a figure never silently measures the plain path.

Whatever the flags do in the engine today is what is measured; ``extra_info["dynamo_graphs"]`` counts the
graphs torch.compile produced while building and warming the fast run, so a flag that the trainer does not
act on yet shows up as 0 graphs (and a ratio ≈ 1).

All four runs are timed interleaved (same method as the epoch benchmark); the ratio plain/fast of the
medians is in ``extra_info`` and the summary table. The only assertion on speed: the fast path is not
more than 20 % slower than the plain one (noise margin), and both losses stay finite.
"""
from __future__ import annotations

import pytest

from bench import _common as C

CONFIGS = [("mebm", 2), ("mjem", 5)]
MODES = ("plain", "fast", "step")
ROUNDS, WARMUP = (10, 3) if C.CUDA else (5, 2)
PEDANTIC_ROUNDS, PEDANTIC_WARMUP = (5, 1) if C.CUDA else (2, 0)


def fast_mode_flags(mode: str = "fast") -> dict:
    from fastebm.config.options import fast_flags, plain_flags

    flags = fast_flags("cuda") if C.CUDA else dict(plain_flags(), compile="default")
    return dict(flags, compile_step=mode == "step", fast_path="strict")


def _dynamo_graphs() -> int:
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001 - no dynamo: nothing compiled
        return 0
    return int(counters["stats"].get("unique_graphs", 0))


@pytest.fixture(scope="session")
def engine_runs():
    from fastebm.config.options import plain_flags

    runs = {}
    for model, k in CONFIGS:
        for mode in MODES:
            g0 = _dynamo_graphs()
            flags = plain_flags() if mode == "plain" else fast_mode_flags(mode)
            step = C.TrainStep(C.make_trainer(model, k, flags))
            flops = C.count_flops(step) if mode == "plain" else None  # counted on the reference path
            if mode != "plain":
                for _ in range(2):  # compilation / graph capture happens here, outside the timing
                    C.timed(step)
            runs[(model, k, mode)] = dict(step=step, flags=flags, flops=flops, dynamo_graphs=_dynamo_graphs() - g0)
    times = C.interleaved_medians({key: r["step"] for key, r in runs.items()}, ROUNDS, WARMUP)
    for key, r in runs.items():
        r["times"], r["median"] = times[key], C.median(times[key])
    for model, k in CONFIGS:
        for mode in MODES[1:]:
            runs[(model, k, mode)]["flops"] = runs[(model, k, "plain")]["flops"]
    return runs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model,k", CONFIGS, ids=[f"{m}-k{k}" for m, k in CONFIGS])
def test_engine_speed(benchmark, engine_runs, model, k, mode):
    r = engine_runs[(model, k, mode)]
    plain, fast, step = (engine_runs[(model, k, m)] for m in MODES)
    benchmark.group = f"engine-{model}-k{k}"
    benchmark.pedantic(r["step"], rounds=PEDANTIC_ROUNDS, iterations=1, warmup_rounds=PEDANTIC_WARMUP)
    C.sync()
    ratio = plain["median"] / fast["median"]
    ratio_step = plain["median"] / step["median"]
    tflops = r["flops"] / r["median"] / 1e12
    peak = C.device_peak_tflops()
    benchmark.extra_info.update(
        device=C.DEVICE, model=model, k=k, mode=mode, flags=r["flags"], dynamo_graphs=r["dynamo_graphs"],
        interleaved_median_s=r["median"], interleaved_times_s=r["times"],
        min_per_epoch=r["median"] * C.ITERS_PER_EPOCH / 60, fast_over_plain_speedup=ratio,
        step_over_plain_speedup=ratio_step,
        step_over_fast_speedup=fast["median"] / step["median"], flops_per_iter=r["flops"], achieved_tflops=tflops,
        fraction_of_bf16_peak=(tflops / peak) if peak else None)
    if mode == "step":
        sec = C.summary_section(
            "Engine: plain vs per-piece fast path vs compiled step (same iteration, interleaved medians)",
            ["config", "plain s/iter", "fast s/iter", "step s/iter", "fast/plain", "step/plain", "step/fast",
             "fast flags", "dynamo graphs fast/step", "step TFLOP/s" + (" (% bf16 peak)" if C.CUDA else "")])
        if not sec["notes"]:
            sec["notes"].append("fast = per-piece fast path (on CPU: compile=default only, fast_flags('cpu') == "
                                "plain_flags()); step = the whole iteration as one compiled graph "
                                "(compile_step=True; CUDA graphs on CUDA); ratios = speedups over the column "
                                "named second; compile time excluded (warm-up calls).")
        on = ",".join(f"{n}={v}" for n, v in fast["flags"].items()
                      if v not in (False, "off") and n not in ("compile_step", "fast_path"))
        tf = f"{tflops:.3f}" + (f" ({100 * tflops / peak:.1f} %)" if peak else "")
        sec["rows"].append([f"{model}-k{k}", f"{plain['median']:.3f}", f"{fast['median']:.3f}",
                            f"{step['median']:.3f}", f"{ratio:.2f}x", f"{ratio_step:.2f}x",
                            f"{fast['median'] / step['median']:.2f}x", on,
                            f"{fast['dynamo_graphs']}/{step['dynamo_graphs']}", tf])
    if mode == "fast":
        assert ratio >= 0.8, f"{model} K={k}: fast path {1 / ratio:.2f}x slower than the plain path"
    assert r["step"].finite(), f"{model} K={k} {mode}: non-finite loss"
