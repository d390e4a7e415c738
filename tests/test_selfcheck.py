"""The fast path checks itself at run time (``--fast-path``), on CPU, with the float64 criterion.

The checks run for ``--compile aot_eager`` (Dynamo + AOTAutograd), the compiled step, bf16 autocast of the
loss pass and of SGLD, and the Triton kernels in the interpreter (TRITON_INTERPRET=1). Honest components
pass; components broken on purpose (they raise, or are a few per cent off, or make the chains drift) are
switched off with one warning line (``auto``) or are an error (``strict``), and the run then goes on with
the plain path's results.
"""
import json

import pytest
import torch

import fastebm.fastpath.fastpath as fastpath_mod
from fastebm.config.options import resolve
from fastebm.data.imageset import ImageSet
from fastebm.fastpath import precision, selfcheck
from fastebm.fastpath.fastpath import FastPathError
from fastebm.run.trainer import Trainer, lr_at

TINY = dict(dataset="folder", device="cpu", model="mjem", depth=10, width=1, buffer_size=64, batch_size=8,
            cls_batch_size=16, k=2, epochs=1, iters_per_epoch=3, progress=False, eval_every=1000,
            sample_every=1000, ckpt_every=1000, warmup_iters=2, log_every=1)


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


def _assert_same_run(a, b):
    for pa, pb in zip(a[0], b[0]):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """Three iterations of the plain path (every fast flag off)."""
    return _run(_trainer(tmp_path_factory.mktemp("plain"), compile="off", compile_step=False))


def _wrong_energy(model, factor):
    def net(x):
        e, logits = model(x)
        return factor * e, logits
    return net


def _with_net(t, net):
    """Put a (broken) compiled network in place of the trainer's, as FastPath would have built it."""
    t.fast.net = net
    t.fast._build()


# ------------------------------------------------------------------------------------------- honest components
def test_check_passes_for_the_compiled_step_is_logged_and_leaves_no_trace(tmp_path):
    checked = _trainer(tmp_path / "checked", compile="aot_eager", compile_step=True)
    assert checked.fast.pending
    last = checked.fit()  # the check runs before the first iteration
    row = _rows(checked)[0]
    assert row["compile_step"].startswith("ok (margin ") and row["compile"] == "unused (compiled step)", row
    assert row["policy"] == "auto" and row["iter"] == 0 and row["active"]["compile_step"] is True
    assert checked.cfg.compile_step and last["iter"] == 3
    torch._dynamo.reset()
    unchecked = _trainer(tmp_path / "unchecked", compile="aot_eager", compile_step=True, fast_path="off")
    unchecked.fit()
    _assert_same_run((list(checked.model.parameters()), checked.buffer.samples),
                     (list(unchecked.model.parameters()), unchecked.buffer.samples))


@pytest.mark.parametrize("bn", [{}, dict(bn_momentum=0.9, sgld_bn="update")], ids=["default", "authors-bn"])
def test_per_piece_compile_check_on_cpu(tmp_path, bn):
    t = _trainer(tmp_path, compile="aot_eager", compile_step=False, **bn)
    report = t.check_fast_path(0)
    assert list(report) == ["compile"] and report["compile"].startswith("ok (margin "), report
    assert "energy err" in report["compile"] and "input gradient err" in report["compile"]
    assert t.fast.net is not t.model and t.fast.step.net is t.fast.net


def test_amp_of_the_loss_pass_passes_on_cpu_and_a_broken_one_is_switched_off(tmp_path, monkeypatch):
    t = _trainer(tmp_path, amp="bf16", norm="none")
    report = t.check_fast_path(0)
    assert report["amp"].startswith("ok (margin ") and "weight-gradient error" in report["amp"], report
    assert t.fast.active()["amp"] == "bf16" and t.fast.step.amp == torch.bfloat16
    monkeypatch.setattr(precision, "NOISE_SHARE", 0.0)  # no perturbation allowed: bf16 must be switched off
    t.request_fast_path_check()
    report = t.check_fast_path(0)
    assert report["amp"].startswith("off: weight-gradient error") and t.fast.active()["amp"] == "off"
    assert t.fast.step.amp is None and t.cfg.amp == "bf16"  # what runs changed; the configuration did not


