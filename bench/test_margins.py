"""The fast path's self-check, its margins on both sides measured (fastebm.fastpath.numerics,
fastebm.fastpath.selfcheck).

For every cell of the matrix the check's comparisons are gathered once from a run's own state (iteration 0
of a fresh trainer at the benchmark sizes, the schedule's peak learning rate) and judged four times: as they
are (honest rounding) and with each error the check promises to catch put into the fast result — energies
(and logits, input gradients) 3 % off, the weight update 2 % off, chains that move 2 % too far. Per output and
statistic the table gives rounding's ratio to its limit (worst cell: must be ≤ 1/3) and each injected error's
ratio (worst cell: must be ≥ 3; the error's own output, its larger statistic).

Components: ``compile_step`` (the whole iteration compiled by Inductor) and ``compile`` (the compiled network).
The Triton kernels' checks are statistical or elementwise and the CUDA-graph check needs a GPU; ``amp`` and
``sgld_amp`` are judged against the algorithm's own noise, not rounding (bench/test_precision.py).

Cells: M-EBM K = 2 and M-JEM K = 5, seeds 1, 2, 3, around a base cell (this CPU's ATen kernels and
Inductor vector width, 1 thread, fp32) one change at a time: Inductor's 256-bit vectors (where the CPU has
512), 2 threads, TF32 rounding of every convolution and matmul simulated (bench/_tf32.py), and ATen's AVX2
kernels with 256-bit vectors (a subprocess with ATEN_CPU_CAPABILITY=avx2, where the CPU has more). A cell this
CPU cannot run is reported as skipped. The data are the CIFAR-10 JPEGs (bench/_common.py); on the bundled digits
that stand in where they are absent, an injected error caught inside the 3× margin is an expected failure.
``FASTEBM_BENCH_SIZE=small``: WRN-10-1 at 16×16, batch 8, seed 1 only.
On CUDA one cell per configuration instead, ``gpu-fp32``: the GPU's fast path with the compiled step in fp32
(cuDNN's own algorithms, TF32 convolutions, Inductor's Triton kernels) at the paper's sizes, seed 1.

    python -m pytest bench/test_margins.py --benchmark-only
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from bench import _common as C

CONFIGS = [("mebm", 2), ("mjem", 5)]
SMALL = os.environ.get("FASTEBM_BENCH_SIZE", "") == "small"
SEEDS = (1,) if SMALL or C.CUDA else (1, 2, 3)  # CUDA: WRN-28-10, one seed inside bench/gpu_check.sh's time
NATIVE = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", ...
VARIANTS = {  # name → (Inductor vector width or None for the native one, threads, TF32 simulated)
    "base": (None, 1, False),
    "simd256": (256, 1, False),
    "threads2": (None, 2, False),
    "tf32": (None, 1, True),
}
GPU_VARIANT = "gpu-fp32"  # CUDA: the GPU's own rounding (cuDNN's algorithms, TF32 convolutions, Triton reductions)
INJECTED = {"energy 3 %": 1.03, "weight update 2 %": 1.02, "chains 2 %": 1.02}
TARGET = {"energy 3 %": ("E(x+)", "E(x-)", "logits", "energy", "input gradient"),
          "weight update 2 %": ("weight update",), "chains 2 %": ("negatives",)}
HONEST_MAX, INJECTED_MIN = 1 / 3, 3.0


def _skip_reason(variant: str) -> str | None:
    if C.CUDA != (variant == GPU_VARIANT):
        return "a CUDA cell" if not C.CUDA else "a CPU cell (the GPU has its own: gpu-fp32)"
    if variant == "simd256" and NATIVE != "AVX512":
        return f"this CPU's native Inductor width is already 256 bits ({NATIVE})"
    if variant == "aten_avx2" and NATIVE != "AVX512":
        return f"ATen's AVX2 kernels are this CPU's own ({NATIVE}): the base cell"
    return None


def _trainer(model: str, k: int, seed: int):
    from fastebm.config.options import fast_flags, plain_flags

    flags = dict(plain_flags(), compile="default", compile_step=True, fast_path="off", seed=seed)
    if C.CUDA:  # the GPU's fast path with the compiled step, in fp32: bf16 is judged by its noise budget
        flags = dict(fast_flags("cuda"), compile_step=True, amp="off", fast_path="off", seed=seed)
    if not SMALL:
        return C.make_trainer(model, k, flags)
    from fastebm.config.options import resolve
    from fastebm.data.imageset import ImageSet
    from fastebm.run.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (64, 3, 16, 16), generator=g, dtype=torch.uint8), torch.arange(64) % 10,
                    10, "toy")
    cfg = resolve(dict(flags, dataset="folder", device="cpu", model=model, k=k, depth=10, width=1, buffer_size=64,
                       batch_size=8, cls_batch_size=16, progress=False, out=C._RUN_DIR))
    return Trainer(cfg, data)


def _inject(g: dict, how: str, component: str) -> dict:
    """A copy of gathered outputs whose fast result carries one injected error."""
    fast = dict(g["fast"])
    f = INJECTED[how]
    if how == "energy 3 %":
        for key in TARGET[how]:
            if key in fast:
                fast[key] = f * fast[key]
    elif how == "weight update 2 %" and component == "compile_step":
        fast["weight update"] = [f * t for t in fast["weight update"]]
    elif how == "chains 2 %" and component == "compile_step":
        x0 = g["x0"].to(fast["negatives"].dtype)
        fast["negatives"] = x0 + f * (fast["negatives"] - x0)
    else:
        return None
    return dict(g, fast=fast)


def measure_cell(model: str, k: int, seed: int, variant: str) -> list[dict]:
    """Gather and judge both components in one cell; rows of {component, output, statistic, honest, <injected
    name>: ratio} (ratios: statistic / limit)."""
    from bench._tf32 import tf32_emulation
    from fastebm.fastpath.selfcheck import compare_compile, compare_compile_step, gather_compile, gather_compile_step

    simdlen, threads, tf32 = VARIANTS.get(variant, (None, 1, False) if variant == GPU_VARIANT else (256, 1, False))
    torch._dynamo.reset()
    torch._inductor.config.cpp.simdlen = simdlen
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        with tf32_emulation(tf32):
            tr = _trainer(model, k, seed)
            fp = tr.fast
            fp.lr.fill_(tr.cfg.lr)
            for group in fp.opt.param_groups:
                group["lr"] = tr.cfg.lr
            fp.model.train()
            for component, gather, compare in (("compile_step", gather_compile_step, compare_compile_step),
                                               ("compile", gather_compile, compare_compile)):
                t0 = time.perf_counter()
                g = gather(fp, 0)
                if os.environ.get("FASTEBM_MARGINS_DUMP"):  # the gathered outputs, to study a criterion offline
                    os.makedirs(os.environ["FASTEBM_MARGINS_DUMP"], exist_ok=True)
                    torch.save(g, os.path.join(os.environ["FASTEBM_MARGINS_DUMP"],
                                               f"{component}-{_cell_name(model, k, seed, variant)}.pt"))
                honest = {(a.name, a.statistic): a.ratio for a in compare(g)}
                seconds = time.perf_counter() - t0  # the check's cost (with a first compile for compile_step)
                injected = {}
                for how in INJECTED:
                    bad = _inject(g, how, component)
                    if bad is not None:
                        worst = {}
                        for a in compare(bad):
                            worst[a.name] = max(worst.get(a.name, 0.0), a.ratio)
                        injected[how] = worst
                for (name, stat), ratio in honest.items():
                    row = dict(component=component, output=name, statistic=stat, honest=ratio, seconds=seconds)
                    for how, worst in injected.items():
                        if name in TARGET[how] and name in worst:
                            row[how] = worst[name]
                    rows.append(row)
    finally:
        torch.set_num_threads(before)
        torch._inductor.config.cpp.simdlen = None
        torch._dynamo.reset()
    return rows


def _cell_name(model, k, seed, variant) -> str:
    return f"{model}-k{k}-s{seed}-{variant}"


def _cells_in_subprocess(model: str, k: int, variant: str) -> dict:
    """The cells of one configuration and variant in a fresh process: ATen's capability is fixed at process
    start, and Inductor's C++ kernels compiled at 2 threads after a first compile at 1 thread in the same
    process came out wrong (every weight tensor's update 30x the error of a fresh process; torch 2.14.1) —
    a run sets its thread count once, before anything is compiled, and so does each cell here."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if variant == "aten_avx2":
        env["ATEN_CPU_CAPABILITY"] = "avx2"
    # Inductor's cache of one vector width must not serve another: torch 2.14.1 loaded code compiled under
    # ATEN_CPU_CAPABILITY=avx2 into a native AVX-512 process, which then corrupted its heap
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"fastebm-margins-inductor-{variant}")
    out = subprocess.run([sys.executable, "-m", "bench.test_margins", model, str(k), variant], cwd=root, env=env,
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} cells of {model} failed in their subprocess:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


