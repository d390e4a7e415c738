"""Automatic recovery from divergence: ``--on-divergence rollback`` returns to ckpt.pt,
lowers the learning rate, reseeds the chains and finishes; ``stop`` and ``--max-rollbacks`` end the run
with exit status 1. Divergence is injected on purpose: a NaN loss or a NaN weight at a chosen iteration.
(The 2-process gloo variant is part C of tests/test_distributed.py; the CUDA-graph one is in
tests/test_fastpath.py.)"""
import json
import os

import pytest
import torch

from fastebm.algorithm.model import build_model, model_outputs
from fastebm.config.options import resolve
from fastebm.data.datasets import load_dataset
from fastebm.io.checkpoint import load_checkpoint
from fastebm.run.trainer import DivergenceError, Trainer, lr_at
from fastebm.train import main

BASE = dict(dataset="digits", model="mjem", depth=10, width=1, train_subset=200, test_subset=32, buffer_size=64,
            batch_size=16, cls_batch_size=16, k=1, noise=0.01, data_noise=0.0, warmup_iters=3, decay_epochs=[],
            iters_per_epoch=2, progress=False, log_every=1, eval_every=1000, sample_every=1000, ckpt_every=2,
            device="cpu")
CLI = ["--depth", "10", "--width", "1", "--train-subset", "200", "--test-subset", "32", "--buffer-size", "64",
       "--batch-size", "16", "--cls-batch-size", "16", "--k", "1", "--warmup-iters", "3", "--decay-epochs",
       "--iters-per-epoch", "2", "--no-progress", "--log-every", "1", "--eval-every", "1000", "--sample-every",
       "1000", "--ckpt-every", "2", "--device", "cpu"]
NAN = float("nan")


def _rows(out, kind):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _inject(step, at: int, what: str, times: int):
    """Wrap a train_step(it) so that iteration ``at`` (1-based, as logged) diverges on its first ``times``
    passes: ``loss`` → a NaN loss is reported; ``weight`` → after the step a weight turns NaN."""
    hits = []

    def wrapped(self_or_it, *args):
        trainer, it = (self_or_it, args[0]) if args else (None, self_or_it)
        m = step(self_or_it, *args)
        if it + 1 == at and len(hits) < times:
            hits.append(it)
            if what == "loss":
                m = dict(m, loss=m["loss"] * NAN)
            else:
                model = (trainer or wrapped.trainer).model
                with torch.no_grad():
                    model.energy_head.weight.fill_(NAN)
        return m

    wrapped.hits = hits
    return wrapped


def _trainer(data, **kw):
    return Trainer(resolve(dict(BASE, **kw)), *data)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """ref: 8 iterations, no divergence; nan: the same run with a NaN loss reported at iteration 5 (once)."""
    tmp = tmp_path_factory.mktemp("rollback")
    ref = _trainer(data, epochs=4, out=str(tmp / "ref"))
    ref.fit()
    nan = _trainer(data, epochs=4, out=str(tmp / "nan"))
    nan.train_step = _inject(nan.train_step, at=5, what="loss", times=1)
    nan.fit()
    assert nan.train_step.hits == [4]
    return ref, nan


def test_rollback_restores_the_checkpoint_lowers_the_lr_and_finishes(runs):
    ref, t = runs
    cfg = t.cfg
    assert t.state.iteration == 8 and t.state.rollbacks == 1 and t.state.lr_scale == 0.5
    [rb] = _rows(cfg.out, "rollback")
    assert (rb["iter"], rb["from_iter"], rb["lr_scale"], rb["rollbacks"]) == (4, 5, 0.5, 1)
    assert rb["lr"] == pytest.approx(lr_at(cfg, 4) * 0.5)
    assert "diverged at iteration 5" in rb["reason"] and "nan" in rb["reason"]
    train, before = _rows(cfg.out, "train"), _rows(ref.cfg.out, "train")
    assert [r["iter"] for r in train] == list(range(1, 9))  # iteration 5's NaN row was never logged
    for r in train:
        scale = 0.5 if r["iter"] >= 5 else 1.0
        assert r["lr"] == pytest.approx(lr_at(cfg, r["iter"] - 1) * scale)
    assert [r["loss"] for r in train[:4]] == [r["loss"] for r in before[:4]]  # the same run up to iteration 4
    # iteration 5 again: the model and the data batch are those of iteration 4 (E(x+) identical), the
    # chains are reseeded (another buffer draw and SGLD noise: E(x-) differs from the undisturbed run)
    assert train[4]["e_pos"] == before[4]["e_pos"]
    assert train[4]["e_neg"] != before[4]["e_neg"]
    ckpt = load_checkpoint(os.path.join(cfg.out, "ckpt.pt"))
    assert (ckpt["iteration"], ckpt["lr_scale"], ckpt["rollbacks"]) == (8, 0.5, 1)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert os.path.isfile(os.path.join(cfg.out, "samples", "diverged_iter_0000005.png"))


