"""End-to-end training: Algorithm 1 on real images, exact resume, divergence stops, bad input."""
import json
import os

import pytest
import torch

from fastebm.config.options import resolve
from fastebm.data.datasets import load_dataset
from fastebm.run.trainer import DivergenceError, Trainer
from fastebm.train import main

TINY = dict(depth=10, width=1, buffer_size=200, batch_size=16, cls_batch_size=32, warmup_iters=5,
            decay_epochs=[], progress=False, log_every=1, eval_every=1000, sample_every=1000, test_subset=64)
TINY_CLI = ["--depth", "10", "--width", "1", "--buffer-size", "200", "--batch-size", "8", "--cls-batch-size", "8",
            "--train-subset", "200", "--test-subset", "32", "--no-progress", "--warmup-iters", "2", "--log-every", "1"]


def _records(out, kind="train"):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


@pytest.fixture(scope="module")
def cifar_subset(cifar_root):
    return (load_dataset("folder", cifar_root, "train", max_per_class=24),
            load_dataset("folder", cifar_root, "test", max_per_class=8))


def test_mjem_on_real_cifar_gives_finite_energies_and_falling_classification_loss(tmp_path, cifar_subset):
    cfg = resolve(dict(TINY, dataset="folder", model="mjem", k=2, epochs=1, iters_per_epoch=40, lr=0.05,
                       out=str(tmp_path), eval_every=40))
    trainer = Trainer(cfg, *cifar_subset)
    trainer.fit()
    recs = _records(tmp_path)
    assert len(recs) == 40
    assert all(torch.isfinite(torch.tensor([r["e_pos"], r["e_neg"], r["loss"]])).all() for r in recs)
    first = sum(r["loss_cls"] for r in recs[:8]) / 8
    last = sum(r["loss_cls"] for r in recs[-8:]) / 8
    assert last < first - 0.1, (first, last)
    assert os.path.isfile(tmp_path / "ckpt.pt") and os.path.isfile(tmp_path / "samples" / "iter_0000040.png")
    ev = _records(tmp_path, "eval")
    assert ev and 0 <= ev[-1]["test_acc"] <= 1
    assert json.load(open(tmp_path / "config.json"))["k"] == 2
    assert torch.isfinite(trainer.buffer.samples).all()


@pytest.mark.parametrize("model", ["mebm", "jem"])
def test_other_models_train(tmp_path, cifar_subset, model):
    cfg = resolve(dict(TINY, dataset="folder", model=model, k=2, epochs=1, iters_per_epoch=3, out=str(tmp_path)))
    if model == "jem":
        assert cfg.p0 == "uniform" and cfg.l2 == 0.0 and cfg.norm == "none"
    Trainer(cfg, *cifar_subset).fit()
    assert len(_records(tmp_path)) == 3


def test_resume_reproduces_the_uninterrupted_run(tmp_path, cifar_subset):
    # no warm-up: the cap of a fifth of the run would give the 1- and 2-epoch plans different schedules (a
    # resume through the CLI keeps the stored, shorter warm-up and continues that run exactly)
    base = dict(TINY, dataset="folder", model="mjem", k=2, iters_per_epoch=3, noise=0.01, data_noise=0.01,
                warmup_iters=0)
    full = Trainer(resolve(dict(base, epochs=2, out=str(tmp_path / "a"))), *cifar_subset)
    full.fit()
    half = Trainer(resolve(dict(base, epochs=1, out=str(tmp_path / "b"))), *cifar_subset)
    half.fit()
    resumed = Trainer(resolve(dict(base, epochs=2, out=str(tmp_path / "b"))), *cifar_subset)
    resumed.load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))
    assert resumed.state.iteration == 3
    resumed.fit()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(full.buffer.samples, resumed.buffer.samples)
    assert full.opt.state_dict()["state"][0]["momentum_buffer"].equal(
        resumed.opt.state_dict()["state"][0]["momentum_buffer"])
    assert [r["loss"] for r in _records(tmp_path / "a")][3:] == [r["loss"] for r in _records(tmp_path / "b")][3:]


