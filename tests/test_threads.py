"""The CPU thread count of a run (fastebm.run.threads): the banner's choice, the override, the load rule, container CPU
quotas (a fake cgroup tree) and the load measured at start (/proc/stat)."""
import os
import time

import torch

from fastebm.run import threads


def test_requested_threads_and_omp_num_threads_decide(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(5) == (5, "--threads")
    assert threads.choose_threads(None) == (torch.get_num_threads(), "OMP_NUM_THREADS")


def test_the_default_is_the_usable_cores_minus_the_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "_affinity", lambda: list(range(8)))
    for load, world, expected in ((0.2, 1, 8), (1.0, 1, 7), (6.7, 1, 1), (30.0, 1, 1), (0.0, 2, 4), (2.0, 4, 2)):
        monkeypatch.setattr(threads, "current_load", lambda load=load: (load, "load"))
        n, why = threads.choose_threads(None, world)
        assert n == expected and why == f"8 cores, load {load:.1f}", (load, world, n)


def _tree(tmp_path, cgroup: str, mountinfo: str | None, files: dict) -> str:
    """A fake /proc/self (cgroup, mountinfo) and cgroup file tree under tmp_path; returns the proc folder."""
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(cgroup)
    if mountinfo is not None:
        (proc / "mountinfo").write_text(mountinfo)
    for path, text in files.items():
        (tmp_path / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.lstrip("/")).write_text(text)
    return str(proc)


V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_a_container_cpu_quota_caps_the_threads(tmp_path, monkeypatch):
    """docker --cpus 4 / a Kubernetes limit of 4 CPUs on an idle 64-core node: 4 threads, not 64."""
    # cgroup v2, the limit on the pod's cgroup, an inner one without (the smallest along the path counts)
    proc = _tree(tmp_path / "v2", "0::/kubepods/pod1/ctr\n", V2_MOUNT + "31 23 0:27 / /proc rw - proc proc rw\n",
                 {"/sys/fs/cgroup/kubepods/cpu.max": "max 100000\n",
                  "/sys/fs/cgroup/kubepods/pod1/cpu.max": "400000 100000\n",
                  "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "max 100000\n"})
    assert threads.cgroup_cpu_limit(proc, str(tmp_path / "v2")) == 4.0
    monkeypatch.setattr(threads, "_affinity", lambda: list(range(64)))
    assert threads.usable_cores(proc, str(tmp_path / "v2")) == 4
    # v2 seen from inside the container (its own cgroup namespace): the mount's root holds the limit, 1.5 → 2
    proc = _tree(tmp_path / "ns", "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "150000 100000\n"})
    assert threads.cgroup_cpu_limit(proc, str(tmp_path / "ns")) == 1.5
    assert threads.usable_cores(proc, str(tmp_path / "ns")) == 2
    # v1 (docker on an older host): cpu.cfs_quota_us / cpu.cfs_period_us of the hierarchy with the cpu controller
    v1 = "40 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n"
    proc = _tree(tmp_path / "v1", "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n", v1,
                 {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
                  "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_limit(proc, str(tmp_path / "v1")) == 2.0
    # no quota anywhere: v2 "max", v1 -1, or no cgroup files at all
    for name, cgroup, files in (("nov2", "0::/a\n", {"/sys/fs/cgroup/a/cpu.max": "max 100000\n"}),
                                ("nov1", "1:cpu:/\n", {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n"}),
                                ("none", "0::/\n", {})):
        proc = _tree(tmp_path / name, cgroup, None, files)  # no mountinfo: the usual /sys/fs/cgroup places
        assert threads.cgroup_cpu_limit(proc, str(tmp_path / name)) is None, name
        assert threads.usable_cores(proc, str(tmp_path / name)) == 64, name
    # the rule: the quota caps the free cores, the busy cores of the node still count
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    for load, expected in ((0.0, 4), (58.0, 4), (62.0, 2), (63.6, 1)):
        monkeypatch.setattr(threads, "current_load", lambda load=load: (load, "load"))
        assert threads.choose_threads(None) == (expected, f"4 cores (CPU quota), load {load:.1f}"), load


def test_the_load_is_measured_now_not_the_lagging_1_minute_average(tmp_path, monkeypatch):
    """Just after pip install on an idle 2-core machine the 1-minute average still says 1.3; the cores are idle
    now, so the run takes 2 threads (1.85x faster than 1), read from /proc/stat over a fraction of a second."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 850 0 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 450 0 0 0 0 0 0\n"
                    "intr 1 2 3\nctxt 4\n")
    before = threads.cpu_times(str(stat))
    assert before == {0: (75, 500), 1: (75, 525)}  # busy: all but idle and iowait
    after = {0: (75 + 19, 500 + 20), 1: (75 + 1, 525 + 20)}  # cpu0 busy 95 % of the window, cpu1 5 %
    assert threads.busy_between(before, after, [0, 1]) == 1.0 and threads.busy_between(before, after, [1]) == 0.05
    readings = iter([before, {0: (76, 520), 1: (76, 545)}])  # idle now: 1 busy tick of 20 on each
    monkeypatch.setattr(threads, "cpu_times", lambda stat=None: next(readings))
    monkeypatch.setattr(os, "getloadavg", lambda: (1.3, 1.1, 0.6))
    monkeypatch.setattr(threads, "_affinity", lambda: [0, 1])
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.choose_threads(None) == (2, "2 cores, load 0.1")
    monkeypatch.setattr(threads, "cpu_times", lambda stat=None: None)  # no /proc/stat: the 1-minute average
    assert threads.choose_threads(None) == (1, "2 cores, 1-min load 1.3")


def test_the_real_measure_is_quick_and_in_range(monkeypatch):
    monkeypatch.undo()
    t0 = time.perf_counter()
    load, what = threads.current_load()
    took = time.perf_counter() - t0
    assert what == "load" and 0.0 <= load <= len(os.sched_getaffinity(0)) and took < 2 * threads.LOAD_WINDOW_S + 1


def test_apply_sets_torch_and_says_what_it_chose(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == "1 thread (--threads)" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_autocast_on_a_cpu_without_hardware_support_warns(tmp_path, capsys, monkeypatch):
    import fastebm.run.trainer as trainer_mod
    from fastebm.config.options import resolve
    from fastebm.data.datasets import load_dataset

    monkeypatch.setattr(trainer_mod, "fast_low_precision", lambda dtype: False)
    data = load_dataset("digits", split="train").subset(64, 0)
    trainer_mod.Trainer(resolve(dict(dataset="digits", amp="fp16", epochs=1, iters_per_epoch=1, buffer_size=8,
                                     out=str(tmp_path / "a"))), data)
    err = capsys.readouterr().err
    assert "--amp fp16 on a CPU without hardware support for it" in err
    monkeypatch.setattr(trainer_mod, "fast_low_precision", lambda dtype: True)
    trainer_mod.Trainer(resolve(dict(dataset="digits", amp="fp16", epochs=1, iters_per_epoch=1, buffer_size=8,
                                     out=str(tmp_path / "b"))), data)
    assert "without hardware support" not in capsys.readouterr().err