def test_bf16_sgld_without_injected_noise_is_switched_off(tmp_path):
    t = _trainer(tmp_path, sgld_amp="bf16")  # K = 2: σ = 0
    report = t.check_fast_path(0)
    assert report["sgld_amp"].startswith("off: sigma 0"), report
    assert t.fast.sampler.amp == "off" and t.fast.active()["sgld_amp"] == "off"


# ------------------------------------------------------------------------------------------- broken components
def test_raising_compiled_step_is_switched_off_and_the_run_is_the_plain_run(tmp_path, monkeypatch, capsys,
                                                                          plain_run):
    def broken(step, mode, device_type, static=None):
        def run(*args):
            raise RuntimeError("simulated Inductor failure\nsecond line")
        return run

    monkeypatch.setattr(fastpath_mod, "compile_step", broken)
    t = _trainer(tmp_path, compile="off", compile_step=True)
    got = _run(t)  # the check runs at the first train_step
    report = t.fast.report
    assert report["compile_step"] == "off: raised RuntimeError: simulated Inductor failure"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "switched off" in line]
    assert warnings == ["fastebm: warning: fast component compile_step switched off: raised RuntimeError: "
                        "simulated Inductor failure"]
    assert t.cfg.compile_step and not t.fast.active()["compile_step"] and t.fast.step is t.fast.per_piece
    _assert_same_run(got, plain_run)
    assert _rows(t)[0]["compile_step"].startswith("off:")


def _wrong_step(scale_update=1.0, drift=1.0, compiled=False):
    """A compiled step that runs the eager iteration (``compiled``: the real compiled step) and then gets the
    weights (``scale_update``) or the negatives it wrote to the buffer (``drift``: chains moved that much
    further) slightly wrong."""
    real_compile_step = fastpath_mod.compile_step

    def make(step, mode, device_type, static=None):
        alg = step.__self__
        inner = real_compile_step(step, mode, device_type, static) if compiled else step

        def run(idx, idx_cls, lr):
            before = [p.detach().clone() for p in alg.model.parameters()]
            out = inner(idx, idx_cls, lr)
            with torch.no_grad():
                for p, b in zip(alg.model.parameters(), before):
                    p.copy_(b + scale_update * (p - b))
            out["_x_neg"] = out["_x0"] + drift * (out["_x_neg"] - out["_x0"])
            return out
        return run
    return make


@pytest.mark.parametrize("policy", ["auto", "strict"])
@pytest.mark.parametrize("what,wrong", [("weight update", _wrong_step(scale_update=1.02)),
                                        ("negatives", _wrong_step(drift=1.02))],
                         ids=["update-2pc", "chains-drift-2pc"])
def test_compiled_step_a_few_per_cent_off_is_caught(tmp_path, monkeypatch, plain_run, policy, what, wrong):
    monkeypatch.setattr(fastpath_mod, "compile_step", wrong)
    t = _trainer(tmp_path, compile="off", compile_step=True, fast_path=policy)
    if policy == "strict":
        with pytest.raises(FastPathError, match=f"fast component compile_step failed its self-check: .*{what}"):
            t.train_step(0)
        return
    got = _run(t)
    assert t.fast.report["compile_step"].startswith("off: "), t.fast.report
    bad = [part for part in t.fast.report["compile_step"][5:].split("; ") if part.startswith(what)]
    assert bad and float(bad[0].split(" err ")[1].split()[0]) > float(bad[0].split("= ")[1].rstrip(")"))
    _assert_same_run(got, plain_run)


def test_compiled_network_checked_after_a_failed_compiled_step_stays_on(tmp_path, monkeypatch):
    """The real compiled step (its graph traced and run) fails its check, 2 % off; the per-piece compiled
    network, compiled next in the same process, passes its check and stays on. Before the grads were
    cleared outside the step's graph (Algorithm1.zero_grad) it raised "'EnergyModel' object has no attribute
    'sampler'" here on torch 2.14 and was switched off too. M-EBM: its forward returns a plain None."""
    monkeypatch.setattr(fastpath_mod, "compile_step", _wrong_step(scale_update=1.02, compiled=True))
    t = _trainer(tmp_path, model="mebm", compile="aot_eager", compile_step=True)
    report = t.check_fast_path(0)
    assert report["compile_step"].startswith("off: ") and report["compile"].startswith("ok (margin "), report
    assert t.fast.active()["compile"] and t.fast.net is not t.model and t.fast.step.net is t.fast.net
    e, logits = t.fast.net(torch.zeros(2, 3, 16, 16))
    assert e.shape == (2,) and logits is None


