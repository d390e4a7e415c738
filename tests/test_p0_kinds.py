"""The p0 kinds end to end: the registry and its interface (a kind registered in one line is a --p0 choice, is
fitted, cached and checkpointed), and the two p0 beside Eq. 6 as fastebm fits it: the authors' CelebA form
(--p0 gaussian-downsampled) and JEM++'s per-class mixture (--p0 gaussian-mixture): options, one-line errors, the
fast path's choice of sampler, a training run's p0.pt and checkpoint."""
import dataclasses
import json
import os

import pytest
import torch

from fastebm.algorithm.sampler import prepare_compiled_input_grad
from fastebm.config.options import resolve
from fastebm.data.imageset import ImageSet, to_float
from fastebm.fastpath.compiled_step import graph_breaks
from fastebm.fastpath.fastpath import requested_components
from fastebm.fastpath.selfcheck import check_compile_step
from fastebm.p0 import P0_KINDS, p0_from_state_dict
from fastebm.p0.base import P0
from fastebm.p0.downsampled import DownsampledGaussianInit
from fastebm.p0.mixture import GaussianMixtureInit
from fastebm.run.completion import check_fits
from fastebm.run.trainer import Trainer
from fastebm.train import main

TINY = dict(dataset="digits", image_size=16, depth=10, width=1, buffer_size=40, batch_size=8, cls_batch_size=8,
            train_subset=300, test_subset=16, warmup_iters=0, decay_epochs=[], progress=False, log_every=1,
            eval_every=1000, sample_every=1000, epochs=1, iters_per_epoch=2, k=1, tensorboard=False)


def _assert_same(a, b, where="p0"):
    """Two state dicts hold equal tensors and values (nested dicts compared key by key)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    else:
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, where


class PixelMeanInit(P0):
    """A toy p0 for the registry test: the training images' per-pixel mean, plus U(−0.1, 0.1) noise. It states only
    what P0 requires: triton, use_triton and check_memory are P0's defaults."""

    kind, fitted, uses_size = "pixel-mean", True, False
    fits = 0  # fits so far (the cache test counts them)

    def __init__(self, mean, meta=None):
        self.mean, self.shape, self.meta = mean, tuple(mean.shape), dict(meta or {})

    @classmethod
    def fit(cls, data, opts, device="cpu"):
        cls.fits += 1
        return cls(to_float(data.images).mean(0).to(device), {"n": len(data), "jitter": opts.jitter})

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["mean"], state["meta"])

    def sample(self, n, device=None):
        mean = self.mean.to(device)
        return (mean + 0.2 * torch.rand(n, *self.shape, device=mean.device) - 0.1).clamp_(-1, 1)

    def to(self, device, dtype=None):
        return PixelMeanInit(self.mean.to(device, dtype), self.meta)

    def state_dict(self):
        return {"kind": self.kind, "shape": self.shape, "mean": self.mean.cpu(), "meta": self.meta}


def test_every_registered_kind_is_a_p0_under_its_own_name_and_has_its_own_module():
    """One kind, one module of fastebm/p0/ (besides base.py and the registry in __init__.py), one line."""
    import fastebm.p0 as wing

    folder = os.path.dirname(wing.__file__)
    modules = {f[:-3] for f in os.listdir(folder) if f.endswith(".py")} - {"__init__", "base"}
    assert sorted(cls.__module__.rsplit(".", 1)[1] for cls in P0_KINDS.values()) == sorted(modules)
    assert list(P0_KINDS) == ["gaussian", "gaussian-downsampled", "gaussian-mixture", "uniform"]  # --help's order
    for name, cls in P0_KINDS.items():
        assert P0 in cls.__mro__, name  # a subclass: P0's defaults apply to it
        assert cls.kind == name and all(isinstance(getattr(cls, a), bool) for a in ("fitted", "uses_size", "triton"))
        for method in ("check_memory", "fit", "from_state_dict", "sample", "to", "use_triton", "state_dict"):
            assert callable(getattr(cls, method, None)), (name, method)
    assert [n for n, cls in P0_KINDS.items() if cls.triton] == ["gaussian"]  # the one fused sampler
    with pytest.raises(ValueError, match=r"p0 state: expected a kind of \['gaussian', .*got 'nope'"):
        p0_from_state_dict({"kind": "nope", "shape": (3, 8, 8)})

    class NoSample(P0):  # a kind that forgets a method P0 has no default for
        kind, fitted, uses_size = "no-sample", False, False

        def to(self, device, dtype=None):
            return self

        def state_dict(self):
            return {"kind": self.kind}

        @classmethod
        def fit(cls, data, opts, device=None):
            return cls()

        @classmethod
        def from_state_dict(cls, state):
            return cls()

    with pytest.raises(TypeError, match="abstract method.*sample"):
        NoSample.fit(None, None)