def test_resume_after_a_rollback_keeps_the_lowered_lr_and_is_exact(runs, data, tmp_path):
    _, full = runs
    out = str(tmp_path / "half")
    half = _trainer(data, epochs=3, out=out)  # the same diverging run, stopped at iteration 6
    half.train_step = _inject(half.train_step, at=5, what="loss", times=1)
    half.fit()
    resumed = _trainer(data, epochs=4, out=out)
    resumed.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert (resumed.state.iteration, resumed.state.lr_scale, resumed.state.rollbacks) == (6, 0.5, 1)
    resumed.fit()
    assert [r["lr"] for r in _rows(out, "train")[-2:]] == pytest.approx(
        [lr_at(resumed.cfg, it) * 0.5 for it in (6, 7)])
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(full.buffer.samples, resumed.buffer.samples)


def test_a_nan_weight_is_never_checkpointed_and_rolls_back(data, tmp_path):
    t = _trainer(data, epochs=3, out=str(tmp_path))
    t.train_step = _inject(t.train_step, at=4, what="weight", times=1)
    t.train_step.trainer = t
    t.fit()
    # iteration 4's loss was finite, its step made the weight NaN: the checkpoint at 4 is refused and the
    # run goes back to the one at 2
    [rb] = _rows(tmp_path, "rollback")
    assert (rb["iter"], rb["from_iter"]) == (2, 4) and "refusing to write a checkpoint" in rb["reason"]
    assert t.state.iteration == 6 and torch.isfinite(t.model.energy_head.weight).all()
    assert [r["iter"] for r in _rows(tmp_path, "train")] == [1, 2, 3, 4, 3, 4, 5, 6]
    ckpt = load_checkpoint(os.path.join(tmp_path, "ckpt.pt"))
    assert ckpt["iteration"] == 6 and torch.isfinite(ckpt["model"]["energy_head.weight"]).all()


def test_a_divergence_before_the_first_periodic_checkpoint_returns_to_iteration_0(data, tmp_path):
    t = _trainer(data, epochs=2, ckpt_every=1000, out=str(tmp_path))
    t.train_step = _inject(t.train_step, at=2, what="loss", times=1)
    t.fit()
    [rb] = _rows(tmp_path, "rollback")
    assert (rb["iter"], rb["from_iter"]) == (0, 2) and t.state.iteration == 4


def test_an_exploding_loss_between_two_checks_is_caught_before_the_checkpoint(data, tmp_path):
    # checks only every 3 iterations and at the checkpoint (4); the loss explodes at 2 only
    t = _trainer(data, epochs=2, check_every=3, log_every=1000, ckpt_every=4, max_loss=1e3, out=str(tmp_path))
    step = t.train_step

    def exploding(it):
        m = step(it)
        return dict(m, loss=m["loss"] + 1e6) if it + 1 == 2 and not t.state.rollbacks else m

    t.train_step = exploding
    t.fit()
    [rb] = _rows(tmp_path, "rollback")
    assert (rb["iter"], rb["from_iter"]) == (0, 3)
    assert "diverged at iteration 2" in rb["reason"] and "detected at iteration 3" in rb["reason"]
    assert t.state.iteration == 4 and t.state.rollbacks == 1


