"""CPU threads on a shared machine: the digits demo's iteration with 1 thread and with one per usable core,
on an idle machine and with all cores but one kept busy by spinning processes.

Why: torch's default (one thread per physical core) collapses when other jobs share the cores (OpenMP
threads wait for each other on busy cores), which is why ``fastebm.threads.choose_threads`` takes the usable
cores minus the load. Timed interleaved (round r runs every thread count once), medians; the summary
gives both ratios. CPU only.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bench import _common as C

ROUNDS, WARMUP = 5, 1


def _spinners(n: int) -> list:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.skipif(C.CUDA, reason="CPU threads only matter for a CPU run")
@pytest.mark.parametrize("load", ["idle", "busy"])
def test_threads_on_a_shared_machine(benchmark, tmp_path, load):
    from fastebm.config import resolve
    from fastebm.datasets import load_dataset
    from fastebm.threads import usable_cores
    from fastebm.trainer import Trainer

    cores = usable_cores()
    if cores < 2:
        pytest.skip("one usable core: nothing to choose")
    cfg = resolve(dict(dataset="digits", out=str(tmp_path), progress=False, device="cpu"))
    tr = Trainer(cfg, load_dataset("digits", split="train"))
    step = C.TrainStep(tr)
    counts = sorted({1, cores})
    before = torch.get_num_threads()
    spin = _spinners(cores - 1) if load == "busy" else []
    try:
        def at(n):
            def run():
                torch.set_num_threads(n)
                return step()
            return run

        times = C.interleaved_medians({n: at(n) for n in counts}, ROUNDS, WARMUP)
        benchmark.pedantic(at(1), rounds=2, iterations=1)
    finally:
        for p in spin:
            p.kill()
        torch.set_num_threads(before)
    med = {n: C.median(t) for n, t in times.items()}
    ratio = med[cores] / med[1]
    benchmark.extra_info.update(load=load, cores=cores, median_s=med, one_thread_speedup=ratio,
                                loadavg=os.getloadavg()[0])
    sec = C.summary_section("CPU threads (digits demo iteration, interleaved medians)",
                            ["load", "1 thread s/iter", f"{cores} threads s/iter", f"1 thread vs {cores}"])
    if not sec["notes"]:
        sec["notes"].append(f"busy: {cores - 1} spinning process(es) beside the run; ratio > 1: one thread is faster")
    sec["rows"].append([load, f"{med[1]:.3f}", f"{med[cores]:.3f}", f"{ratio:.2f}x"])
    assert all(torch.isfinite(torch.tensor(t)).all() for t in times.values())