def test_a_kind_registered_in_one_line_is_a_choice_fitted_cached_and_checkpointed(tmp_path, monkeypatch, capsys):
    """The trainer's path (--p0 → limits' choices → load_or_fit_p0 → p0.pt → checkpoint → p0_from_state_dict)
    knows a kind by its registry line alone."""
    monkeypatch.setitem(P0_KINDS, "pixel-mean", PixelMeanInit)  # the one line a new kind adds
    monkeypatch.setattr(PixelMeanInit, "fits", 0)
    assert _printed(["--p0", "pixel-mean"], capsys)["p0"] == "pixel-mean"
    cfg = resolve(dict(TINY, p0="pixel-mean"))
    assert PixelMeanInit.triton is False and PixelMeanInit(torch.zeros(3, 4, 4)).use_triton(torch.zeros(2)) is None
    assert "triton_p0" not in requested_components(dataclasses.replace(cfg, triton=True))  # P0's default
    assert PixelMeanInit.check_memory((3, 16, 16), 10, None, 0, "cpu") is None  # default: nothing to check
    check_fits(cfg, 300, "cpu", available=2 ** 30)
    seen = []

    def check_memory(cls, shape, n_classes, opts, free, device):  # a kind's own check, seen through the run's
        seen.append((shape, n_classes, opts.form, opts.size))
        raise ValueError(f"--p0 pixel-mean: needs {2 ** 31} bytes, {free} are free on {device}")

    with monkeypatch.context() as m:
        m.setattr(PixelMeanInit, "check_memory", classmethod(check_memory))
        m.setattr(PixelMeanInit, "triton", True)
        assert "triton_p0" in requested_components(dataclasses.replace(cfg, triton=True))  # the kind says so
        with pytest.raises(ValueError, match=r"^--p0 pixel-mean: needs 2147483648 bytes, 1073741824 are free on cpu"):
            check_fits(cfg, 300, "cpu", available=2 ** 30)
    assert seen == [((3, 16, 16), 10, "full", 32)]  # --cov auto resolved at the image side (16 px)
    out = str(tmp_path / "run")
    t = Trainer(resolve(dict(TINY, p0="pixel-mean", out=out)))
    assert isinstance(t.p0, PixelMeanInit) and isinstance(t.p0, P0)
    assert t.p0.meta["key"]["kind"] == "pixel-mean" and t.p0.meta["n"] == len(t.train_data)
    t.fit()
    cached = torch.load(os.path.join(out, "p0.pt"), weights_only=True)
    assert cached["kind"] == "pixel-mean" and torch.equal(cached["mean"], t.p0.mean)
    again = Trainer(resolve(dict(TINY, p0="pixel-mean", out=out, epochs=2)))
    assert PixelMeanInit.fits == 1 and torch.equal(again.p0.mean, t.p0.mean)  # read from p0.pt
    again.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert isinstance(again.p0, PixelMeanInit) and torch.equal(again.p0.mean, t.p0.mean)
    torch.manual_seed(0)
    x = again.p0.sample(3)
    torch.manual_seed(0)
    assert torch.equal(x, t.p0.sample(3)) and x.shape == (3, *t.p0.shape)


def _printed(argv, capsys):
    assert main(["--print-config"] + argv) == 0
    return json.loads(capsys.readouterr().out)


def test_print_config_shows_the_new_kinds(capsys):
    d = _printed(["--dataset", "celebahq128"], capsys)
    assert (d["p0"], d["p0_size"], d["cov"]) == ("gaussian-downsampled", 32, "auto")
    d = _printed(["--dataset", "cifar10", "--p0", "gaussian-mixture", "--cov", "lowrank", "--rank", "20"], capsys)
    assert (d["p0"], d["cov"], d["rank"]) == ("gaussian-mixture", "lowrank", 20)
    assert _printed(["--dataset", "celebahq128", "--p0", "gaussian"], capsys)["p0"] == "gaussian"