@pytest.mark.parametrize("mode", ["stop", "rollback"])
def test_cli_stops_with_exit_1_after_max_rollbacks_or_at_once(mode, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "train_step", _inject(Trainer.train_step, at=3, what="loss", times=99))
    out = str(tmp_path / "run")
    assert main(CLI + ["--epochs", "3", "--out", out, "--on-divergence", mode, "--max-rollbacks", "2",
                       "--eval-every", "1"]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "stopped: training diverged at iteration 3" in err
    # stdout: the summary, with the best before the divergence (the paper's protocol) in both modes
    summary = json.loads(captured.out)
    assert summary["diverged"].startswith("training diverged at iteration 3")
    evals = [r["test_acc"] for r in _rows(out, "eval") if r["iter"] < 3]
    assert evals and summary["best_before_divergence"] == {"iter": 3, "test_acc": max(evals)}
    rows = _rows(out, "rollback")
    ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ckpt["iteration"] == 2  # the last good checkpoint
    if mode == "stop":
        assert rows == [] and "rollback" not in err and ckpt["rollbacks"] == 0
    else:
        assert "stopped after 2 rollback(s) (--max-rollbacks 2)" in err
        assert [(r["iter"], r["from_iter"], r["lr_scale"]) for r in rows] == [(2, 3, 0.5), (2, 3, 0.25)]
        assert (ckpt["rollbacks"], ckpt["lr_scale"]) == (2, 0.25)  # a resume keeps the count and the lr
    assert os.path.isfile(os.path.join(out, "samples", "diverged_iter_0000003.png"))


def test_stop_mode_writes_no_initial_checkpoint(data, tmp_path):
    t = _trainer(data, epochs=1, ckpt_every=1000, on_divergence="stop", out=str(tmp_path))
    t.train_step = _inject(t.train_step, at=1, what="loss", times=1)
    with pytest.raises(DivergenceError, match="diverged at iteration 1"):
        t.fit()
    assert not os.path.exists(tmp_path / "ckpt.pt")


@pytest.mark.parametrize("mode", ["stop", "rollback"])
def test_weights_that_overflow_never_reach_a_checkpoint(data, tmp_path, mode):
    """lr 1e30: the optimizer step after the last loss check leaves finite weights (~1e27) whose energies are
    NaN. No checkpoint may hold them (a rollback to it could never recover, an evaluation would read NaN):
    the run stops (exit-1 path) and every checkpoint file it left gives finite energies and logits."""
    out = str(tmp_path / "run")
    t = _trainer(data, epochs=3, lr=1e30, eval_every=2, on_divergence=mode, max_rollbacks=1, out=out)
    with pytest.raises(DivergenceError):
        t.fit()
    files = [f for f in os.listdir(out) if f.endswith(".pt") and f != "p0.pt"]
    assert ("ckpt.pt" in files) == (mode == "rollback")  # stop mode writes no initial checkpoint
    for name in files:
        ckpt = load_checkpoint(os.path.join(out, name))
        model = build_model(resolve(ckpt["config"]))
        model.load_state_dict(ckpt["model"])
        energy, logits = model_outputs(model, ckpt["buffer"]["samples"][:16])
        assert torch.isfinite(energy).all() and torch.isfinite(logits).all(), name


def test_a_rollback_keeps_the_best_so_far_and_notes_it_before_the_divergence(data, tmp_path):
    """best_acc.pt of iteration 4 exists when the run rolls back to ckpt.pt of iteration 2: the trainer's best
    stays that of iteration 4 (else a worse later evaluation would overwrite best_acc.pt), and the first
    rollback notes it as the best before the divergence, which later checkpoints carry."""
    t = _trainer(data, epochs=3, ckpt_every=2, eval_every=1, out=str(tmp_path))
    t.train_step = _inject(t.train_step, at=5, what="loss", times=1)
    t.fit()
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    first_rollback = next(i for i, r in enumerate(rows) if r["kind"] == "rollback")
    before = max(r["test_acc"] for r in rows[:first_rollback] if r["kind"] == "eval")
    assert t.state.best_before_divergence == {"iter": 5, "test_acc": before}
    assert t.state.best["test_acc"] == max(r["test_acc"] for r in rows if r["kind"] == "eval") >= before
    ckpt = load_checkpoint(os.path.join(tmp_path, "ckpt.pt"))
    assert ckpt["best_before_divergence"] == t.state.best_before_divergence
