import pytest
import torch
import torch.nn as nn

from fastebm.sampler import SGLDConfig, energy_grad, langevin_update, sgld


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
    torch.testing.assert_close(sgld(q, x0, cfg, noise=explicit), 0.01 * explicit[0])


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
    assert not torch.allclose(a, b)
    model.eval()
    g = energy_grad(model.energy, x0)
    torch.testing.assert_close(b, x0 - 100.0 * g)


@pytest.mark.parametrize("overrides,match", [
    (dict(k=0), "--k"), (dict(k=2.5), "--k"), (dict(step_size=0), "--step-size"),
    (dict(noise=-1), "--noise"), (dict(grad_clip=0), "--grad-clip"), (dict(sgld_bn="train"), "--sgld-bn")])
def test_bad_sgld_options_are_rejected_at_the_boundary(overrides, match):
    """SGLD settings are validated once, by config.resolve, with the option's name."""
    from fastebm.config import resolve

    with pytest.raises(ValueError, match=match):
        resolve(overrides)


def test_langevin_update_reference():
    x = torch.tensor([0.5, -0.99, 0.0])
    g = torch.tensor([1.0, 0.5, -2.0])
    cfg = SGLDConfig(n_steps=1, step_size=0.1, noise=0.0, grad_clip=1.0)
    torch.testing.assert_close(langevin_update(x, g, cfg), torch.tensor([0.4, -1.0, 0.1]))
