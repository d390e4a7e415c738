"""The benchmarks' FLOP counter (bench/_common.count_flops) on the installed torch (it replaces
FlopCounterMode's module tracker, an attribute that is not public API; CI runs this on torch 2.11 and on
the pinned torch)."""
import torch

from bench._common import count_flops


def test_count_flops_of_an_input_gradient_through_a_leaf(tiny_model):
    """SGLD's pattern, autograd.grad of E(x) w.r.t. a leaf x (FlopCounterMode's own module tracker raises
    on it), counts forward + input-gradient backward = 2× the forward FLOPs with frozen parameters."""
    model = tiny_model("mebm", image_size=16).eval().requires_grad_(False)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    forward = count_flops(model.energy, x)
    leaf = x.clone().requires_grad_(True)
    assert forward > 0
    assert count_flops(lambda t: torch.autograd.grad(model.energy(t).sum(), t), leaf) == 2 * forward
