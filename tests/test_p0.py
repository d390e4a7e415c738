from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastebm.data.imageset import ImageSet
from fastebm.fastpath.numerics import float64_draws, tolerance
from fastebm.io.checkpoint import atomic_save, safe_load
from fastebm.p0 import load_or_fit_p0, p0_from_state_dict
from fastebm.p0.downsampled import DownsampledGaussianInit, fit_downsampled
from fastebm.p0.gaussian import GaussianInit, fit_gaussian
from fastebm.p0.mixture import GaussianMixtureInit, fit_mixture
from fastebm.p0.uniform import UniformInit


def _images(n, shape=(3, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


def _assert_fit(p0, x, mean=None, cov=None):
    """p0's mean and covariance (or ``mean``, ``cov``) are the float64 sample moments of the rows of ``x``, as
    float32 computes them: μ fitted in float64 and stored (1 rounding); Σ = L Lᵀ of the stored Cholesky factor L
    (D products summed, each of two stored entries: D + 2 roundings of terms ≤ the largest variance)."""
    mean = p0.mean if mean is None else mean
    cov = (p0.covariance() if cov is None else cov).double().numpy()
    want = np.cov(x, rowvar=False)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), **tolerance(ops=1))
    np.testing.assert_allclose(cov, want, **tolerance(ops=x.shape[1] + 2, magnitude=float(np.diag(want).max())))


def test_full_fit_equals_numpy_covariance():
    imgs = _images(300)
    p0 = fit_gaussian(imgs, "full", batch_size=64, jitter=1e-9)
    x = (imgs.double() / 127.5 - 1).flatten(1).numpy()
    _assert_fit(p0, x)


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
        # the mean of N(μ, σ²) clamped to [−1, 1] (uniform pixels reach the clamp), a z-test at the sample size
        var = torch.diagonal(p0.covariance()).double()
        z = (x.mean(0) - _clamped_mean(p0.mean.double(), var.sqrt())) / (var / len(x)).sqrt()
        assert float(z.abs().max()) < _z_crit(x.shape[1]), float(z.abs().max())
        # the covariance loosely: the clamp shrinks it (uniform pixels reach ±1)
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
    """--cov / --rank are validated by fastebm.config.options; the fit asserts them, and rejects too few images."""
    with pytest.raises(AssertionError):
        fit_gaussian(_images(10), **kwargs)
    with pytest.raises(AssertionError):
        fit_gaussian(torch.zeros(10, 3, 4, 4), "full")
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_gaussian(_images(1), "full")
    assert isinstance(fit_gaussian(_images(10), "full"), GaussianInit)


# ------------------------------------------------------------------ the authors' CelebA p0 and JEM++'s mixture
def _z_crit(tests: int, alpha: float = 1e-3) -> float:
    """Two-sided z threshold of ``tests`` simultaneous tests at family-wise error ``alpha`` (Bonferroni)."""
    return NormalDist().inv_cdf(1 - alpha / (2 * tests))


