"""How many CPU threads a run's torch operations use.

torch's default is one intra-op thread per physical core. On a machine that other jobs share, OpenMP
threads that wait for each other on busy cores collapse (bench/test_threads.py measures it; figures in
bench/RESULTS.md, "CPU threads"). So by default a run takes the cores it
may use that are free now, at least one; ``--threads N`` or ``OMP_NUM_THREADS`` decide instead. Under
torchrun the cores are shared by the ranks.

- The cores it may use: its affinity mask (``taskset``, a cpuset), capped by its cgroup's CPU quota (docker
  ``--cpus``, Kubernetes CPU limits: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``,
  rounded up, the smallest along the cgroup's path), as the Go runtime and the JVM read it.
- Free now: those cores minus how many of them were busy over :data:`LOAD_WINDOW_S` seconds at start
  (``/proc/stat``), not the 1-minute load average, which lags a core just freed (bench/RESULTS.md, "The digits
  demo, whole runs"). Where ``/proc/stat`` cannot be read (not Linux), the 1-minute load average.
"""
from __future__ import annotations

import math
import os
import time

import torch

PROC_SELF = "/proc/self"  # cgroup, mountinfo
PROC_STAT = "/proc/stat"
LOAD_WINDOW_S = 0.2


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _cgroup_mounts(proc: str, sysroot: str) -> dict[str, tuple[str, str]]:
    """``"v2"`` / ``"v1"`` → (mount root within the hierarchy, mount point) of the unified hierarchy and of the
    v1 hierarchy holding the ``cpu`` controller, from ``proc/mountinfo``; /sys/fs/cgroup where unreadable."""
    mounts: dict[str, tuple[str, str]] = {}
    for line in (_read(os.path.join(proc, "mountinfo")) or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, kind = left.split(), right.split()
        if len(fields) < 5 or len(kind) < 3:
            continue
        if kind[0] == "cgroup2":
            mounts.setdefault("v2", (fields[3], sysroot + fields[4]))
        elif kind[0] == "cgroup" and "cpu" in kind[2].split(","):
            mounts.setdefault("v1", (fields[3], sysroot + fields[4]))
    if not mounts:
        base = sysroot + "/sys/fs/cgroup"
        mounts = {"v2": ("/", base), "v1": ("/", base + "/cpu")}
    return mounts


def _quota(folder: str, version: str) -> float | None:
    """CPUs of the quota set in one cgroup folder, None when none is set there."""
    if version == "v2":
        parts = (_read(os.path.join(folder, "cpu.max")) or "").split()
        quota, period = (parts + ["max", "100000"])[:2] if parts else ("max", "100000")
    else:
        quota = (_read(os.path.join(folder, "cpu.cfs_quota_us")) or "-1").strip()
        period = (_read(os.path.join(folder, "cpu.cfs_period_us")) or "100000").strip()
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(proc: str = PROC_SELF, sysroot: str = "") -> float | None:
    """The CPUs this process's cgroup may use by its CPU quota (quota / period, e.g. 4.0 for docker ``--cpus
    4``), the smallest along its cgroup's path (cgroup v2 ``cpu.max``; v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` of the hierarchy with the ``cpu`` controller), or None when there is none.

    Args:
        proc: the folder of this process's ``cgroup`` and ``mountinfo`` (``/proc/self``).
        sysroot: prefix of the mount points (tests read a cgroup tree made under a temporary folder).
    """
    mounts = _cgroup_mounts(proc, sysroot)
    limits = []
    for line in (_read(os.path.join(proc, "cgroup")) or "").splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        version = "v2" if hid == "0" and controllers == "" else "v1" if "cpu" in controllers.split(",") else None
        if version is None or version not in mounts:
            continue
        root, mount = mounts[version]
        rel = os.path.relpath(path, root) if (path + "/").startswith(root.rstrip("/") + "/") else "."
        folder = os.path.normpath(os.path.join(mount, rel))
        if not os.path.isdir(folder):  # a path of the host's hierarchy, seen from a container: its own root
            folder = mount
        while True:
            limit = _quota(folder, version)
            if limit is not None:
                limits.append(limit)
            if os.path.normpath(folder) == os.path.normpath(mount) or len(folder) <= len(mount):
                break
            folder = os.path.dirname(folder)
    return min(limits) if limits else None


def _affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def usable_cores(proc: str = PROC_SELF, sysroot: str = "") -> int:
    """The CPUs this process may run on: its affinity mask (``os.cpu_count()`` where there is none), capped by
    its cgroup's CPU quota rounded up (:func:`cgroup_cpu_limit`); at least 1."""
    cores = len(_affinity())
    limit = cgroup_cpu_limit(proc, sysroot)
    return max(1, min(cores, math.ceil(limit)) if limit is not None else cores)


def cpu_times(stat: str = PROC_STAT) -> dict[int, tuple[int, int]] | None:
    """CPU number → (busy, total) clock ticks since boot from ``/proc/stat``'s ``cpuN`` lines (busy: all but
    idle and iowait; guest time is inside user time there, so left out of the total), or None if unreadable."""
    text = _read(stat)
    if text is None:
        return None
    times = {}
    for line in text.splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and len(values) >= 4:
            ticks = [int(v) for v in values[:8]]
            times[int(name[3:])] = (sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0), sum(ticks))
    return times or None


