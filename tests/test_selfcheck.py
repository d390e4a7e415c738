"""The fast path checks itself at run time (``--fast-path``, issue 12), on CPU.

The check runs for ``--compile aot_eager`` (Dynamo + AOTAutograd) and the compiled step; tests break a
component on purpose (it raises, or returns wrong values) and assert that it is switched off with one
warning line, that ``strict`` turns that into an error, and that the run then finishes with the plain
path's results. The Triton checks run their kernels in the Triton interpreter (TRITON_INTERPRET=1).
"""
import json

import pytest
import torch

import fastebm.trainer as trainer_mod
from fastebm import selfcheck
from fastebm.config import resolve
from fastebm.data import ImageSet
from fastebm.selfcheck import FastPathError
from fastebm.trainer import Trainer, lr_at

TINY = dict(dataset="folder", device="cpu", model="mjem", depth=10, width=1, buffer_size=64, batch_size=8, cls_batch_size=16,
            k=2, epochs=1, iters_per_epoch=3, progress=False, eval_every=1000, sample_every=1000,
            ckpt_every=1000, warmup_iters=2, log_every=1)


def _toy_data(n=64, size=16):
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.arange(n) % 10, 10, "toy")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles its own model: without a reset, the compiled forwards of earlier tests count
    towards Dynamo's recompile limit of the shared code objects."""
    torch._dynamo.reset()
    yield


def _trainer(path, **over):
    return Trainer(resolve(dict(TINY, out=str(path), **over)), _toy_data())


def _run(t, n=3):
    for it in range(n):
        for g in t.opt.param_groups:
            g["lr"] = lr_at(t.cfg, it)
        t.train_step(it)
    return [p.detach().clone() for p in t.model.parameters()], t.buffer.samples.clone()


