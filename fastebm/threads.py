"""How many CPU threads a run's torch operations use.

torch's default is one intra-op thread per physical core. On a machine that other jobs share, OpenMP
threads that wait for each other on busy cores collapse: the digits demo ran 6.4× slower with two threads
on two busy cores than with one (bench/test_threads.py measures it). So by default a run takes the cores it
may use minus the current load (the 1-minute load average), at least one; ``--threads N`` or
``OMP_NUM_THREADS`` decide instead. Under torchrun the cores are shared by the ranks.
"""
from __future__ import annotations

import math
import os

import torch


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(requested: int | None, world_size: int = 1) -> tuple[int, str]:
    """The intra-op thread count for this process and why: ``requested`` (``--threads``) when given, torch's
    own when ``OMP_NUM_THREADS`` is set, otherwise ⌊(usable cores − 1-minute load) / world_size⌋, at least 1.

    Returns (threads, reason) with reason a short phrase for the banner.
    """
    if requested:
        return int(requested), "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    n = max(1, math.floor((cores - load) / max(world_size, 1) + 0.5))
    return min(n, cores), f"{cores} cores, load {load:.1f}"


def fast_low_precision(dtype: str) -> bool:
    """Whether this CPU computes ``"bf16"`` / ``"fp16"`` in hardware (AVX-512 BF16 / FP16 or AMX flags in
    /proc/cpuinfo); without them PyTorch emulates the type and autocast is many times slower than fp32 (a
    bf16 convolution ran 28× slower on the 2-core AVX2 machine)."""
    flags = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}.get(dtype, ())
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return False
    return any(f" {flag}" in text for flag in flags)


def apply_threads(requested: int | None, world_size: int = 1) -> str:
    """Set torch's intra-op threads by :func:`choose_threads`; returns the banner phrase, e.g.
    ``"1 thread (2 cores, load 1.2)"``."""
    n, why = choose_threads(requested, world_size)
    torch.set_num_threads(n)
    return f"{n} thread{'s' if n != 1 else ''} ({why})"
