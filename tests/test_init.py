import numpy as np
import pytest
import torch

from fastebm.data import ImageSet
from fastebm.init import GaussianInit, UniformInit, fit_gaussian, load_or_fit_p0, p0_from_state_dict


def _images(n, shape=(3, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


def test_full_fit_equals_numpy_covariance():
    imgs = _images(300)
    p0 = fit_gaussian(imgs, "full", batch_size=64, jitter=1e-9)
    x = (imgs.double() / 127.5 - 1).flatten(1).numpy()
    np.testing.assert_allclose(p0.mean.numpy(), x.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(p0.covariance().double().numpy(), np.cov(x, rowvar=False), rtol=0, atol=1e-5)


def test_lowrank_fit_recovers_planted_covariance():
    torch.manual_seed(0)
    d, r, n = 3 * 8 * 8, 4, 20000
    u = torch.linalg.qr(torch.randn(d, r, dtype=torch.float64))[0] * torch.tensor([0.9, 0.7, 0.5, 0.4]).double()
    diag = torch.rand(d, dtype=torch.float64) * 0.002 + 0.001
    x = torch.randn(n, r, dtype=torch.float64) @ u.T + torch.randn(n, d, dtype=torch.float64) * diag.sqrt()
    x = x.clamp(-1, 1)  # within [−1, 1] already with these scales (checked below)
    imgs = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).view(n, 3, 8, 8)
    p0 = fit_gaussian(imgs, "lowrank", rank=r, batch_size=4096)
    # Compare with the exact sample covariance of the same quantized data.
    exact = fit_gaussian(imgs, "full", batch_size=4096, jitter=1e-12).covariance().double()
    approx = p0.covariance().double()
    assert float(torch.linalg.matrix_norm(approx - exact) / torch.linalg.matrix_norm(exact)) < 0.05
    # The principal subspace is recovered.
    proj = p0.factor.double() @ torch.linalg.pinv(p0.factor.double())
    assert float(torch.linalg.matrix_norm(proj @ u - u) / torch.linalg.matrix_norm(u)) < 0.05
    assert p0.factor.shape == (d, r) and p0.diag_sqrt.shape == (d,)


@pytest.mark.parametrize("form", ["full", "lowrank"])
def test_constant_pixel_and_fewer_samples_than_dims_do_not_crash(form):
    imgs = _images(20, (3, 8, 8))  # N = 20 < D = 192
    imgs[:, 0, 0, 0] = 77  # a constant pixel: zero variance
    p0 = fit_gaussian(imgs, form, rank=8)
    x = p0.sample(50)
    assert x.shape == (50, 3, 8, 8) and torch.isfinite(x).all()
    assert x.min() >= -1 and x.max() <= 1


def test_sampling_is_batched_and_matches_moments():
    imgs = _images(2000, (3, 2, 2), seed=3)
    for form in ("full", "lowrank"):
        p0 = fit_gaussian(imgs, form, rank=12)
        torch.manual_seed(0)
        x = p0.sample(20000).flatten(1).double()
        cov = torch.cov(x.T)
        # Uniform pixels in [−1, 1] are well inside the clamp range only partly: compare loosely.
        assert torch.allclose(x.mean(0), p0.mean.double(), atol=0.03)
        assert float(torch.linalg.matrix_norm(cov - p0.covariance().double())
                     / torch.linalg.matrix_norm(p0.covariance().double())) < 0.35


def test_state_dict_roundtrip_and_uniform():
    p0 = fit_gaussian(_images(50), "lowrank", rank=3)
    q = p0_from_state_dict(p0.state_dict())
    torch.manual_seed(0)
    a = p0.sample(4)
    torch.manual_seed(0)
    assert torch.equal(a, q.sample(4))
    u = p0_from_state_dict(UniformInit((3, 4, 4)).state_dict())
    s = u.sample(1000)
    assert s.shape == (1000, 3, 4, 4) and s.min() >= -1 and s.max() <= 1 and abs(float(s.mean())) < 0.02


def test_cache_is_reused_and_refitted_on_other_data(tmp_path):
    data = ImageSet(_images(100), torch.zeros(100, dtype=torch.long), 1, "toy")
    path = str(tmp_path / "p0.pt")
    a = load_or_fit_p0(data, "gaussian", "full", 10, path)
    mtime = (tmp_path / "p0.pt").stat().st_mtime_ns
    b = load_or_fit_p0(data, "gaussian", "full", 10, path)
    assert (tmp_path / "p0.pt").stat().st_mtime_ns == mtime and torch.equal(a.mean, b.mean)
    other = ImageSet(_images(100, seed=9), torch.zeros(100, dtype=torch.long), 1, "toy")
    c = load_or_fit_p0(other, "gaussian", "full", 10, path)
    assert not torch.equal(a.mean, c.mean)
    assert isinstance(load_or_fit_p0(data, "uniform", "full", 10, None), UniformInit)


@pytest.mark.parametrize("kwargs", [dict(form="diag"), dict(jitter=0), dict(rank=0, form="lowrank")])
def test_bad_fit_arguments(kwargs):
    """--cov / --rank are validated by fastebm.config; the fit asserts them, and rejects too few images."""
    with pytest.raises(AssertionError):
        fit_gaussian(_images(10), **kwargs)
    with pytest.raises(AssertionError):
        fit_gaussian(torch.zeros(10, 3, 4, 4), "full")
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_gaussian(_images(1), "full")
    assert isinstance(fit_gaussian(_images(10), "full"), GaussianInit)