def _rows(t, kind="fast_path"):
    with open(t.out + "/metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _assert_same_run(a, b, tol=0.0):
    for pa, pb in zip(a[0], b[0]):
        torch.testing.assert_close(pa, pb, rtol=tol, atol=tol)
    torch.testing.assert_close(a[1], b[1], rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """Three iterations of the plain path (every fast flag off)."""
    return _run(_trainer(tmp_path_factory.mktemp("plain"), compile="off", compile_step=False))


def test_check_passes_for_compile_and_compiled_step_on_cpu_and_is_logged(tmp_path, plain_run):
    torch._dynamo.reset()
    t = _trainer(tmp_path, compile="aot_eager", compile_step=True)
    assert t.fast_path_pending
    last = t.fit()  # the check runs before the first iteration
    row = _rows(t)[0]
    assert row["compile_step"].startswith("ok:") and row["compile"] == "unused (compiled step)"
    assert row["policy"] == "auto" and row["iter"] == 0
    assert t.cfg.compile_step and last["iter"] == 3
    _assert_same_run((list(t.model.parameters()), t.buffer.samples), plain_run, tol=1e-4)  # check left no trace


def test_per_piece_compile_check_on_cpu(tmp_path):
    t = _trainer(tmp_path, compile="aot_eager", compile_step=False)
    report = t.check_fast_path(0)
    assert list(report) == ["compile"] and report["compile"].startswith("ok:")
    assert t.net is t.compiled and t.compiled is not t.model


def test_raising_compiled_step_is_switched_off_and_the_run_is_the_plain_run(tmp_path, monkeypatch, capsys,
                                                                          plain_run):
    def broken(step, mode, device_type, static=None):
        def run(*args):
            raise RuntimeError("simulated Inductor failure\nsecond line")
        return run

    monkeypatch.setattr(trainer_mod, "compile_step", broken)
    t = _trainer(tmp_path, compile="off", compile_step=True)
    got = _run(t)  # the check runs at the first train_step
    report = t.fast_path_report
    assert report["compile_step"] == "off: raised RuntimeError: simulated Inductor failure"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "switched off" in line]
    assert warnings == ["fastebm: warning: fast component compile_step switched off: raised RuntimeError: "
                        "simulated Inductor failure"]
    assert not t.cfg.compile_step and t._step == t.step
    _assert_same_run(got, plain_run)
    assert _rows(t)[0]["compile_step"].startswith("off:")


def test_compiled_step_with_wrong_values_is_switched_off(tmp_path, monkeypatch, plain_run):
    def wrong(step, mode, device_type, static=None):
        def run(*args):
            out = step(*args)
            with torch.no_grad():
                for p in step.__self__.model.parameters():
                    p.mul_(1.01)  # a silently wrong update
            return out
        return run

    monkeypatch.setattr(trainer_mod, "compile_step", wrong)
    t = _trainer(tmp_path, compile="off", compile_step=True)
    got = _run(t)
    assert t.fast_path_report["compile_step"].startswith("off: loss rel")
    _assert_same_run(got, plain_run)


def _wrong_energy_net(model):
    def net(x):
        e, logits = model(x)
        return 1.5 * e, logits
    return net


def test_compiled_energy_with_wrong_values_is_switched_off(tmp_path, plain_run):
    t = _trainer(tmp_path, compile="aot_eager", compile_step=False)
    bad = _wrong_energy_net(t.model)
    t.net = t._fast["net"] = t.sampler.net = t.compiled = bad
    got = _run(t)
    assert t.fast_path_report["compile"].startswith("off: energy rel err")
    assert t.net is t.model and t.sampler.net is t.model and t.cfg.compile == "off"
    _assert_same_run(got, plain_run)


def test_strict_turns_a_failure_into_an_error(tmp_path):
    t = _trainer(tmp_path, compile="aot_eager", compile_step=False, fast_path="strict")
    t.net = t._fast["net"] = t.sampler.net = _wrong_energy_net(t.model)
    with pytest.raises(FastPathError, match="--fast-path strict: fast component compile failed"):
        t.train_step(0)


def test_fast_path_off_runs_no_check(tmp_path):
    t = _trainer(tmp_path, compile="aot_eager", compile_step=False, fast_path="off")
    assert not t.fast_path_pending
    t.net = t._fast["net"] = t.sampler.net = _wrong_energy_net(t.model)
    t.train_step(0)
    assert t.fast_path_report == {} and t.net is not t.model


def test_amp_check_on_cpu(tmp_path, monkeypatch):
    t = _trainer(tmp_path, amp="bf16", norm="none")
    assert t.check_fast_path(0)["amp"].startswith("ok: cosine")
    monkeypatch.setitem(selfcheck.TOL, "amp_cos", 1.01)  # no cosine passes: the check must switch bf16 off
    t.request_fast_path_check()
    assert t.check_fast_path(0)["amp"].startswith("off: cosine") and t.cfg.amp == "off"
    assert t.sampler.amp == "off"


def test_triton_checks_in_the_interpreter(tmp_path, monkeypatch):
    from fastebm import kernels

    monkeypatch.setattr(selfcheck, "P0_SAMPLES", 1024)  # the interpreter is slow; the z-tests scale with n
    t = _trainer(tmp_path, noise=0.01)
    t._fast["sampler"].rng_state = kernels.make_rng_state(7, "cpu")
    ok, detail = selfcheck.check_triton_langevin(t, 0)
    assert ok, detail
    ok, detail = selfcheck.check_triton_p0(t, 0)
    assert ok, detail
    # a kernel that forgets the noise / shifts the mean fails its check
    import fastebm.kernels.langevin as lv
    monkeypatch.setattr(lv, "langevin_step", lambda x, g, a, s, rng, **kw: (x - a * g).clamp(-1, 1))
    ok, detail = selfcheck.check_triton_langevin(t, 0)
    assert not ok and "noise" in detail
    import fastebm.kernels.lowrank_gaussian as lg
    monkeypatch.setattr(lg, "lowrank_gaussian_sample",
                        lambda mean, u, d, n, rng: (mean + 0.2 + torch.randn(n, mean.numel()) @ u.T).clamp(-1, 1))
    ok, detail = selfcheck.check_triton_p0(t, 0)
    assert not ok and "pixel means" in detail


def test_cli_banner_names_the_checked_components(tmp_path):
    """A fresh process, as a user's run: the banner says which fast components run, metrics.jsonl logs it.

    (In a process that already ran a compiled step, a later, separately compiled model once failed a guard
    with AttributeError after torch._dynamo.reset(); the self-check switched it off, as designed.)"""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "fastebm.train", "--dataset", "digits", "--model", "mebm", "--k", "1",
           "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "8", "--buffer-size", "32",
           "--train-subset", "64", "--test-subset", "16", "--compile", "aot_eager", "--device", "cpu",
           "--no-progress", "--out", str(out)]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "fastebm: fast path: compile ok" in res.stderr, res.stderr[-2000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[0]["kind"] == "fast_path" and rows[0]["compile"].startswith("ok")
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "strict"), "--fast-path", "strict", "--compile-step",
                                     "--optimizer", "sgd"],
                         cwd=root, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 0, bad.stderr[-2000:]  # a passing strict check runs normally
    assert "fast path: compile_step ok" in bad.stderr


# ------------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
def test_gpu_every_per_piece_fast_component_passes_its_self_check(tmp_path):
    """CUDA, fast_flags("cuda") without the compiled step, strict: compiled network, CUDA-graph SGLD loop,
    Triton Langevin update and p0 sampler, bf16 all pass their checks on this GPU, and the run trains."""
    t = _trainer(tmp_path, device="cuda", compile="default", cuda_graphs=True, triton=True, amp="bf16",
                 channels_last=True, compile_step=False, fast_path="strict", noise=0.01)
    params, _ = _run(t)
    report = t.fast_path_report
    print(report)
    assert set(report) == {"amp", "compile", "cuda_graphs", "triton_langevin", "triton_p0"}
    assert all(v.startswith("ok") for v in report.values()), report
    assert all(torch.isfinite(p).all() for p in params)