_RESULTS: dict = {}  # cell name → rows


def _record(benchmark, model, k, variant, cells: dict) -> None:
    _RESULTS.update(cells)
    benchmark.extra_info.update(device=C.DEVICE, isa=NATIVE, model=model, k=k, variant=variant, cells=cells)
    sec = C.summary_section(
        f"Self-check margins (fastebm.fastpath.numerics; CPU {NATIVE}; ratio = statistic / limit, worst cell)",
        ["component", "output", "statistic", "rounding (<= 1/3)", "worst cell", "injected (>= 3)", "worst cell"])
    worst = {}
    for cell, rows in _RESULTS.items():
        for r in rows:
            key = (r["component"], r["output"], r["statistic"])
            w = worst.setdefault(key, {"honest": (-1.0, ""), "injected": {}})
            if r["honest"] > w["honest"][0]:
                w["honest"] = (r["honest"], cell)
            for how in INJECTED:
                if how in r and r[how] < w["injected"].get(how, (float("inf"), ""))[0]:
                    w["injected"][how] = (r[how], cell)
    sec["rows"][:] = []
    for (component, output, stat), w in sorted(worst.items()):
        inj = "; ".join(f"{how}: {v:.1f}" for how, (v, _) in w["injected"].items()) or "-"
        inj_cell = "; ".join(c for _, c in w["injected"].values()) or "-"
        sec["rows"].append([component, output, stat, f"{w['honest'][0]:.3f}", w["honest"][1], inj, inj_cell])
    if not sec["notes"]:
        sec["notes"].append("injected: each error's ratio on its own output (the larger of its statistics); "
                            "cells: model-K-seed-variant (base: native ATen and Inductor width, 1 thread, fp32)")


