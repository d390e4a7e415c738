"""Tests of fastebm.metrics (CPU only; the whole file runs in well under a minute)."""
import math
import os
import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from fastebm import metrics as M



# One BLAS thread and one torch thread while this file runs: on a busy 2-core machine OpenBLAS's eigh
# of a 2048 x 2048 covariance was seen to take 5-20 s instead of ~1 s.
pytestmark = pytest.mark.usefixtures("single_threaded")


# --------------------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------------------
def fd_commuting(mu1, a, mu2, b):
    """Closed form for covariances with common eigenvectors and eigenvalues a, b."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def fd_symmetric_sqrtm(mu1, s1, mu2, s2):
    """tr sqrt(s1 s2) = tr sqrt(s1^1/2 s2 s1^1/2) (similar matrices), with scipy's sqrtm, float64."""
    r1 = linalg.sqrtm(s1).real
    inner = linalg.sqrtm(r1 @ s2 @ r1).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(inner))


def random_spd(rng, f, n=None):
    x = rng.normal(size=(n or 4 * f, f)) @ rng.normal(size=(f, f))
    return np.cov(x, rowvar=False)


# --------------------------------------------------------------------------------------------------
# Fréchet distance and activation statistics
# --------------------------------------------------------------------------------------------------
def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    f = 16
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    a, b = rng.uniform(0.1, 3.0, f), rng.uniform(0.1, 3.0, f)
    got = M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert type(got) is float
    assert got == pytest.approx(fd_commuting(mu1, a, mu2, b), rel=1e-10)


def test_frechet_commuting_closed_form():
    rng = np.random.default_rng(1)
    f = 12
    q, _ = np.linalg.qr(rng.normal(size=(f, f)))
    a, b = rng.uniform(0.05, 4.0, f), rng.uniform(0.05, 4.0, f)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fd_commuting(mu1, a, mu2, b), rel=1e-9)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")  # pytorch-fid's call
def test_frechet_general_against_scipy_reference_and_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(2)
    f = 32
    s1, s2 = random_spd(rng, f), random_spd(rng, f)
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-conditioned case must not warn
        got = M.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(fd_symmetric_sqrtm(mu1, s1, mu2, s2), rel=1e-8)
    assert got == pytest.approx(float(calculate_frechet_distance(mu1, s1, mu2, s2)), rel=1e-10)
    # float32 torch inputs are accepted and computed in float64
    got32 = M.frechet_distance(*(torch.as_tensor(v, dtype=torch.float32) for v in (mu1, s1, mu2, s2)))
    assert got32 == pytest.approx(got, rel=1e-4)


def test_frechet_identical_is_zero():
    rng = np.random.default_rng(3)
    f = 24
    s = random_spd(rng, f)
    mu = rng.normal(size=f)
    d = M.frechet_distance(mu, s, mu, s)
    assert 0.0 <= d < 1e-6 * np.trace(s)


def test_frechet_rank_deficient_warns_and_is_real():
    rng = np.random.default_rng(4)
    f, n = 40, 10  # N < F: both covariances have rank <= 9
    x, y = rng.normal(size=(n, f)), rng.normal(size=(n, f)) * 2 + 0.3
    with pytest.warns(UserWarning, match="rank"):
        mu1, s1 = M.activation_statistics(x)
    with pytest.warns(UserWarning):
        mu2, s2 = M.activation_statistics(y)
    with pytest.warns(UserWarning, match="singular"):
        d = M.frechet_distance(mu1, s1, mu2, s2)
    assert type(d) is float and math.isfinite(d) and d > 0
    # it is the distance between the eps-regularised Gaussians
    eye = np.eye(f) * 1e-6
    assert d == pytest.approx(fd_symmetric_sqrtm(mu1, s1 + eye, mu2, s2 + eye), rel=1e-6)
    with pytest.warns(UserWarning, match="singular"):
        d0 = M.frechet_distance(mu1, s1, mu1, s1)
    assert type(d0) is float and 0.0 <= d0 < 1e-6 * np.trace(s1)


@pytest.mark.parametrize("broken", ["complex", "nan"])
def test_frechet_bad_sqrtm_warns_and_regularises(monkeypatch, broken):
    # a full-rank case whose sqrtm comes back with an imaginary part / non-finite entries
    rng = np.random.default_rng(7)
    f = 10
    s1, s2 = random_spd(rng, f), random_spd(rng, f)
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    real_sqrtm = M._sqrtm

    def bad_sqrtm(a):
        out = real_sqrtm(a).astype(np.complex128)
        if broken == "complex":
            return out + 1e-2j
        out[0, 0] = np.nan
        return out

    monkeypatch.setattr(M, "_sqrtm", bad_sqrtm)
    match = "imaginary part" if broken == "complex" else "non-finite"
    with pytest.warns(UserWarning, match=match):
        d = M.frechet_distance(mu1, s1, mu2, s2, eps=1e-6)
    assert type(d) is float
    eye = np.eye(f) * 1e-6
    assert d == pytest.approx(fd_symmetric_sqrtm(mu1, s1 + eye, mu2, s2 + eye), rel=1e-9)