def test_divergence_stops_with_last_good_checkpoint_intact(tmp_path, cifar_subset):
    cfg = resolve(dict(TINY, dataset="folder", k=1, epochs=1, iters_per_epoch=2, out=str(tmp_path)))
    Trainer(cfg, *cifar_subset).fit()
    ckpt = tmp_path / "ckpt.pt"
    before = ckpt.read_bytes()
    cfg2 = resolve(dict(TINY, dataset="folder", k=1, epochs=2, iters_per_epoch=2, out=str(tmp_path),
                        max_loss=1e-12, on_divergence="stop"))
    t = Trainer(cfg2, *cifar_subset)
    t.load_checkpoint(str(ckpt))
    with pytest.raises(DivergenceError, match="diverged at iteration 3") as e:
        t.fit()
    assert "last good checkpoint" in str(e.value)
    assert ckpt.read_bytes() == before
    assert os.path.isfile(tmp_path / "samples" / "diverged_iter_0000003.png")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_non_finite_energies_stop_the_run(tmp_path, cifar_subset):
    cfg = resolve(dict(TINY, dataset="folder", k=1, epochs=1, iters_per_epoch=3, out=str(tmp_path),
                       on_divergence="stop"))
    t = Trainer(cfg, *cifar_subset)
    with torch.no_grad():
        t.model.energy_head.bias.fill_(float("nan"))
    with pytest.raises(DivergenceError, match="iteration 1"):
        t.fit()
    assert not os.path.exists(tmp_path / "ckpt.pt")
    assert torch.isfinite(t.buffer.samples).all()
    # with rollback there is no good state to return to: the initial checkpoint is refused, nothing is written
    t = Trainer(resolve(dict(cfg.to_dict(), on_divergence="rollback")), *cifar_subset)
    with torch.no_grad():
        t.model.energy_head.bias.fill_(float("nan"))
    match = r"non-finite values \(weights, buffer, or the energies they give\) at iteration 0"
    with pytest.raises(DivergenceError, match=match):
        t.fit()
    assert not os.path.exists(tmp_path / "ckpt.pt") and t.state.iteration == 0