@pytest.mark.parametrize("policy", ["auto", "strict"])
@pytest.mark.parametrize("factor", [1.03, 1.5])
def test_compiled_energy_a_few_per_cent_off_is_caught(tmp_path, plain_run, policy, factor):
    t = _trainer(tmp_path, compile="aot_eager", compile_step=False, fast_path=policy)
    _with_net(t, _wrong_energy(t.model, factor))
    if policy == "strict":
        with pytest.raises(FastPathError, match="--fast-path strict: fast component compile failed"):
            t.train_step(0)
        return
    got = _run(t)
    assert t.fast.report["compile"].startswith("off: energy err"), t.fast.report
    assert t.fast.net is t.model and t.fast.sampler.net is t.model and t.cfg.compile == "aot_eager"
    _assert_same_run(got, plain_run)


def test_fast_path_off_runs_no_check(tmp_path):
    t = _trainer(tmp_path, compile="aot_eager", compile_step=False, fast_path="off")
    assert not t.fast.pending
    _with_net(t, _wrong_energy(t.model, 1.5))
    t.train_step(0)
    assert t.fast.report == {} and t.fast.net is not t.model


def test_triton_checks_in_the_interpreter(tmp_path, monkeypatch):
    from fastebm import kernels

    monkeypatch.setattr(selfcheck, "P0_SAMPLES", 1024)  # the interpreter is slow; the z-tests scale with n
    t = _trainer(tmp_path, noise=0.01)
    t.fast.rng = kernels.make_rng_state(7, "cpu")
    ok, detail, _ = selfcheck.check_triton_langevin(t.fast, 0)
    assert ok, detail
    ok, detail, _ = selfcheck.check_triton_p0(t.fast, 0)
    assert ok, detail
    # a kernel that forgets the noise / shifts the mean / updates 2 % too far fails its check
    import fastebm.kernels.langevin as lv
    real = lv.langevin_step
    monkeypatch.setattr(lv, "langevin_step", lambda x, g, a, s, rng, **kw: (x - a * g).clamp(-1, 1))
    ok, detail, _ = selfcheck.check_triton_langevin(t.fast, 0)
    assert not ok and "noise" in detail
    monkeypatch.setattr(lv, "langevin_step", lambda x, g, a, s, rng, **kw: real(x, 1.02 * g, a, s, rng, **kw))
    ok, detail, _ = selfcheck.check_triton_langevin(t.fast, 0)
    assert not ok and detail.startswith("update at sigma 0 err"), detail
    import fastebm.kernels.lowrank_gaussian as lg
    monkeypatch.setattr(lg, "lowrank_gaussian_sample",
                        lambda mean, u, d, n, rng: (mean + 0.2 + torch.randn(n, mean.numel()) @ u.T).clamp(-1, 1))
    ok, detail, _ = selfcheck.check_triton_p0(t.fast, 0)
    assert not ok and "pixel means" in detail


@pytest.mark.slow
def test_cli_banner_names_the_checked_components(tmp_path):
    """A fresh process, as a user's run: the banner says which fast components run, metrics.jsonl logs it."""
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
    Triton Langevin update and p0 sampler, bf16 loss pass all pass their checks on this GPU, and the run
    trains."""
    t = _trainer(tmp_path, device="cuda", compile="default", cuda_graphs=True, triton=True, amp="bf16",
                 channels_last=True, compile_step=False, fast_path="strict", noise=0.01)
    params, _ = _run(t)
    report = t.fast.report
    print(report)
    assert set(report) == {"amp", "compile", "cuda_graphs", "triton_langevin", "triton_p0"}
    assert all(v.startswith("ok") for v in report.values()), report
    assert all(torch.isfinite(p).all() for p in params)
