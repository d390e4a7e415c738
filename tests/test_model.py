import pytest
import torch

from fastebm.algorithm.model import EnergyModel, WideResNet


@pytest.mark.parametrize("kind", ["mebm", "mjem", "jem"])
def test_energy_input_gradient_matches_finite_differences(kind):
    torch.manual_seed(0)
    model = EnergyModel(kind, n_classes=5, depth=10, width=1, norm="none", image_size=8).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(model.energy(x).sum(), x)
    # Central differences along a few random directions.
    for seed in range(3):
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        h = 1e-5
        with torch.no_grad():
            fd = (model.energy(x + h * v).sum() - model.energy(x - h * v).sum()) / (2 * h)
        # float64, h on a linear piece of the network: off by E's rounding over h (≈ 10 U64 |E| / h ≈ 1e-11)
        torch.testing.assert_close((g * v).sum(), fd, rtol=0, atol=1e-10)


def test_heads_and_sign_convention(tiny_model):
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    jem = tiny_model("jem").eval()
    e, logits = jem(x)
    assert e.shape == (4,) and logits.shape == (4, 10) and e.dtype == torch.float32
    assert torch.equal(e, -torch.logsumexp(logits, 1))  # Eq. 4: low energy = likely
    assert torch.equal(jem.energy(x), e)
    mjem = tiny_model("mjem").eval()
    e2, logits2 = mjem(x)
    assert torch.equal(e2, mjem.energy_head(mjem.features(x)).squeeze(1))
    assert logits2.shape == (4, 10)
    mebm = tiny_model("mebm").eval()
    assert mebm(x)[1] is None and not mebm.has_classifier
    with pytest.raises(RuntimeError, match="no classifier head"):
        mebm.logits(x)


def test_wrn_shapes_and_fourth_stage():
    assert WideResNet(28, 10).feature_dim == 640
    net = WideResNet(10, 1, image_size=64)
    assert net.feature_dim == 128  # fourth stage: 128·k channels
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 128)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in WideResNet(10, 1, norm="none").modules()) == 0


@pytest.mark.parametrize("kwargs", [dict(depth=27), dict(width=0), dict(norm="layer")])
def test_bad_architecture_is_asserted(kwargs):
    """The options are validated once, by fastebm.config.options (--depth / --width / --norm, tests/test_train.py);
    the model asserts."""
    with pytest.raises(AssertionError):
        WideResNet(**{"depth": 10, "width": 1, **kwargs})


def test_bad_kind_is_asserted():
    with pytest.raises(AssertionError):
        EnergyModel("ebm")


@pytest.mark.parametrize("depth,width,image_size,model", [(10, 1, 32, "mjem"), (28, 10, 32, "mebm"),
                                                         (16, 2, 64, "jem"), (4, 3, 32, "lse-jem")])
def test_the_size_check_counts_the_models_weights(depth, width, image_size, model):
    """completion.count_weights (the memory check before building, on the meta device) equals the built model's
    parameter count."""
    from fastebm.algorithm.model import build_model
    from fastebm.config.options import resolve
    from fastebm.run.completion import count_weights

    cfg = resolve(dict(model=model, depth=depth, width=width, image_size=image_size, n_classes=10))
    assert count_weights(cfg) == sum(p.numel() for p in build_model(cfg).parameters()) > 0


@pytest.mark.parametrize("given,expected", [({}, 0.1), ({"bn_momentum": 0.9}, 0.9)])
def test_bn_momentum_reaches_every_batchnorm(given, expected):
    """--bn-momentum sets every BatchNorm2d of the WRN (blocks and the last norm); the default is PyTorch's 0.1."""
    from fastebm.algorithm.model import build_model
    from fastebm.config.options import resolve

    model = build_model(resolve(dict(depth=10, width=1, image_size=16, **given)))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 7 and all(m.momentum == expected for m in bns)  # 3 blocks × 2 + the last one
