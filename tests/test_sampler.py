import copy

import pytest
import torch
import torch.nn as nn

from fastebm.algorithm.sampler import SGLDConfig, energy_grad, langevin_update, sgld
from fastebm.fastpath.numerics import agree, tolerance


class Quadratic(nn.Module):
    """E(x) = ½‖x‖² per sample (∂E/∂x = x), with one dummy parameter to check freezing."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def energy(self, x):
        return 0.5 * self.w * x.flatten(1).pow(2).sum(1)


def test_sgld_step_matches_formula_without_noise(tiny_model):
    model = tiny_model("mjem").train()
    x0 = torch.rand(6, 3, 16, 16) * 2 - 1
    cfg = SGLDConfig(n_steps=1, step_size=0.7, noise=0.0, clamp_x=False)
    g = energy_grad(model.energy, x0)
    torch.testing.assert_close(sgld(model, x0, cfg), x0 - 0.7 * g, rtol=0, atol=0)
    clipped = SGLDConfig(n_steps=1, step_size=0.7, noise=0.0, grad_clip=1e-3)
    expected = (x0 - 0.7 * g.clamp(-1e-3, 1e-3)).clamp(-1, 1)
    torch.testing.assert_close(sgld(model, x0, clipped), expected, rtol=0, atol=0)


def test_sgld_noise_statistics():
    q = Quadratic()
    x0 = torch.zeros(2000, 3, 4, 4)
    cfg = SGLDConfig(n_steps=1, step_size=0.5, noise=0.01, clamp_x=False)
    torch.manual_seed(0)
    x1 = sgld(q, x0, cfg)  # gradient at 0 is 0: x1 = σ ε
    assert abs(float(x1.mean())) < 0.01 * 4 / (x1.numel() ** 0.5)
    assert abs(float(x1.std()) / 0.01 - 1) < 0.02
    torch.manual_seed(0)
    assert torch.equal(sgld(q, x0, cfg), x1)  # reproducible by seed
    explicit = [torch.randn_like(x0)]
    torch.testing.assert_close(sgld(q, x0, cfg, noise=explicit), 0.01 * explicit[0], rtol=0, atol=0)  # x0, ∇E(x0) = 0


def test_stationary_variance_matches_langevin_theory():
    # x ← x − α x + σ ε is an AR(1) chain with stationary variance σ² / (α (2 − α)).
    alpha, sigma = 0.2, 0.1
    q = Quadratic()
    torch.manual_seed(1)
    x = sgld(q, torch.zeros(4000, 1, 2, 2), SGLDConfig(n_steps=150, step_size=alpha, noise=sigma, clamp_x=False))
    theory = sigma ** 2 / (alpha * (2 - alpha))
    assert abs(float(x.var()) / theory - 1) < 0.05
    assert abs(float(x.mean())) < 0.01


def test_sampling_touches_no_parameter_state(tiny_model):
    model = tiny_model("mjem").train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bn]
    x = sgld(model, torch.rand(8, 3, 16, 16) * 2 - 1, SGLDConfig(n_steps=3, noise=0.01))
    assert not x.requires_grad and x.grad_fn is None
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    for m, (mean, var, count) in zip(bn, stats):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert torch.equal(m.num_batches_tracked, count)
    assert model.training


def test_sampling_computes_no_weight_gradients(tiny_model, monkeypatch):
    model = tiny_model("mebm").train()
    seen = []
    orig = torch.autograd.grad

    def spy(outputs, inputs, *a, **k):
        seen.append([p.requires_grad for p in model.parameters()])
        return orig(outputs, inputs, *a, **k)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    sgld(model, torch.rand(4, 3, 16, 16), SGLDConfig(n_steps=2))
    assert len(seen) == 2 and not any(any(s) for s in seen)  # parameters frozen at every step


def test_batch_vs_eval_bn_modes_differ_and_eval_restores_mode(tiny_model):
    model = tiny_model("mebm").train()
    x0 = torch.rand(8, 3, 16, 16) * 2 - 1
    a = sgld(model, x0, SGLDConfig(n_steps=1, noise=0.0, step_size=100.0, clamp_x=False, bn_mode="batch"))
    b = sgld(model, x0, SGLDConfig(n_steps=1, noise=0.0, step_size=100.0, clamp_x=False, bn_mode="eval"))
    assert model.training
    assert not torch.allclose(a, b)  # not fp32 rounding: the two modes' chains differ by O(1) at step size 100
    model.eval()
    g = energy_grad(model.energy, x0)
    torch.testing.assert_close(b, x0 - 100.0 * g, rtol=0, atol=0)


@pytest.mark.parametrize("overrides,match", [
    (dict(k=0), "--k"), (dict(k=2.5), "--k"), (dict(step_size=0), "--step-size"),
    (dict(noise=-1), "--noise"), (dict(grad_clip=0), "--grad-clip"), (dict(sgld_bn="train"), "--sgld-bn")])
def test_bad_sgld_options_are_rejected_at_the_boundary(overrides, match):
    """SGLD settings are validated once, by config.resolve, with the option's name."""
    from fastebm.config.options import resolve

    with pytest.raises(ValueError, match=match):
        resolve(overrides)