def test_frechet_bad_input():
    f = 4
    mu, s = np.zeros(f), np.eye(f)
    with pytest.raises(ValueError, match="shape"):
        M.frechet_distance(mu, s, np.zeros(f + 1), np.eye(f + 1))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        M.frechet_distance(mu, np.eye(3), mu, s)
    bad = np.eye(f)
    bad[0, 1] = 0.5
    with pytest.raises(ValueError, match="symmetric"):
        M.frechet_distance(mu, bad, mu, s)
    with pytest.raises(ValueError, match="finite"):
        M.frechet_distance(np.full(f, np.nan), s, mu, s)
    with pytest.raises(ValueError, match="semi-definite"):
        M.frechet_distance(mu, -np.eye(f), mu, s)


def test_activation_statistics():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    mu, sigma = M.activation_statistics(torch.from_numpy(x))
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert mu.shape == (6,) and sigma.shape == (6, 6)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        M.activation_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="at least 2"):
        M.activation_statistics(np.zeros((1, 3)))


# --------------------------------------------------------------------------------------------------
# Inception pipeline (random weights; real CIFAR-10 images)
# --------------------------------------------------------------------------------------------------
def _cifar_images(root, n):
    from torchvision.io import read_image

    test_dir = os.path.join(root, "test")
    classes = sorted(os.listdir(test_dir))
    imgs = []
    for i in range(n):  # spread over the classes: image i // len(classes) of class i % len(classes)
        cls = classes[i % len(classes)]
        imgs.append(read_image(os.path.join(test_dir, cls, f"{i // len(classes):04d}.jpg")))
    x = torch.stack(imgs)  # uint8 (n, 3, 32, 32) in [0, 255]
    return x


@pytest.fixture(scope="module")
def cifar_uint8(cifar_root):
    return _cifar_images(cifar_root, 16)


@pytest.fixture(scope="module")
def cifar(cifar_uint8):
    return cifar_uint8.float() / 127.5 - 1.0


@pytest.fixture(scope="module")
def rand_inception():
    return M.load_inception(random_init=True, device="cpu", seed=0)


@pytest.fixture(scope="module")
def outputs(rand_inception, cifar):
    return M.inception_outputs(rand_inception, cifar, batch_size=8)


def test_inception_outputs_shapes_and_probs(outputs, cifar):
    pool, probs = outputs
    assert cifar.shape == (16, 3, 32, 32) and cifar.min() >= -1 and cifar.max() <= 1
    assert pool.shape == (16, 2048) and probs.shape == (16, 1008)
    assert pool.dtype == np.float64 and probs.dtype == np.float64
    assert np.all(np.isfinite(pool)) and np.all(np.isfinite(probs))
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    assert pool.std(axis=0).max() > 0  # features depend on the image


def test_inception_outputs_batching_and_single_conversion(rand_inception, cifar, outputs):
    pool, probs = outputs
    pool3, probs3 = M.inception_outputs(rand_inception, cifar[:3], batch_size=2)  # batches 2 + 1
    np.testing.assert_allclose(pool3, pool[:3], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probs3, probs[:3], rtol=1e-4, atol=1e-9)
    # the module receives [0, 1] images, as pytorch-fid's InceptionV3(normalize_input=True) expects
    with torch.no_grad():
        direct_pool = rand_inception.inception((cifar[:1] + 1) / 2)[0].flatten(1).double().numpy()
    np.testing.assert_allclose(pool[:1], direct_pool, rtol=1e-4, atol=1e-6)