def test_cli_digits_run_and_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(TINY_CLI + ["--out", out, "--epochs", "1", "--iters-per-epoch", "2", "--k", "1"]) == 0
    assert {"config.json", "metrics.jsonl", "ckpt.pt", "p0.pt", "samples"} <= set(os.listdir(out))
    with pytest.raises(SystemExit) as e:  # an existing run is never overwritten
        main(TINY_CLI + ["--out", out, "--epochs", "1", "--iters-per-epoch", "2"])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err
    assert main(["--resume", os.path.join(out, "ckpt.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert [r["iter"] for r in _records(out)] == [1, 2, 3, 4]


def _as_cuda_wrote_it(path, requested):
    """Rewrite a CPU checkpoint as a CUDA run of the default fast path writes it: the config resolved for
    CUDA (fast_flags("cuda"), FID every 5 epochs, host check every --log-every), a Philox state, the fast-path
    components that ran, and ``requested`` (None: a checkpoint of a version that did not record it)."""
    from fastebm.config.options import fast_flags

    ckpt = torch.load(path, weights_only=False)
    ckpt["config"].update(fast_flags("cuda"), fid_every=5, check_every=ckpt["config"]["log_every"], device="auto")
    ckpt["triton_rng"] = torch.tensor([7, 1234], dtype=torch.int64)
    ckpt["fast_path"] = {name: True for name in ("compile_step", "compile", "cuda_graphs", "triton_langevin")}
    ckpt["requested"] = requested
    torch.save(ckpt, path)


@pytest.mark.parametrize("requested", [None, {"k": 1}], ids=["unrecorded", "recorded"])
def test_a_gpu_checkpoint_resumes_on_the_cpu(tmp_path, capsys, requested):
    """The device-dependent settings of a CUDA run (CUDA graphs, Triton, compiled step, bf16, FID cadence) are
    resolved again on the CPU it resumes on, unless the user had asked for them."""
    out = str(tmp_path / "run")
    assert main(TINY_CLI + ["--out", out, "--epochs", "1", "--iters-per-epoch", "2", "--k", "1"]) == 0
    _as_cuda_wrote_it(os.path.join(out, "ckpt.pt"), requested)
    capsys.readouterr()
    assert main(["--resume", os.path.join(out, "ckpt.pt"), "--epochs", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "fast path: plain" in err, err
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["cuda_graphs"], cfg["triton"], cfg["compile_step"], cfg["amp"], cfg["fid_every"]) == (
        False, False, False, "off", 0)
    assert [r["iter"] for r in _records(out)] == [1, 2, 3, 4]
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    assert ckpt["fast_path"]["compile_step"] is False and ckpt["requested"]["epochs"] == 2


def test_an_explicit_cuda_option_is_kept_on_resume(tmp_path):
    """What the user asked for is not silently dropped: a run that asked for --cuda-graphs says so on a CPU."""
    import fastebm.train as T

    out = str(tmp_path / "run")
    assert main(TINY_CLI + ["--out", out, "--epochs", "1", "--iters-per-epoch", "2", "--k", "1"]) == 0
    _as_cuda_wrote_it(os.path.join(out, "ckpt.pt"), {"cuda_graphs": True})
    args = T.build_parser([]).parse_args(["--resume", os.path.join(out, "ckpt.pt")])
    cfg, requested, _ = T.config_from_args(args)
    assert cfg.cuda_graphs is True and cfg.triton is None and requested == {"cuda_graphs": True}
    with pytest.raises(ValueError, match="--cuda-graphs needs a CUDA device"):
        Trainer(cfg)


def test_a_cpu_checkpoint_gets_the_fast_path_on_cuda(tmp_path):
    """The reverse: a CPU smoke-test checkpoint's plain flags are not carried to a GPU (resolution checked
    for CUDA without one: fastebm.run.completion.for_device)."""
    import fastebm.train as T
    from fastebm.config.options import fast_flags
    from fastebm.run.completion import for_device

    out = str(tmp_path / "run")
    assert main(TINY_CLI + ["--out", out, "--epochs", "1", "--iters-per-epoch", "2", "--k", "1"]) == 0
    stored = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["config"]
    assert stored["compile"] == "off" and stored["cuda_graphs"] is False  # resolved for the CPU when written
    args = T.build_parser([]).parse_args(["--resume", os.path.join(out, "ckpt.pt")])
    cfg, _, _ = T.config_from_args(args)
    on_gpu = for_device(cfg, "cuda")
    assert {k: getattr(on_gpu, k) for k in fast_flags("cuda")} == fast_flags("cuda") and on_gpu.fid_every == 5


@pytest.mark.parametrize("argv,match", [
    (["--dataset", "folder", "--data-root", "/nonexistent/data"], "not a folder"),
    (["--dataset", "cifar10"], "needs --data-root"),
    (["--k", "0"], "K must be an integer >= 1"),
    (["--depth", "27"], "--depth: a Wide-ResNet has depth 6n + 4"),
    (["--reinit-freq", "1.5"], "reinit-freq"),
    (["--device", "tpu"], "--device"),
    (["--model", "ebm"], "invalid choice"),
    (["--cov", "diag"], "invalid choice"),
    (["--resume", "/nonexistent/ckpt.pt"], "expected a file"),
    (["--on-divergence", "retry"], "invalid choice"),  # the rollback options
    (["--max-rollbacks", "-1"], "--max-rollbacks"),
    (["--rollback-lr-factor", "0"], "--rollback-lr-factor"),
    (["--rollback-lr-factor", "nan"], "--rollback-lr-factor"),
    (["--k", "1.5"], "argument --k: invalid int value"),  # argparse's own errors: one line too
    (["--n-classes", "3"], "unrecognized arguments: --n-classes"),  # set from the data, not an option
    (["--seed", "-1"], "--seed: expected a value in [0, 4294967295]"),
    (["--device", "meta"], "--device: expected 'auto', 'cpu', 'cuda'"),
    (["--out", "/dev/null"], "--out /dev/null: cannot make the run folder"),
    (["--depth", "99999999999999999994"], "--depth: expected a value in [1, 1000]"),
    (["--width", "100000"], "--depth 10 --width 100000: a WRN-10-100000 has"),
    (["--width", "1000000000000"], "--depth 10 --width 1000000000000: a WRN-10-1000000000000 has a layer larger"),
    (["--train-subset", "1", "--batch-size", "1", "--cls-batch-size", "1"], "holds 1 image(s) (--train-subset"),
])
def test_cli_bad_input_gives_one_line_error(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "x")] + argv)  # an --out in argv comes last and wins
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_cli_checkpoint_from_another_model(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(TINY_CLI + ["--out", out, "--epochs", "1", "--iters-per-epoch", "1", "--k", "1",
                            "--model", "mebm"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["--resume", os.path.join(out, "ckpt.pt"), "--model", "mjem"])
    assert e.value.code == 2 and "expected {'model': 'mjem'" in capsys.readouterr().err
    # weights that do not fit say why when the run goes on (torch's first reason, not only its header line)
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    del ckpt["model"]["energy_head.weight"]
    torch.save(ckpt, os.path.join(out, "missing.pt"))
    with pytest.raises(SystemExit) as e:
        main(["--resume", os.path.join(out, "missing.pt"), "--out", str(tmp_path / "b"), "--epochs", "2"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and 'Missing key(s) in state_dict: "energy_head.weight"' in err
    # a file with NaN weights is refused, by resume and by the evaluation alike
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    ckpt["model"]["energy_head.bias"].fill_(float("nan"))
    torch.save(ckpt, os.path.join(out, "nan.pt"))
    with pytest.raises(SystemExit) as e:
        main(["--resume", os.path.join(out, "nan.pt"), "--out", str(tmp_path / "c"), "--epochs", "2"])
    assert e.value.code == 2 and "non-finite values in 1 weight tensor(s)" in capsys.readouterr().err
    from fastebm.eval import load_run
    from fastebm.io.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="non-finite values"):
        load_run(os.path.join(out, "nan.pt"), device="cpu")


def test_resuming_a_finished_run_says_how_to_continue(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(TINY_CLI + ["--out", out, "--epochs", "1", "--iters-per-epoch", "2", "--k", "1"]) == 0
    capsys.readouterr()
    ckpt = os.path.join(out, "ckpt.pt")
    assert main(["--resume", ckpt]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is done: iteration 2 of 2 (1 epochs)" in err[0] and "--epochs N with N > 1" in err[0]


def test_an_interrupt_names_the_checkpoint_iteration_and_resume_drops_the_replayed_rows(tmp_path, capsys,
                                                                                     monkeypatch):
    import fastebm.run.trainer as trainer_mod

    out = str(tmp_path / "run")
    real = trainer_mod.Trainer.train_step

    def stop_at_3(self, it):
        if it == 3:
            raise KeyboardInterrupt
        return real(self, it)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", stop_at_3)
    argv = TINY_CLI + ["--out", out, "--epochs", "1", "--iters-per-epoch", "5", "--k", "1", "--ckpt-every", "2"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted at iteration 3; the last checkpoint" in err and "holds iteration 2" in err
    assert "re-runs 1 iteration(s)" in err
    assert [r["iter"] for r in _records(out)] == [1, 2, 3]
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", real)
    assert main(["--resume", os.path.join(out, "ckpt.pt")]) == 0
    assert [r["iter"] for r in _records(out)] == [1, 2, 3, 4, 5]  # iteration 3 once, from the resumed run


def test_the_end_of_run_summary_is_json_on_stdout(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(TINY_CLI + ["--out", out, "--epochs", "1", "--iters-per-epoch", "2", "--k", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)  # nothing else on stdout
    assert summary["iteration"] == 2 and summary["checkpoint"] == os.path.join(out, "ckpt.pt")
    assert summary["last"]["iter"] == 2 and 0 <= summary["best"]["test_acc"] <= 1
    assert "paper" not in summary  # digits reproduces no paper row


def test_a_paper_configuration_gets_its_row_beside_its_numbers():
    import types

    from fastebm.run.completion import for_device
    from fastebm.run.state import RunState
    from fastebm.train import run_summary

    cfg = for_device(resolve(dict(dataset="cifar10", model="mjem", k=5)), "cpu")  # a trainer's cfg: for its device
    state = RunState(iteration=7, last_checkpoint="o/ckpt.pt", best={"fid": float("inf"), "test_acc": 0.5})
    trainer = types.SimpleNamespace(out="o", cfg=cfg, state=state)
    summary = run_summary(trainer, {})
    assert summary["best"] == {"test_acc": 0.5} and "best_before_divergence" not in summary
    assert summary["paper"]["row"] == "t3-mjem-cifar10-k5" and summary["paper"]["fid"] == 12.1
    assert summary["paper"]["beside"] == (
        "paper Table 3 M-JEM CIFAR-10 K=5: acc 0.931 (ours 0.500), IS 8.71, FID 12.1; differs from the authors' code "
        "(sndnyang/mebm train_maebm.py @20bbf21, models/norms.py @ab600eb): --reg-form eq8 (theirs squared-means), "
        "--bn-momentum 0.1 (theirs 0.9), --sgld-bn batch (theirs update)")  # fp32 on the CPU, as theirs
    assert set(summary["paper"]["differs"]) == {"reg_form", "bn_momentum", "sgld_bn"}
    state.best_before_divergence = {"iter": 5, "test_acc": 0.4, "fid": float("inf")}
    assert "; best before divergence (iteration 5): acc 0.931 (ours 0.400), IS 8.71, FID 12.1;" in (
        run_summary(trainer, {})["paper"]["beside"])


def test_training_progress_in_a_redirected_log_is_plain_lines(tmp_path, capsys, monkeypatch):
    import fastebm.run.trainer as trainer_mod

    clock = iter(range(0, 10_000, 4))  # every call 4 s later: a line every 10 s, then every minute
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: float(next(clock)))
    argv = [a for a in TINY_CLI if a != "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "r"), "--epochs", "1", "--iters-per-epoch", "6", "--k", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("fastebm: iteration ")]
    import re

    line = r"fastebm: iteration [1-5]/6 \([0-9.]+ it/s, about .* left\); loss .*, acc .*"
    assert lines and all(re.fullmatch(line, ln) for ln in lines), lines