def test_langevin_update_reference():
    x = torch.tensor([0.5, -0.99, 0.0])
    g = torch.tensor([1.0, 0.5, -2.0])
    cfg = SGLDConfig(n_steps=1, step_size=0.1, noise=0.0, grad_clip=1.0)
    # fp32 x − α·clamp(g): α stored, the product and the difference rounded (3 roundings of terms ≤ 1)
    torch.testing.assert_close(langevin_update(x, g, cfg), torch.tensor([0.4, -1.0, 0.1]), **tolerance(ops=3))


# ------------------------------------------------------------------ BatchNorm running statistics (--sgld-bn)
def _first_bn_input_stats(model, x):
    """Batch mean and unbiased variance (C,) of what the first BatchNorm sees: the stem convolution of x,
    computed by hand (BatchNorm2d's running variance uses the unbiased estimate)."""
    h = model.f.conv1(x)
    return h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)


@pytest.mark.parametrize("momentum", [0.1, 0.9])
def test_update_mode_moves_running_stats_by_each_step_and_batch_mode_leaves_them(tiny_model, momentum):
    """``update``: after K = 2 steps the first BatchNorm's running mean / var are (1 − m)²·old +
    (1 − m)·m·s(x0) + m·s(x1), s the batch statistic of the step's input, x1 the chain after one step;
    ``batch`` leaves them exactly as they were."""
    from fastebm.algorithm.model import EnergyModel

    torch.manual_seed(0)
    model = EnergyModel("mebm", depth=10, width=1, norm="batch", image_size=16, bn_momentum=momentum).double().train()
    bn = model.f.blocks[0].norm1
    with torch.no_grad():  # non-trivial starting statistics, so that the (1 − m)·old term is seen
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    mean0, var0, count0 = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    x0 = torch.rand(8, 3, 16, 16, dtype=torch.float64) * 2 - 1

    kept = sgld(model, x0, SGLDConfig(n_steps=2, noise=0.0, bn_mode="batch"))
    assert torch.equal(bn.running_mean, mean0) and torch.equal(bn.running_var, var0)
    assert torch.equal(bn.num_batches_tracked, count0)

    x1 = sgld(model, x0, SGLDConfig(n_steps=1, noise=0.0, bn_mode="batch"))
    with torch.no_grad():
        (m0, v0), (m1, v1) = _first_bn_input_stats(model, x0), _first_bn_input_stats(model, x1)
    m = momentum
    x2 = sgld(model, x0, SGLDConfig(n_steps=2, noise=0.0, bn_mode="update"))
    torch.testing.assert_close(x2, kept, rtol=0, atol=0)  # train-mode forwards: the chain is the same
    torch.testing.assert_close(bn.running_mean, (1 - m) ** 2 * mean0 + (1 - m) * m * m0 + m * m1, rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(bn.running_var, (1 - m) ** 2 * var0 + (1 - m) * m * v0 + m * v1, rtol=1e-12,
                               atol=1e-12)
    assert int(bn.num_batches_tracked) == int(count0) + 2
    assert model.training and all(p.requires_grad for p in model.parameters())


def _running_mean_by_hand(model, x_pos, x_neg, start, mode):
    """The first BatchNorm's running mean (m = 0.9) after E(x+)'s forward and, in ``update`` mode, E(x−)'s."""
    with torch.no_grad():
        mp, mn = _first_bn_input_stats(model, x_pos)[0], _first_bn_input_stats(model, x_neg)[0]
    after_pos = 0.1 * start + 0.9 * mp
    return 0.1 * after_pos + 0.9 * mn if mode == "update" else after_pos


def test_update_mode_reaches_the_negatives_pass_of_an_iteration(tmp_path):
    """Algorithm 1's E(x−) forward: with ``--sgld-bn update`` it updates the running statistics after E(x+)'s
    (the authors' f(x_q)); with ``batch`` only E(x+)'s forward does. First BatchNorm, by hand, m = 0.9."""
    from fastebm.config.options import resolve
    from fastebm.data.imageset import ImageSet
    from fastebm.run.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (32, 3, 16, 16), generator=g, dtype=torch.uint8), torch.arange(32) % 10,
                    10, "toy")
    base = dict(dataset="folder", device="cpu", depth=10, width=1, buffer_size=16, batch_size=8, cls_batch_size=8,
                k=1, epochs=1, iters_per_epoch=2, progress=False, fast_path="off", bn_momentum=0.9)
    xp, xn = torch.rand(8, 3, 16, 16) * 2 - 1, torch.rand(8, 3, 16, 16) * 2 - 1
    for mode in ("batch", "update"):
        t = Trainer(resolve(dict(base, sgld_bn=mode, out=str(tmp_path / mode))), data)
        assert t.fast.step.sgld_bn == mode and t.fast.sampler.cfg.bn_mode == mode
        bn = t.model.f.blocks[0].norm1
        assert bn.momentum == 0.9
        mean0 = bn.running_mean.clone()
        model64 = copy.deepcopy(t.model).double()
        by_hand = _running_mean_by_hand(t.model, xp, xn, mean0, mode)
        by_hand64 = _running_mean_by_hand(model64, xp.double(), xn.double(), mean0.double(), mode)
        t.model.train()
        t.fast.plain.energies(xp, xn)
        # against float64, the yardstick the same formula by hand in fp32 (numerics.agree)
        result, = agree("running mean", bn.running_mean, by_hand, by_hand64)
        assert result.ok, str(result)


@pytest.mark.parametrize("argv,match", [(["--bn-momentum", "0"], "--bn-momentum: expected a value in (0, 1], got 0"),
                                        (["--bn-momentum", "1.5"], "--bn-momentum: expected a value in (0, 1]"),
                                        (["--bn-momentum", "nan"], "--bn-momentum: expected a finite number")])
def test_bad_bn_momentum_is_one_line_naming_the_flag(argv, match, capsys, tmp_path):
    from fastebm import train

    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
    assert not (tmp_path / "x").exists()


def test_print_config_shows_the_batchnorm_options(capsys):
    """Default: fastebm's (momentum 0.1, statistics kept to the data); the authors' form as two flags."""
    import json

    from fastebm import train

    assert train.main(["--print-config"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["bn_momentum"], d["sgld_bn"]) == (0.1, "batch")
    assert train.main(["--print-config", "--bn-momentum", "0.9", "--sgld-bn", "update"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["bn_momentum"], d["sgld_bn"]) == (0.9, "update")