def test_inception_input_range_checks(rand_inception, cifar_uint8):
    with pytest.raises(ValueError, match=r"\[-1, 1\].*\[0, 255\]"):
        M.inception_outputs(rand_inception, cifar_uint8[:2].float(), batch_size=2)
    with pytest.raises(ValueError, match="uint8"):
        M.inception_outputs(rand_inception, cifar_uint8[:2], batch_size=2)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        M.inception_outputs(rand_inception, torch.zeros(2, 1, 32, 32), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        M.inception_outputs(rand_inception, torch.zeros(2, 3, 32, 32), batch_size=0)
    with pytest.warns(UserWarning, match="2 \\* x - 1"):  # [0, 1] images pass but are flagged
        M.inception_outputs(rand_inception, cifar_uint8[:1].float() / 255.0, batch_size=1)


def test_load_inception_from_file_matches_random_init(tmp_path, rand_inception, cifar):
    path = tmp_path / M.FID_WEIGHTS_FILENAME
    torch.save(M._random_fid_state_dict(0), path)
    model = M.load_inception(weights_path=str(path))
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    for (k, v), (k2, v2) in zip(model.state_dict().items(), rand_inception.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    # the default location is torch hub's checkpoints folder
    os.makedirs(tmp_path / "hub" / "checkpoints")
    os.replace(path, tmp_path / "hub" / "checkpoints" / M.FID_WEIGHTS_FILENAME)
    orig = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        assert M.default_inception_weights_path() == str(tmp_path / "hub" / "checkpoints" / M.FID_WEIGHTS_FILENAME)
        M.load_inception()
    finally:
        torch.hub.set_dir(orig)


def test_missing_weights_raise_file_not_found(tmp_path, monkeypatch):
    import pytorch_fid.inception as pfi

    def no_download(*args, **kwargs):
        raise AssertionError("load_inception tried to download")

    monkeypatch.setattr(pfi, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = os.path.join(str(tmp_path / "hub"), "checkpoints", M.FID_WEIGHTS_FILENAME)
    with pytest.raises(FileNotFoundError) as exc:
        M.load_inception()
    assert expected in str(exc.value) and "weights_path" in str(exc.value)
    missing = tmp_path / "nowhere" / "w.pth"
    with pytest.raises(FileNotFoundError) as exc:
        M.load_inception(weights_path=str(missing))
    assert str(missing) in str(exc.value) and expected in str(exc.value)
    with pytest.raises(ValueError, match="random_init"):
        M.load_inception(weights_path=str(missing), random_init=True)
    assert pfi.load_state_dict_from_url is no_download  # hook restored after a failed build


def test_fid_end_to_end_and_stats_cache(tmp_path, rand_inception, cifar, outputs):
    pool, _ = outputs
    with pytest.warns(UserWarning, match="rank"):  # 8 samples for 2048 features
        mu, sigma = M.activation_statistics(pool[:8])
    cache = M.save_stats(tmp_path / "cache" / "cifar10_test.npz", mu, sigma)
    mu2, sigma2 = M.load_stats(cache)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        same = M.compute_fid(cache, cifar[:8], rand_inception, batch_size=8)
        res = M.fid_and_inception_score(cache, cifar[8:14], rand_inception, batch_size=6, splits=2)
    assert type(same) is float and math.isfinite(same)
    assert 0.0 <= same < 1e-6 * np.trace(sigma)
    assert set(res) == {"fid", "is_mean", "is_std"}
    assert math.isfinite(res["fid"]) and res["fid"] >= 0 and res["is_mean"] >= 1.0


def test_stats_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        M.load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        M.load_stats(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="shape"):
        M.save_stats(tmp_path / "x.npz", np.zeros(3), np.eye(2))


# --------------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------------
def is_reference(p, splits):
    """Salimans et al.'s reference computation (no shuffling; split i = [i*N//splits, (i+1)*N//splits))."""
    scores = []
    n = p.shape[0]
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return np.mean(scores), np.std(scores)


def test_is_uniform_is_one():
    mean, std = M.inception_score(np.full((50, 10), 0.1), splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_is_one_hot_evenly_spread_is_num_classes():
    c = 10
    probs = np.eye(c)[np.arange(100) % c]  # sample i is class i % 10
    mean, std = M.inception_score(probs, splits=1)
    assert mean == pytest.approx(c, rel=1e-12) and std == 0.0
    # without shuffling every split of 10 consecutive samples holds each class once
    mean, std = M.inception_score(probs, splits=10, shuffle=False)
    assert mean == pytest.approx(c, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    # shuffled splits hold uneven class mixes: the score can only go down
    mean_s, _ = M.inception_score(probs, splits=10, shuffle=True, seed=0)
    assert 1.0 < mean_s < c


def test_is_splits_and_shuffle():
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.full(7, 0.3), size=23) + 1e-12
    p /= p.sum(1, keepdims=True)
    # N = 23 not divisible by 5: splits of sizes 4, 5, 4, 5, 5 as in the reference code
    got = M.inception_score(p, splits=5, shuffle=False)
    np.testing.assert_allclose(got, is_reference(p, 5), rtol=1e-10)
    # shuffling = the reference on the permuted samples, deterministic given the seed
    perm = np.random.default_rng(123).permutation(23)
    np.testing.assert_allclose(M.inception_score(p, splits=5, seed=123), is_reference(p[perm], 5), rtol=1e-10)
    assert M.inception_score(p, splits=5, seed=123) == M.inception_score(p, splits=5, seed=123)
    assert M.inception_score(p, splits=5, seed=123) != M.inception_score(p, splits=5, seed=124)
    assert M.inception_score(p, splits=5, seed=123) != got
    with pytest.raises(ValueError, match="splits=30 samples, got N=23"):
        M.inception_score(p, splits=30)
    with pytest.raises(ValueError, match="softmax"):
        M.inception_score(np.log(p), splits=5)


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------
def test_ece_hand_computed(tmp_path):
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # y=0: conf .90, correct -> bin 5 (0.8, 1.0]
            [0.85, 0.10, 0.05],  # y=2: conf .85, wrong   -> bin 5
            [0.70, 0.20, 0.10],  # y=1: conf .70, wrong   -> bin 4 (0.6, 0.8]
            [0.30, 0.55, 0.15],  # y=1: conf .55, correct -> bin 3 (0.4, 0.6]
            [0.50, 0.30, 0.20],  # y=0: conf .50, correct -> bin 3
        ]
    )
    labels = np.array([0, 2, 1, 1, 0])
    # bin 5: 2 samples, conf (.90+.85)/2 = .875, acc 1/2 = .5  -> 2/5 * |.5 - .875| = .4 * .375 = .15
    # bin 4: 1 sample,  conf .70,                acc 0       -> 1/5 * .70           = .14
    # bin 3: 2 samples, conf (.55+.50)/2 = .525, acc 1       -> 2/5 * .475          = .19
    # ECE = .15 + .14 + .19 = .48
    ece, bins = M.expected_calibration_error(probs, labels, n_bins=5)
    assert ece == pytest.approx(0.48, abs=1e-12)
    np.testing.assert_array_equal(bins["count"], [0, 0, 2, 1, 2])
    np.testing.assert_allclose(bins["confidence"][2:], [0.525, 0.70, 0.875], atol=1e-12)
    np.testing.assert_allclose(bins["accuracy"][2:], [1.0, 0.0, 0.5], atol=1e-12)
    assert np.isnan(bins["confidence"][:2]).all() and np.isnan(bins["accuracy"][:2]).all()
    np.testing.assert_allclose(bins["edges"], np.linspace(0, 1, 6))
    # torch inputs give the same
    ece_t, _ = M.expected_calibration_error(torch.tensor(probs), torch.tensor(labels), n_bins=5)
    assert ece_t == pytest.approx(ece, abs=1e-12)

    from PIL import Image

    out = M.reliability_diagram(bins, tmp_path / "plots" / "reliability.png", title="toy")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (480, 480)


def test_ece_perfectly_calibrated_is_zero():
    # 10 samples at confidence .7 with 7 correct, 10 at .9 with 9 correct
    probs = np.array([[0.7, 0.3]] * 10 + [[0.1, 0.9]] * 10)
    labels = np.array([0] * 7 + [1] * 3 + [1] * 9 + [0] * 1)
    ece, bins = M.expected_calibration_error(probs, labels)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert bins["count"].sum() == 20 and len(bins["count"]) == 15


def test_ece_bad_input():
    probs = np.array([[0.6, 0.4], [0.2, 0.8]])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        M.expected_calibration_error(probs, np.array([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        M.expected_calibration_error(probs, np.array([0]))
    with pytest.raises(ValueError, match="softmax"):
        M.expected_calibration_error(np.array([[2.0, -1.0], [0.5, 0.1]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="keys"):
        M.reliability_diagram({"count": [1]}, "unused.png")


# --------------------------------------------------------------------------------------------------
# AUROC (in-distribution = positive class)
# --------------------------------------------------------------------------------------------------
def test_auroc_hand_computed():
    assert M.auroc([3.0, 4.0, 5.0], [0.0, 1.0, 2.0]) == 1.0  # every in-score above every out-score
    assert M.auroc([0.0, 1.0, 2.0], [3.0, 4.0, 5.0]) == 0.0  # reversed
    # 3 vs 3 with ties: in = {3, 2, 1}, out = {2, 1, 0}; count pairs (in > out) + 0.5 (tie):
    #   in 3: > 2, > 1, > 0            -> 3
    #   in 2: = 2 (.5), > 1, > 0       -> 2.5
    #   in 1: < 2, = 1 (.5), > 0       -> 1.5
    #   AUROC = (3 + 2.5 + 1.5) / 9 = 7/9
    assert M.auroc(np.array([3, 2, 1]), torch.tensor([2.0, 1.0, 0.0])) == pytest.approx(7 / 9, abs=1e-12)
    assert M.auroc([1.0, 1.0], [1.0]) == pytest.approx(0.5)  # all tied


def test_auroc_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        M.auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        M.auroc([1.0, float("nan")], [0.0])
    with pytest.raises(ValueError, match="1-D"):
        M.auroc(np.zeros((2, 2)), [0.0])
