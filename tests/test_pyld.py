"""JEM++'s sampler, PYLD (github sndnyang/JEMPP train_jempp.py @fba6ba5 ``sample_q``), as SGLD with inner steps
(``SGLDConfig.inner_steps``): against the authors' loop written out with its Hamiltonian of the first layer."""
import torch

from fastebm.algorithm.model import EnergyModel
from fastebm.algorithm.sampler import Sampler, SGLDConfig, energy_grad, langevin_update, quiet_update


def _model():
    torch.manual_seed(0)
    return EnergyModel("jempp", n_classes=10, depth=10, width=1, norm="batch", image_size=16).double().train()


def authors_pyld(model, x0, n_steps: int, in_steps: int, pyld_lr: float, eps: float = 1.0):
    """train_jempp.py sample_q with its defaults --sgld_lr 0 --sgld_std 0: per step, p = ∂(Σ logsumexp f(x))/∂z1
    at the first layer's output z1 (YOPO's layer_one_out.grad), then ``in_steps`` times
    tmp ← clamp(tmp + clamp(∂H/∂tmp, −eps, eps)·pyld_lr, −1, 1) with H(tmp, p) = Σ conv1(tmp)·p (utils.py
    Hamiltonian)."""
    f, x_k = model.f, x0.clone()
    for _ in range(n_steps):
        x = x_k.detach().requires_grad_(True)
        z1 = f.conv1(x)  # layer_one_out
        h = torch.nn.functional.adaptive_avg_pool2d(f.act(f.norm(f.blocks(z1))), 1).flatten(1)
        (p,) = torch.autograd.grad(model.class_head(h).logsumexp(1).sum(), z1)
        tmp = x.detach()
        for _ in range(in_steps):
            tmp = tmp.requires_grad_(True)
            (eta,) = torch.autograd.grad((f.conv1(tmp) * p).sum(), tmp)
            tmp = (tmp.detach() + eta.clamp(-eps, eps) * pyld_lr).clamp(-1, 1)
        x_k = tmp
    return x_k


def test_pyld_is_the_authors_loop():
    """The first layer's Hamiltonian is linear in x, so each inner step's gradient is the step's input gradient
    ∂(−E)/∂x: fastebm reuses it, and the chain equals the authors' (float64, bit for bit)."""
    model = _model()
    x0 = torch.rand(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cfg = SGLDConfig(n_steps=3, step_size=0.2, noise=0.0, grad_clip=1.0, clamp_x=True, bn_mode="update",
                     inner_steps=5)
    want = authors_pyld(model, x0, 3, 5, 0.2)
    got = Sampler(model, cfg)(x0)
    assert torch.equal(got, want)
    assert not torch.equal(got, x0)  # the chains moved


def test_inner_steps_reuse_one_gradient_and_draw_noise_once():
    model = _model()
    x0 = torch.rand(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    cfg = SGLDConfig(n_steps=2, step_size=0.1, noise=0.01, grad_clip=1.0, clamp_x=True, bn_mode="batch",
                     inner_steps=3)
    noise = [torch.randn_like(x0) for _ in range(2)]
    x = x0
    for k in range(2):
        g = energy_grad(model.energy, x)
        x = quiet_update(quiet_update(x, g, cfg), g, cfg)
        x = langevin_update(x, g, cfg, noise[k])
    assert torch.equal(Sampler(model, cfg)(x0, noise), x)
    one = SGLDConfig(n_steps=2, step_size=0.1, noise=0.01, grad_clip=1.0, clamp_x=True, bn_mode="batch")
    assert not torch.equal(Sampler(model, one)(x0, noise), x)  # inner_steps 1 is plain SGLD, another chain
