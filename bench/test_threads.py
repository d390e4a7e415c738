"""CPU threads on a shared machine: the digits demo's iteration with 1 thread and with one per usable core,
on an idle machine and with all cores but one kept busy by spinning processes.

Why: torch's default (one thread per physical core) collapses when other jobs share the cores (OpenMP
threads wait for each other on busy cores), which is why ``fastebm.run.threads.choose_threads`` takes the usable
cores minus the load. Timed interleaved (round r runs every thread count once), medians; the summary
gives both ratios. CPU only.

These rows are the source of the demo's rates (RESULTS.md): the iteration is the one ``python -m fastebm.train``
runs (digits preset: WRN-10-1, K = 5, batches 32 / 64, all 1,437 training images), so iterations per second
here are the demo's training rate (its test evaluation, grids and checkpoints once per 100-iteration epoch,
and its start-up, not included), and 300 of them the demo's training time. The summary states the 1-minute
load average before and after each case (the machine's other jobs count: "idle" adds no spinner, it does not
make the machine idle) and the thread count a run would take at that load (``choose_threads``).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bench import _common as C
from fastebm.io.progress import duration

ROUNDS, WARMUP = 5, 1
DEMO_ITERS = 300  # python -m fastebm.train: the digits preset's 3 epochs of 100 iterations


def _spinners(n: int) -> list:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.skipif(C.CUDA, reason="CPU threads only matter for a CPU run")
@pytest.mark.parametrize("load", ["idle", "busy"])
def test_threads_on_a_shared_machine(benchmark, tmp_path, load):
    from fastebm.config.options import resolve
    from fastebm.data.datasets import load_dataset
    from fastebm.run.threads import choose_threads, usable_cores
    from fastebm.run.trainer import Trainer

    cores = usable_cores()
    if cores < 2:
        pytest.skip("one usable core: nothing to choose")
    cfg = resolve(dict(dataset="digits", out=str(tmp_path), progress=False, device="cpu"))
    tr = Trainer(cfg, load_dataset("digits", split="train"))
    if C.DATA_NAME == "not loaded":  # run alone: the summary's data line names the demo's
        C.DATA_NAME = f"digits, the demo's {len(tr.train_data)} training images at 32x32"
    step = C.TrainStep(tr)
    counts = sorted({1, cores})
    before = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    spin = _spinners(cores - 1) if load == "busy" else []
    try:
        def at(n):
            def run():
                torch.set_num_threads(n)
                return step()
            return run

        times = C.interleaved_medians({n: at(n) for n in counts}, ROUNDS, WARMUP)
        benchmark.pedantic(at(1), rounds=2, iterations=1)
        load_after = os.getloadavg()[0]
        chosen = choose_threads(None)[0]  # what a run started now would take (spinners still running)
    finally:
        for p in spin:
            p.kill()
        torch.set_num_threads(before)
    med = {n: C.median(t) for n, t in times.items()}
    ratio = med[cores] / med[1]
    benchmark.extra_info.update(load=load, cores=cores, median_s=med, one_thread_speedup=ratio,
                                it_per_s={n: 1 / m for n, m in med.items()}, loadavg_before=load_before,
                                loadavg_after=load_after, threads_chosen=chosen, demo_iters=DEMO_ITERS)
    sec = C.summary_section("CPU threads (digits demo iteration, interleaved medians)",
                            ["case", "1-min load before/after", "1 thread it/s", f"{cores} threads it/s",
                             f"1 thread vs {cores}", "run would take", f"{DEMO_ITERS} it at 1 / {cores} threads"])
    if not sec["notes"]:
        sec["notes"].append(f"busy: {cores - 1} spinning process(es) beside the run; ratio > 1: one thread is faster")
        sec["notes"].append(f"{DEMO_ITERS} it: the demo's training iterations at the median rate (start-up, test "
                            "evaluation, grids and checkpoints not included)")
    case = "as found (no spinner)" if load == "idle" else f"busy (+{cores - 1} spinner)"
    sec["rows"].append([case, f"{load_before:.1f} / {load_after:.1f}", f"{1 / med[1]:.2f}", f"{1 / med[cores]:.2f}",
                        f"{ratio:.2f}x", f"{chosen} thread(s)",
                        f"{duration(DEMO_ITERS * med[1])} / {duration(DEMO_ITERS * med[cores])}"])
    assert all(torch.isfinite(torch.tensor(t)).all() for t in times.values())
