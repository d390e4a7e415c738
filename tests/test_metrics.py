"""Tests of fastebm.evaluation.metrics: every metric equals its reference implementation on the same inputs."""
import copy
import math
import os
import warnings

import numpy as np
import pytest
import torch

from fastebm.evaluation import inception as I  # noqa: E741
from fastebm.evaluation import metrics as M
from fastebm.fastpath.numerics import agree, gamma

pytestmark = pytest.mark.usefixtures("single_threaded")  # Inception and 2048² covariances: see conftest.py


# --------------------------------------------------------------------------------------------------
# Inception Score: the reference formula and torch-fidelity
# --------------------------------------------------------------------------------------------------
def is_reference(pool, w, splits):
    """openai/improved-gan inception_score.py: softmax(pool3 · W) (the MatMul, no bias), no shuffle."""
    logits = pool @ w.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores, n = [], len(p)
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return np.mean(scores), np.std(scores)


def test_is_equals_reference_formula_on_fixed_features_and_weights():
    rng = np.random.default_rng(0)
    pool, w = rng.gamma(1.0, size=(23, 64)), rng.normal(size=(12, 64)) * 0.3
    got = M.inception_score(pool @ w.T, splits=5, shuffle=False)  # 23 rows: splits of 4, 5, 4, 5, 5
    np.testing.assert_allclose(got, is_reference(pool, w, 5), rtol=1e-10)
    perm = np.random.RandomState(7).permutation(23)  # shuffle = the reference on permuted rows
    np.testing.assert_allclose(M.inception_score(pool @ w.T, 5, True, 7), is_reference(pool[perm], w, 5), rtol=1e-10)
    assert got[0] > 1.2  # the logits matter
    eye = np.eye(10)[np.arange(100) % 10] * 50.0  # near one-hot, evenly spread: IS -> 10
    assert M.inception_score(eye, splits=1)[0] == pytest.approx(10, rel=1e-12)  # float64; 10 − O(e^-50) exactly
    with pytest.raises(ValueError, match="splits"):
        M.inception_score(pool, splits=30)


def _fp32_dot_bound(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Higham's bound on an fp32 a @ w.T against exact: γ_n |a| @ |w|.T, n the length of the dot products."""
    return gamma(w.shape[1]) * (np.abs(a) @ np.abs(w).T)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """Random FID-Inception weights with a large fc (so IS is well above 1) and a non-zero bias, in a file."""
    state = I.random_inception_state_dict(0)
    state["fc.weight"] = state["fc.weight"] * 40
    path = str(tmp_path_factory.mktemp("incep") / "weights.pth")
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(12, 3, 4, 4, generator=g), size=32, mode="bilinear")
    return (smooth * 255).round().to(torch.uint8)  # (12, 3, 32, 32) uint8


@pytest.fixture(scope="module")
def ours(inception_file, images):
    model = I.load_inception(inception_file)
    return model, I.inception_outputs(model, images.float() / 127.5 - 1, batch_size=6)


def test_inception_logits_are_unbiased(ours):
    model, (pool, logits) = ours
    w, b = model.fc.weight.double().numpy(), model.fc.bias.double().numpy()
    assert np.abs(b).max() > 0.5
    assert np.all(np.abs(logits - pool @ w.T) <= _fp32_dot_bound(pool, w))
    assert np.abs(logits - (pool @ w.T + b)).max() > 0.5


def test_is_equals_torch_fidelity_with_the_same_weights_file(inception_file, images, ours):
    pytest.importorskip("torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_isc import isc_features_to_metric

    tf = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=inception_file)
    pool_tf, logits_tf = tf(images)
    ref = isc_features_to_metric(logits_tf, splits=3, shuffle=True, rng_seed=5)
    assert ref["inception_score_mean"] > 1.1
    # our unbiased logits of torch-fidelity's pool3 features are its logits_unbiased (its fp32 dot products)
    model, (pool, _) = ours
    w, pool_tf64 = model.fc.weight.double().numpy(), pool_tf.double().numpy()
    assert np.all(np.abs(pool_tf64 @ w.T - logits_tf.double().numpy()) <= _fp32_dot_bound(pool_tf64, w))
    # and our IS of them is torch-fidelity's: both in float64 from the same numbers, summed in other orders
    mean, std = M.inception_score(logits_tf, splits=3, seed=5)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-10)  # a spread of 3 scores: less cancels
    # end to end, the two pipelines differ only in resizing and input scaling (pytorch-fid: u/127.5 - 1,
    # bilinear; torch-fidelity: (u - 128)/128, TF1 bilinear), so pool3 features agree to a few per cent
    assert np.abs(pool - pool_tf.double().numpy()).max() < 0.1 * np.abs(pool).max()


def test_inception_outputs_checks_and_batching(ours, images):
    model, (pool, logits) = ours
    assert pool.shape == (12, 2048) and logits.shape == (12, 1008) and pool.dtype == np.float64
    pool3, _ = I.inception_outputs(model, images[:3].float() / 127.5 - 1, batch_size=2)
    # batches of 2 + 1 = the batch of 6: judged against float64, the batch of 6 the yardstick (numerics.agree)
    with torch.inference_mode():
        x64 = images[:3].double() / 127.5 - 1
        pool64 = copy.deepcopy(model).double().eval()(((x64 + 1) / 2).clamp(0, 1))[0]  # as inception_outputs
    result, = agree("pool3", torch.from_numpy(pool3), torch.from_numpy(pool[:3]), pool64, per_sample=True)
    assert result.ok, str(result)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        I.inception_outputs(model, images.float(), batch_size=2)
    with pytest.raises(ValueError, match="uint8"):
        I.inception_outputs(model, images, batch_size=2)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        I.inception_outputs(model, torch.zeros(2, 1, 32, 32))


