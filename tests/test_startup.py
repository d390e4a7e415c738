"""The first seconds of a run: what the CLI says before the first iteration, in which order, and the warning
about learning-rate decays that a run never reaches. Timings are not asserted here (bench/test_threads.py
measures the demo's iteration rate; bench/RESULTS.md "The digits demo, whole runs" has the figures)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from fastebm.config.options import resolve
from fastebm.run.schedule import decays_after_end, lr_at
from fastebm.train import decay_warning, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CLI = ["--depth", "10", "--width", "1", "--buffer-size", "32", "--batch-size", "8", "--cls-batch-size", "8",
            "--train-subset", "64", "--test-subset", "16", "--no-progress", "--no-tensorboard", "--epochs", "1",
            "--iters-per-epoch", "2", "--k", "1", "--warmup-iters", "1"]


def test_digits_are_read_without_importing_scikit_learn():
    from sklearn.datasets import load_digits

    from fastebm.data.datasets import _digits_arrays

    images, labels = _digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
    code = ("import sys; from fastebm.data.datasets import load_digits; d = load_digits('train'); "
            "print(len(d), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["1437", "False"], out.stderr[-2000:]


def test_the_banner_comes_before_the_build_and_the_build_says_where_it_is(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(TINY_CLI + ["--out", out]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    first = err[0]
    assert first.startswith("fastebm: mjem on digits (64 training images"), err
    assert "K=1" in first and "WRN-10-1" in first, err
    assert "2 iterations (1 epoch(s) of 2)" in first and f"run folder {out}" in first, err
    # the digits preset decays at epoch 2: never reached in this 1-epoch run, said once, right after the banner
    assert err[1].startswith("fastebm: warning: the learning rate never decays at epoch(s) 2 of --decay-epochs 2 "
                             "(the recipe's)") and "--decay-epochs alone" in err[1], err
    assert sum("never decays" in line for line in err) == 1, err
    built = next(i for i, line in enumerate(err) if "and optimizer built; p0 (Eq. 6" in line)
    fast = next(i for i, line in enumerate(err) if line.startswith("fastebm: fast path:"))
    assert 1 < built < fast, err


def test_stages_come_after_every_check_and_before_the_slow_build(tmp_path):
    from fastebm.run.trainer import Trainer

    seen = []

    def stage(tr, what):
        seen.append((what, hasattr(tr, "model"), hasattr(tr, "buffer"), os.path.isdir(tr.out)))

    cfg = resolve(dict(dataset="digits", depth=10, width=1, buffer_size=16, batch_size=8, cls_batch_size=8,
                       train_subset=32, epochs=1, iters_per_epoch=1, out=str(tmp_path / "r"), progress=False))
    Trainer(cfg, on_stage=stage)
    assert seen == [("checked", False, False, True), ("p0", True, False, True)]


def test_decays_after_the_end_of_the_run():
    # the imagenet32 preset: 50 epochs (paper Section 5) with the CIFAR scripts' decays at 60 / 120 / 180
    cfg = resolve(dict(dataset="imagenet32"))
    assert cfg.epochs == 50 and decays_after_end(cfg) == [60, 120, 180]
    last = cfg.total_iters - 1
    assert lr_at(cfg, last) == cfg.lr  # never decayed: what the warning says
    line = decay_warning(cfg, {})
    assert line.startswith("fastebm: warning: the learning rate never decays at epoch(s) 60, 120, 180 of "
                           "--decay-epochs 60 120 180 (the recipe's): the run ends after --epochs 50"), line
    # the demo as the README runs it: its decay at epoch 2 of 3 happens, no warning
    demo = resolve(dict(dataset="digits"))
    assert decays_after_end(demo) == [] and decay_warning(demo, {}) is None
    assert lr_at(demo, demo.total_iters - 1) == demo.lr * demo.decay_rate
    short = resolve(dict(dataset="digits", epochs=2))
    assert decays_after_end(short) == [2] and "(the recipe's)" in decay_warning(short, {"epochs": 2})
    mine = resolve(dict(dataset="cifar10", epochs=100, decay_epochs=[50, 100, 150]))
    assert decays_after_end(mine) == [100, 150]
    assert "epoch(s) 100, 150 of --decay-epochs 50 100 150 (as given)" in decay_warning(
        mine, {"decay_epochs": [50, 100, 150]})
    assert decay_warning(resolve(dict(dataset="imagenet32", decay_epochs=[])), {"decay_epochs": []}) is None
    # every default recipe of 200 epochs decays within its run
    assert decays_after_end(resolve(dict(dataset="cifar10"))) == []