def _assert_margins(cells: dict) -> None:
    """Rounding ≤ 1/3 of every limit and each injected error ≥ 3× it. On the bundled digits (the fallback where
    the CIFAR-10 JPEGs are absent) the matrix's promise is not made: the plain path's own chains differ from
    float64 by up to 7.5 % of their displacement after M-JEM's 5 steps there, so an injected error that is
    caught (ratio ≥ 1) but inside the 3× margin is an expected failure that reports its figures."""
    bad, weak = [], []
    for cell, rows in cells.items():
        for r in rows:
            if r["honest"] > HONEST_MAX:
                bad.append(f"{cell} {r['component']} {r['output']} {r['statistic']}: rounding at {r['honest']:.2f} "
                           "of the limit")
            for how in INJECTED:  # the error must stand out on the output it targets
                if r.get(how, INJECTED_MIN) < INJECTED_MIN:
                    msg = f"{cell} {r['component']} {r['output']}: {how} only {r[how]:.2f}x the limit"
                    (weak if r[how] >= 1 and not C.cifar_root() else bad).append(msg)
    assert not bad, "; ".join(bad)
    if weak:
        pytest.xfail("on the bundled digits (no CIFAR-10 JPEGs) caught, but inside the 3x margin: " + "; ".join(weak))


VARIANT_IDS = list(VARIANTS) + ["aten_avx2", GPU_VARIANT]


@pytest.mark.parametrize("variant", VARIANT_IDS)
@pytest.mark.parametrize("model,k", CONFIGS, ids=[f"{m}-k{k}" for m, k in CONFIGS])
def test_margins(benchmark, model, k, variant):
    reason = _skip_reason(variant)
    if reason:
        pytest.skip(reason)
    cells = benchmark.pedantic(_cells_in_subprocess, args=(model, k, variant), rounds=1, iterations=1)
    _record(benchmark, model, k, variant, cells)
    _assert_margins(cells)


if __name__ == "__main__":  # one configuration's cells of one variant (see _cells_in_subprocess)
    m, kk, var = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    print(json.dumps({_cell_name(m, kk, s, var): measure_cell(m, kk, s, var) for s in SEEDS}))