def _clamped_mean(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[clamp(X, −1, 1)] for X ~ N(μ, σ²) (float64): −Φ(a) + 1 − Φ(b) + μ (Φ(b) − Φ(a)) + σ (φ(a) − φ(b)) with
    a = (−1 − μ) / σ, b = (1 − μ) / σ. Its standard deviation is at most σ (clamping is 1-Lipschitz)."""
    normal = torch.distributions.Normal(torch.zeros((), dtype=mu.dtype), torch.ones((), dtype=mu.dtype))
    a, b = (-1 - mu) / sigma, (1 - mu) / sigma
    pdf = lambda t: normal.log_prob(t).exp()  # noqa: E731
    return -normal.cdf(a) + 1 - normal.cdf(b) + mu * (normal.cdf(b) - normal.cdf(a)) + sigma * (pdf(a) - pdf(b))


class _LargestDraw(TorchDispatchMode):
    """Records ``value``, the largest |x| of the normal draws made under it."""

    def __init__(self):
        super().__init__()
        self.value = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.name.split("::")[-1] in ("randn", "normal", "normal_"):
            self.value = max(self.value, float(out.abs().max()))
        return out


def _sample_tolerance(p0, z_max: float) -> dict:
    """Tolerance of an fp32 p0 sample μ + U z (+ √d ε) against float64 from the same draws (|z|, |ε| ≤ z_max):
    r products summed and μ added (+ √d ε formed and added): r + 1 (r + 3) roundings of terms at most
    |μ| + z_max (‖U_i‖₁ + √d_i) in size."""
    p0 = getattr(p0, "inner", p0)  # a downsampled p0: its small Gaussian, upsampled by copies
    u = p0.factor if isinstance(p0, GaussianMixtureInit) or p0.form == "lowrank" else p0.scale_tril
    d = p0.diag_sqrt
    means = p0.means if isinstance(p0, GaussianMixtureInit) else p0.mean
    row = u.abs().sum(-1) + (0 if d is None else d.abs())
    return tolerance(ops=u.shape[-1] + (1 if d is None else 3),
                     magnitude=float(means.abs().max()) + z_max * float(row.max()))


def _narrow_images(n, shape, seed=0, spread=12):
    """uint8 images around mid-grey (128 ± spread): their Gaussian almost never reaches the [−1, 1] clamp, so
    sample moments are the fitted ones."""
    g = torch.Generator().manual_seed(seed)
    return (128 + torch.randint(-spread, spread + 1, (n, *shape), generator=g)).to(torch.uint8)


def _block_means(imgs_u8, s):
    """The authors' one_center.py downsample, by hand in float64: the mean of each s×s block of x / 127.5 − 1."""
    x = imgs_u8.double().numpy() / 127.5 - 1
    n, c, h, w = x.shape
    return x.reshape(n, c, h // s, s, w // s, s).mean(axis=(3, 5))


def test_downsampled_fit_is_eq6_on_block_means():
    imgs = _images(400, (3, 8, 8), seed=4)
    p0 = fit_downsampled(imgs, size=2, batch_size=64, jitter=1e-9)
    assert isinstance(p0, DownsampledGaussianInit) and p0.inner.shape == (3, 2, 2) and p0.scale == 4
    x = _block_means(imgs, 4).reshape(400, -1)
    _assert_fit(p0.inner, x)
    assert p0.inner.mean.dtype == torch.float32  # fitted in float64, stored float32 as the one Gaussian
    # μ at full size repeats each block mean over its 4×4 block (Fig. 7's picture of this p0)
    full = p0.mean.view(3, 8, 8)
    assert torch.equal(full, p0.inner.mean.view(3, 2, 2).repeat_interleave(4, 1).repeat_interleave(4, 2))


def test_downsampled_samples_are_blocks_whose_small_mean_is_the_fitted_mean():
    imgs = _narrow_images(3000, (3, 16, 16), seed=5)
    p0 = fit_downsampled(imgs, size=4)
    torch.manual_seed(0)
    x = p0.sample(4000)
    assert x.shape == (4000, 3, 16, 16) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    small = x[:, :, ::4, ::4]  # the top-left pixel of each 4×4 block
    # nearest upsampling: every pixel of a block equals its top-left pixel, exactly
    assert torch.equal(x, small.repeat_interleave(4, 2).repeat_interleave(4, 3))
    # the same draws as the inner 4-px Gaussian under the same seed, repeated (no other RNG use)
    torch.manual_seed(0)
    assert torch.equal(small, p0.inner.sample(4000))
    # the 4-px sample mean is the fitted mean: a z-test per pixel at the sample size
    d, n = small[0].numel(), small.shape[0]
    se = (torch.diagonal(p0.inner.covariance()).double() / n).sqrt()
    z = (small.flatten(1).double().mean(0) - p0.inner.mean.double()) / se
    assert float(z.abs().max()) < _z_crit(d), float(z.abs().max())


def test_downsampled_size_must_divide_the_side():
    with pytest.raises(ValueError, match="--p0-size 3"):
        fit_downsampled(_images(10, (3, 8, 8)), size=3)
    assert fit_downsampled(_images(10, (3, 8, 8)), size=8).scale == 1  # the one Gaussian, at full size


def test_mixture_fit_is_eq6_per_class_with_uniform_weights():
    imgs = _images(90, (3, 2, 2), seed=6)
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 10)  # unbalanced on purpose
    p0 = fit_mixture(imgs, labels, 3, "full", jitter=1e-9, batch_size=7)
    x = (imgs.double() / 127.5 - 1).flatten(1).numpy()
    for k in range(3):
        xk = x[labels.numpy() == k]
        _assert_fit(None, xk, p0.means[k], p0.factor[k] @ p0.factor[k].T)
    # JEMPP init_random: np.random.randint(n_classes), whatever the class sizes
    assert torch.equal(p0.weights, torch.full((3,), 1 / 3))
    # Σ_k w_k μ_k in fp32: w_k and μ_k stored, 3 products, 2 sums: 5 roundings of terms ≤ 1
    np.testing.assert_allclose(p0.mean.numpy(), np.mean([x[labels.numpy() == k].mean(0) for k in range(3)], 0),
                               **tolerance(ops=5))
    assert p0.meta["n"] == [50, 30, 10] and p0.means.dtype == p0.factor.dtype == torch.float32


def test_mixture_draws_follow_the_component_weights():
    """Components far apart and no spread: each sample names its component; counts z-tested against w."""
    w = torch.tensor([0.5, 0.3, 0.15, 0.05])
    means = torch.tensor([-0.9, -0.3, 0.3, 0.9])[:, None].expand(4, 12).contiguous()
    p0 = GaussianMixtureInit((3, 2, 2), means, w, "full", torch.zeros(4, 12, 12))
    n = 20000
    torch.manual_seed(1)
    x = p0.sample(n).flatten(1)
    k = torch.bucketize(x[:, 0].contiguous(), torch.tensor([-0.6, 0.0, 0.6]))
    assert torch.equal(x, means[k])
    counts = torch.bincount(k, minlength=4).double()
    z = (counts - n * w.double()) / (n * w.double() * (1 - w.double())).sqrt()
    assert float(z.abs().max()) < _z_crit(4), z


def test_mixture_samples_have_each_class_mean():
    imgs = _narrow_images(1200, (3, 4, 4), seed=7)
    labels = torch.arange(1200) % 3
    imgs[labels == 1] += 40  # classes apart: a draw's class is plain from its mean
    imgs[labels == 2] -= 40
    for form in ("full", "lowrank"):
        p0 = fit_mixture(imgs, labels, 3, form, rank=6)
        torch.manual_seed(2)
        x = p0.sample(6000).flatten(1).double()
        k = torch.cdist(x, p0.means.double()).argmin(1)
        for c in range(3):
            xc = x[k == c]
            var = torch.diagonal(p0.factor[c].double() @ p0.factor[c].double().T)
            if p0.diag_sqrt is not None:
                var = var + p0.diag_sqrt[c].double() ** 2
            z = (xc.mean(0) - p0.means[c].double()) / (var / len(xc)).sqrt()
            assert float(z.abs().max()) < _z_crit(3 * 48), (form, c, float(z.abs().max()))


def test_mixture_lowrank_pads_small_classes_and_one_class_is_the_one_gaussian():
    imgs = _images(60, (3, 4, 4), seed=8)
    labels = torch.tensor([0] * 57 + [1] * 3)  # class 1: 3 images, rank <= 2
    p0 = fit_mixture(imgs, labels, 2, "lowrank", rank=5)
    assert p0.factor.shape == (2, 48, 5) and p0.diag_sqrt.shape == (2, 48)
    assert torch.count_nonzero(p0.factor[1, :, 2:]) == 0 and torch.count_nonzero(p0.factor[1, :, :2]) > 0
    one = fit_mixture(imgs, torch.zeros(60, dtype=torch.long), 1, "full")
    ref = fit_gaussian(imgs, "full")
    assert torch.equal(one.means[0], ref.mean) and torch.equal(one.factor[0], ref.scale_tril)
    assert torch.equal(one.weights, torch.ones(1))


def test_mixture_needs_two_images_per_class():
    with pytest.raises(ValueError, match="--p0 gaussian-mixture: class 2 has 1 training image"):
        fit_mixture(_images(11), torch.tensor([0] * 5 + [1] * 5 + [2]), 3)
    with pytest.raises(ValueError, match="class 1 has 0"):
        fit_mixture(_images(10), torch.zeros(10, dtype=torch.long), 2)


@pytest.mark.parametrize("kind", ["gaussian-downsampled", "gaussian-mixture"])
def test_new_kinds_survive_a_weights_only_file_and_float64(kind, tmp_path):
    imgs, labels = _images(80, (3, 8, 8), seed=9), torch.arange(80) % 2
    p0 = fit_downsampled(imgs, 4, "full") if kind == "gaussian-downsampled" else fit_mixture(imgs, labels, 2,
                                                                                              "lowrank", rank=3)
    path = str(tmp_path / "p0.pt")
    atomic_save({"p0": p0.state_dict()}, path)
    q = p0_from_state_dict(safe_load(path)["p0"])  # weights_only=True: tensors and plain values only
    assert type(q) is type(p0) and q.kind == kind
    torch.manual_seed(3)
    with _LargestDraw() as draws:
        a = p0.sample(5)
    torch.manual_seed(3)
    assert torch.equal(a, q.sample(5))
    q.use_triton(torch.zeros(2, dtype=torch.int64))  # no fused kernel for these kinds: the plain draws stay
    torch.manual_seed(3)
    assert torch.equal(a, q.sample(5))
    d = q.to("cpu", torch.float64)  # the fast path's float64 reference copy draws the same numbers
    torch.manual_seed(3)
    with float64_draws():
        b = d.sample(5)
    assert b.dtype == torch.float64
    torch.testing.assert_close(b, a.double(), **_sample_tolerance(p0, draws.value))  # a's rounding only


def test_cache_key_holds_the_kind_and_the_size(tmp_path, capsys):
    data = ImageSet(_images(60, (3, 8, 8)), torch.arange(60) % 3, 3, "toy")
    path = str(tmp_path / "p0.pt")
    mtime = lambda: (tmp_path / "p0.pt").stat().st_mtime_ns  # noqa: E731
    a = load_or_fit_p0(data, "gaussian-downsampled", "auto", 10, path, size=4)
    assert isinstance(a, DownsampledGaussianInit) and a.inner.form == "full"  # auto: full at the 4-px fit
    t = mtime()
    b = load_or_fit_p0(data, "gaussian-downsampled", "auto", 10, path, size=4)
    assert mtime() == t and torch.equal(a.inner.mean, b.inner.mean)  # reused
    c = load_or_fit_p0(data, "gaussian-downsampled", "full", 10, path, size=2)
    assert c.inner.shape == (3, 2, 2) and mtime() != t  # another size: refitted
    m = load_or_fit_p0(data, "gaussian-mixture", "full", 10, path)
    assert isinstance(m, GaussianMixtureInit) and m.means.shape == (3, 192)
    g = load_or_fit_p0(data, "gaussian", "full", 10, path)  # a mixture cache is no --p0 gaussian cache
    assert isinstance(g, GaussianInit) and safe_load(path)["kind"] == "gaussian"
    assert isinstance(load_or_fit_p0(data, "gaussian-mixture", "full", 10, path), GaussianMixtureInit)
    one = ImageSet(data.images, torch.zeros(60, dtype=torch.long), 1, "toy1")
    assert load_or_fit_p0(one, "gaussian-mixture", "full", 10, None).means.shape == (1, 192)
    assert "one component" in capsys.readouterr().err