def test_missing_weights_raise_file_not_found(tmp_path, monkeypatch):
    import pytorch_fid.inception as pfi

    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as exc:
        I.load_inception()
    assert os.path.join(str(tmp_path / "hub"), "checkpoints", I.FID_WEIGHTS_FILENAME) in str(exc.value)
    assert "Nothing is downloaded" in str(exc.value) and I.FID_WEIGHTS_URL in str(exc.value)
    given = str(tmp_path / "mine.pth")
    with pytest.raises(FileNotFoundError, match=f"file '{given}' not found"):
        I.load_inception(given)  # the path the user gave, not the default cache
    with pytest.raises(ValueError, match="random_init"):
        I.load_inception(weights_path="x.pth", random_init=True)


# --------------------------------------------------------------------------------------------------
# FID: pytorch-fid's calculate_frechet_distance
# --------------------------------------------------------------------------------------------------
def _scipy_accepts_disp() -> bool:
    import inspect

    from scipy import linalg

    return "disp" in inspect.signature(linalg.sqrtm).parameters


@pytest.mark.skipif(not _scipy_accepts_disp(), reason="SciPy >= 1.18: pytorch-fid's own function cannot run here")
def test_fid_equals_pytorch_fid_on_the_same_statistics(tmp_path):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) + 0.5
    s1, s2 = M.activation_statistics(a), M.activation_statistics(b)
    np.testing.assert_allclose(s1[1], np.cov(a, rowvar=False), rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = calculate_frechet_distance(*s1, *s2)
    assert M.frechet_distance(*s1, *s2) == pytest.approx(ref, rel=1e-12) and ref > 1
    # float64: tr Σ1 + tr Σ2 − 2 tr √(Σ1 Σ2) cancels to rounding
    assert M.frechet_distance(*s1, *s1) == pytest.approx(0, abs=1e-12 * float(np.trace(s1[1])))
    path = M.save_stats(str(tmp_path / "s.npz"), *s1)
    np.testing.assert_array_equal(M.load_stats(path)[1], s1[1])
    with pytest.raises(FileNotFoundError):
        M.load_stats(str(tmp_path / "none.npz"))


def test_fid_runs_on_a_scipy_without_disp(monkeypatch):
    """SciPy 1.18 removed sqrtm's ``disp`` (pytorch-fid 0.3.0 still passes it): FID must not depend on it."""
    from scipy import linalg

    from conftest import fid_eigh

    real = linalg.sqrtm

    def sqrtm_1_18(a, *, blocksize=64):  # the SciPy 1.18 signature: no disp, the matrix only
        out = real(a)
        return out[0] if isinstance(out, tuple) else out

    monkeypatch.setattr(linalg, "sqrtm", sqrtm_1_18)
    rng = np.random.default_rng(3)
    s1 = M.activation_statistics(rng.normal(size=(300, 20)))
    s2 = M.activation_statistics(rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)))
    assert M.frechet_distance(*s1, *s2) == pytest.approx(fid_eigh(*s1, *s2), rel=1e-10)  # float64: κ(Σ) U64 ≈ 1e-12


def test_fid_of_few_samples_is_regularised_with_a_warning():
    rng = np.random.default_rng(2)
    s1, s2 = M.activation_statistics(rng.normal(size=(5, 40))), M.activation_statistics(rng.normal(size=(6, 40)))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        d = M.frechet_distance(*s1, *s2)
    assert math.isfinite(d) and d > 0
    if rec:  # pytorch-fid raised "Imaginary component": the eps-regularised call, announced
        assert any("eps" in str(w.message) for w in rec)


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
    np.testing.assert_allclose(bins["confidence"][2:], [0.525, 0.70, 0.875], rtol=0, atol=1e-12)
    np.testing.assert_allclose(bins["accuracy"][2:], [1.0, 0.0, 0.5], rtol=0, atol=1e-12)
    assert np.isnan(bins["confidence"][:2]).all() and np.isnan(bins["accuracy"][:2]).all()
    np.testing.assert_array_equal(bins["edges"], np.linspace(0, 1, 6))
    # torch inputs give the same
    ece_t, _ = M.expected_calibration_error(torch.tensor(probs), torch.tensor(labels), n_bins=5)
    assert ece_t == pytest.approx(ece, abs=1e-12)

    from PIL import Image

    out = M.reliability_diagram(bins, str(tmp_path / "reliability.png"), title="toy")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100


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


def test_ece_equals_a_brute_force_count():
    """ECE against a per-sample loop over bins (Guo et al. 2017's definition) on random predictions."""
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(4, 0.5), size=500)
    labels = rng.integers(0, 4, size=500)
    ece, bins = M.expected_calibration_error(probs, labels, n_bins=10)
    total = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        members = [i for i in range(500) if lo < probs[i].max() <= hi]
        if members:
            acc = sum(probs[i].argmax() == labels[i] for i in members) / len(members)
            conf = sum(probs[i].max() for i in members) / len(members)
            total += len(members) / 500 * abs(acc - conf)
            assert bins["count"][b] == len(members)
    assert ece == pytest.approx(total, abs=1e-12) and ece > 0.05


def test_the_fast_fid_of_the_plumbing_tests_equals_pytorch_fid():
    from conftest import fid_eigh

    rng = np.random.default_rng(4)
    s1 = M.activation_statistics(rng.normal(size=(300, 20)))
    s2 = M.activation_statistics(rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)))
    assert fid_eigh(*s1, *s2) == pytest.approx(M.frechet_distance(*s1, *s2), rel=1e-10)  # float64: κ(Σ) U64 ≈ 1e-12