@pytest.mark.parametrize("argv, match", [
    (["--dataset", "celebahq128", "--p0-size", "48"], "--p0-size 48: expected a divisor of the image side 128"),
    (["--p0", "gaussian-downsampled", "--p0-size", "64"], "--p0-size 64: expected a divisor of the image side 32"),
    (["--p0-size", "0"], "--p0-size: expected a value in [1, 1024]"),
    (["--p0", "mixture"], "argument --p0: invalid choice: 'mixture'"),
])
def test_bad_combinations_are_one_line_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--print-config"] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_a_class_too_small_for_a_covariance_is_a_one_line_error(tmp_path, capsys):
    argv = ["--train-subset", "12", "--batch-size", "4", "--cls-batch-size", "4", "--depth", "10", "--width", "1",
            "--p0", "gaussian-mixture", "--out", str(tmp_path / "r"), "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error:" in line]  # after the banner
    assert len(err) == 1 and "--p0 gaussian-mixture: class 2 has 0 training image(s)" in err[0], err


def test_mixture_covariances_larger_than_memory_are_refused():
    cfg = resolve(dict(dataset="imagenet32", p0="gaussian-mixture", n_classes=1000))
    with pytest.raises(ValueError, match=r"--p0 gaussian-mixture --cov full: 1000 class covariances"):
        check_fits(cfg, 100_000, "cpu", available=16 * 2 ** 30)  # 1000 × 3072² float32 = 35 GiB
    check_fits(resolve(dict(dataset="imagenet32", p0="gaussian-mixture", cov="lowrank", n_classes=1000)), 100_000,
               "cpu", available=16 * 2 ** 30)  # rank 100 + diagonal: 1.2 GiB


def test_the_fused_p0_kernel_serves_the_one_gaussian_only():
    """fastpath.requested_components asks the kind (``triton``): the other kinds sample with the plain PyTorch
    path, on CUDA too."""
    for p0, fused in (("gaussian", True), ("gaussian-downsampled", False), ("gaussian-mixture", False)):
        cfg = resolve(dict(dataset="digits", p0=p0, triton=True))
        assert ("triton_p0" in requested_components(cfg)) is fused, p0


@pytest.mark.parametrize("p0, kind", [(dict(p0="gaussian-downsampled", p0_size=4), DownsampledGaussianInit),
                                      (dict(p0="gaussian-mixture"), GaussianMixtureInit)])
def test_a_run_caches_and_checkpoints_its_p0(p0, kind, tmp_path):
    out = str(tmp_path / "run")
    t = Trainer(resolve(dict(TINY, **p0, out=out)))
    assert isinstance(t.p0, kind)
    t.fit()
    assert torch.load(os.path.join(out, "p0.pt"), weights_only=True)["kind"] == kind.kind
    again = Trainer(resolve(dict(TINY, **p0, out=out, epochs=2)))
    again.load_checkpoint(os.path.join(out, "ckpt.pt"))  # weights_only: tensors and plain values
    assert isinstance(again.p0, kind) and again.state.iteration == 2
    _assert_same(t.p0.state_dict(), again.p0.state_dict())
    torch.manual_seed(0)
    x = again.p0.sample(3)
    torch.manual_seed(0)
    assert torch.equal(x, t.p0.sample(3))
    again.fit()
    assert again.state.iteration == 4


@pytest.mark.parametrize("p0", [dict(p0="gaussian-mixture")])
def test_the_compiled_step_traces_the_new_kinds_and_passes_its_check(p0, tmp_path):
    """--compile-step draws the restarts inside its graph: no graph break, and the compiled iteration agrees with
    the eager one and float64 (selfcheck.check_compile_step; aot_eager on the CPU, as tests/test_step.py). The
    mixture only: its draw (searchsorted, batched GEMM, gather) is the new code in the graph; the downsampled
    form adds a reshape to the one Gaussian and passes as well (about 3 min more on a 2-core machine)."""
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (64, 3, 16, 16), generator=g, dtype=torch.uint8), torch.arange(64) % 4,
                    4, "toy")
    cfg = resolve(dict(TINY, dataset="folder", device="cpu", buffer_size=64, reinit_freq=0.5, ckpt_every=1000,
                       fast_path="off", compile_step=True, compile="aot_eager", out=str(tmp_path), **p0))
    torch._dynamo.reset()
    t = Trainer(cfg, data)
    idx, idx_cls, lr = t.fast.batch(0)
    prepare_compiled_input_grad((8, *t.buffer.samples.shape[1:]), "cpu")
    n, reasons = graph_breaks(t.fast.eager_of_compiled().__call__, idx, idx_cls, lr)
    assert n == 0, reasons
    t.fast.lr.fill_(t.cfg.lr)
    ok, detail, _ = check_compile_step(t.fast, 0)
    assert ok, detail
