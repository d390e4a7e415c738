"""The CPU thread count of a run (fastebm.threads): the banner's choice, the override and the load rule."""
import os

import torch

from fastebm import threads


def test_requested_threads_and_omp_num_threads_decide(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(5) == (5, "--threads")
    assert threads.choose_threads(None) == (torch.get_num_threads(), "OMP_NUM_THREADS")


def test_the_default_is_the_usable_cores_minus_the_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    for load, world, expected in ((0.2, 1, 8), (1.0, 1, 7), (6.7, 1, 1), (30.0, 1, 1), (0.0, 2, 4), (2.0, 4, 2)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        n, why = threads.choose_threads(None, world)
        assert n == expected and why == f"8 cores, load {load:.1f}", (load, world, n)


def test_apply_sets_torch_and_says_what_it_chose(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == "1 thread (--threads)" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_autocast_on_a_cpu_without_hardware_support_warns(tmp_path, capsys, monkeypatch):
    import fastebm.trainer as trainer_mod
    from fastebm.config import resolve
    from fastebm.datasets import load_dataset

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