def busy_between(before: dict, after: dict, cpus: list[int]) -> float:
    """How many of ``cpus`` were busy between two :func:`cpu_times` readings (0 to len(cpus)): the sum over
    them of busy ticks / all ticks. A CPU missing from either reading, or without ticks, counts as idle."""
    busy = 0.0
    for c in cpus:
        if c in before and c in after and after[c][1] > before[c][1]:
            busy += (after[c][0] - before[c][0]) / (after[c][1] - before[c][1])
    return busy


def current_load(window_s: float = LOAD_WINDOW_S, stat: str = PROC_STAT) -> tuple[float, str]:
    """(CPUs of this process's affinity mask busy over the next ``window_s`` seconds, ``"load"``) from
    ``/proc/stat``; where that cannot be read, (the 1-minute load average, ``"1-min load"``), (0, ...) if neither."""
    before = cpu_times(stat)
    if before is not None:
        time.sleep(window_s)
        after = cpu_times(stat)
        if after is not None:
            return busy_between(before, after, _affinity()), "load"
    try:
        return os.getloadavg()[0], "1-min load"
    except (AttributeError, OSError):
        return 0.0, "load unknown"


def choose_threads(requested: int | None, world_size: int = 1) -> tuple[int, str]:
    """The intra-op thread count for this process and why: ``requested`` (``--threads``) when given, torch's
    own when ``OMP_NUM_THREADS`` is set, otherwise the free cores shared by the ranks, rounded: ⌊min(affinity
    cores − busy ones, CPU quota) / world_size + ½⌋, between 1 and :func:`usable_cores` (module docstring).

    Returns (threads, reason) with reason a short phrase for the banner, e.g. ``"4 cores (CPU quota), load 0.3"``.
    """
    if requested:
        return int(requested), "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cores, affinity = usable_cores(), len(_affinity())
    load, what = current_load()
    free = min(affinity - load, cores)
    n = max(1, math.floor(free / max(world_size, 1) + 0.5))
    quota = " (CPU quota)" if cores < affinity else ""
    return min(n, cores), f"{cores} cores{quota}, {what} {load:.1f}"


def fast_low_precision(dtype: str) -> bool:
    """Whether this CPU computes ``"bf16"`` / ``"fp16"`` in hardware (AVX-512 BF16 / FP16 or AMX flags in
    /proc/cpuinfo); without them PyTorch emulates the type and autocast is many times slower than fp32
    (bench/RESULTS.md, "Reduced precision")."""
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
