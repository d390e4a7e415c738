"""The offline sample-quality measure (fastebm.evaluation.featurenet) and its evaluation task: the measure checked on
the data itself, on a deliberately broken training, and the feature network's file and cache."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import fid_eigh
from fastebm.config.options import resolve
from fastebm.data.datasets import load_dataset
from fastebm.eval import main
from fastebm.evaluation import featurenet as FF
from fastebm.evaluation import metrics as M
from fastebm.fastpath.numerics import U64
from fastebm.p0.gaussian import fit_gaussian
from fastebm.p0.uniform import UniformInit
from fastebm.run.trainer import Trainer, lr_at

pytestmark = pytest.mark.usefixtures("single_threaded")  # see tests/conftest.py

SIZE = 16  # the digits' content is 8×8: 16×16 keeps it at a quarter of 32×32's cost


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train", image_size=SIZE), load_dataset("digits", split="test", image_size=SIZE)


@pytest.fixture(scope="module")
def score(digits):
    """A feature network trained on the training split (6 epochs, ~3 s) and the test split's statistics."""
    train, test = digits
    net = FF.train_feature_net(train, epochs=6, test=test)
    assert net.meta["test_accuracy"] > 0.85  # a classifier worth its features (0.94 measured)
    return FF.FeatureScore(net, test.images)


def test_real_images_score_near_zero_p0_samples_far_and_noise_farther(digits, score):
    """Train split vs test split: near 0 (the floor real images reach); samples of the informative p0 (Eq. 6, a
    Gaussian fitted to the data): far; uniform noise: much farther. Measured 12 / 80 / 1900."""
    train, _ = digits
    torch.manual_seed(0)
    x0 = fit_gaussian(train.images, form="full").sample(500).clamp(-1, 1)
    noise = UniformInit(tuple(train.images.shape[1:])).sample(500)
    real, p0, uniform = score.fd(train.images), score.fd(x0), score.fd(noise)
    assert 0 <= real < 0.3 * p0 and p0 < 0.1 * uniform, (real, p0, uniform)
    # the test split against itself: 0 up to float64 rounding of the traces (measured -1.4e-12 of tr Σ = 463)
    assert score.fd(digits[1].images) == pytest.approx(0, abs=64 * U64 * np.trace(score.real_stats[1]))


def test_fd_is_the_frechet_distance_of_the_features(digits, score):
    """FeatureScore.fd = FID's formula (fastebm.evaluation.metrics.frechet_distance, pytorch-fid's algorithm, checked in
    tests/test_metrics.py) on np.mean / np.cov of the network's features, exactly; and the eigenvalue form of the
    same distance agrees in float64 up to the matrix square root's conditioning (ReLU features: nearly singular
    covariances)."""
    train, test = digits
    feats = lambda x: FF.feature_outputs(score.net, x)[0].double().numpy()  # noqa: E731
    a, b = feats(train.images[:400]), feats(test.images)
    stats = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    got = score.fd(train.images[:400])
    # not fp32 rounding: two float64 algorithms for the square root of a nearly singular matrix (1.5e-7 measured)
    assert got == M.frechet_distance(*stats) and got == pytest.approx(fid_eigh(*stats), rel=1e-5)
    assert np.array_equal(stats[2], score.real_stats[0]) and np.array_equal(stats[3], score.real_stats[1])


def test_classifiability(digits, score):
    train, _ = digits
    got = score.classifiability(train.images, train.labels)
    assert got["agreement"] == FF.accuracy(score.net, train.images, train.labels) > 0.9
    assert 0.1 <= got["confidence"] <= 1 and score.classifiability(train.images)["agreement"] is None
    wrong = score.classifiability(train.images, (train.labels + 1) % 10)["agreement"]
    assert wrong < 0.1


def _mebm(digits, tmp_path, broken: bool, iters: int = 150):
    """M-EBM K = 2 (WRN-10-1, batch 32, buffer 128) trained for ``iters`` iterations; ``broken``: the replay buffer
    is never written back (SGLD's negatives are dropped), the bug the measure must see."""
    train, test = digits
    cfg = resolve(dict(dataset="digits", image_size=SIZE, model="mebm", k=2, epochs=1, iters_per_epoch=iters,
                       buffer_size=128, progress=False, device="cpu", out=str(tmp_path / f"broken-{broken}")))
    tr = Trainer(cfg, train, test)
    if broken:
        tr.buffer.update = lambda idx, x: torch.ones(len(idx), dtype=torch.bool)
    start = tr.buffer.samples.clone()
    for it in range(iters):
        for g in tr.opt.param_groups:
            g["lr"] = lr_at(tr.cfg, it)
        tr.train_step(it)
    return tr, start


@pytest.mark.slow
def test_a_buffer_never_written_back_scores_clearly_worse(digits, score, tmp_path):
    """The same M-EBM training with the write-back of Algorithm 1 line 7 removed: its buffer stays p0's samples and
    scores as p0 does; the working one's buffer moves towards the data (each of its 128 chains continued ~37 times).
    Measured (150 iterations, seed 1, ~10 s each): 21 vs 47 (p0's samples: 47; at 60 iterations both were ~47)."""
    ok, start = _mebm(digits, tmp_path, broken=False)
    bad, bad_start = _mebm(digits, tmp_path, broken=True)
    assert torch.equal(bad.buffer.samples, bad_start) and torch.equal(start, bad_start)  # same seed, same p0 draws
    fd_ok, fd_bad = score.fd(ok.buffer.samples), score.fd(bad.buffer.samples)
    assert fd_ok < 0.6 * fd_bad and fd_bad == score.fd(start), (fd_ok, fd_bad)


def test_feature_net_file_round_trip_and_damage(digits, score, tmp_path):
    train, _ = digits
    path = FF.save_feature_net(score.net, str(tmp_path / "features.pt"))
    net = FF.load_feature_net(path)
    x = train.images[:50]
    assert torch.equal(FF.feature_outputs(net, x)[0], FF.feature_outputs(score.net, x)[0])
    assert net.meta["test_accuracy"] == score.net.meta["test_accuracy"]
    with open(path, "r+b") as f:  # cut short
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(FF.FeatureNetError, match="cannot be read") as e:
        FF.load_feature_net(path)
    assert "\n" not in str(e.value)
    torch.save({"format": "something else"}, path)
    with pytest.raises(FF.FeatureNetError, match="expected format"):
        FF.load_feature_net(path)
    with pytest.raises(FF.FeatureNetError, match="found none"):
        FF.load_feature_net(str(tmp_path / "none.pt"))


def test_a_file_that_would_run_code_is_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"format": FF.FORMAT, "config": os.system}, path)  # a pickled callable: weights_only refuses it
    with pytest.raises(FF.FeatureNetError, match="cannot be read"):
        FF.load_feature_net(path)


def test_the_cache_is_rebuilt_when_damaged(digits, score, tmp_path, monkeypatch):
    train, test = digits
    trained = []
    monkeypatch.setattr(FF, "train_feature_net", lambda data, **kw: trained.append(1) or score.net)
    path, said = str(tmp_path / "cache.pt"), []
    net, cached = FF.cached_feature_net(path, train, "key-1", say=said.append)
    assert not cached and trained == [1] and os.path.isfile(path)
    net, cached = FF.cached_feature_net(path, train, "key-1", say=said.append)
    assert cached and trained == [1] and said == []
    with open(path, "wb") as f:
        f.write(b"not a torch file")
    net, cached = FF.cached_feature_net(path, train, "key-1", say=said.append)
    assert not cached and trained == [1, 1] and len(said) == 1 and "training it again" in said[0]
    assert FF.cached_feature_net(path, train, "key-2", say=said.append)[1] is False  # another key: trained anew


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """An M-JEM checkpoint at 16×16 (WRN-10-1, K = 1, 2 iterations, buffer 64)."""
    out = tmp_path_factory.mktemp("run")
    Trainer(resolve(dict(dataset="digits", image_size=SIZE, depth=10, width=1, k=1, epochs=1, iters_per_epoch=2,
                         buffer_size=64, batch_size=16, cls_batch_size=16, warmup_iters=1, decay_epochs=[],
                         progress=False, eval_every=1000, sample_every=1000, device="cpu", model="mjem",
                         out=str(out)))).fit()
    return str(out / "ckpt.pt")


def test_eval_task_feature_fd_trains_writes_and_reads_the_network(tiny_ckpt, score, tmp_path, monkeypatch, capsys):
    """``--task feature-fd --features FILE``: the first call trains the network and writes FILE, the second reads it
    and gives the same numbers; a damaged FILE is a one-line error (exit 2), never silently replaced."""
    monkeypatch.setattr(FF, "train_feature_net", lambda data, **kw: score.net)  # training itself: tests above
    feats = str(tmp_path / "features.pt")
    argv = ["--ckpt", tiny_ckpt, "--task", "feature-fd", "--features", feats, "--device", "cpu", "--threads", "1"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    first = json.loads(capsys.readouterr().out)["feature-fd"]
    assert os.path.isfile(feats) and first["features_read"] is False
    assert first["keep_ratio"] == 0.9 and first["n_fake"] <= 64 == first["n_buffer"]  # the fid task's images
    for key in ("feature_fd", "feature_fd_train_split", "agreement", "confidence", "e_pos", "e_neg", "energy_gap"):
        assert isinstance(first[key], float), key
    assert "not FID" in first["measure"] and first["real_split"] == "test" and first["n_real"] == 360
    assert main(argv + ["--out", str(tmp_path / "b"), "--source", "chains", "--n-samples", "40"]) == 0
    chains = json.loads(capsys.readouterr().out)["feature-fd"]
    assert chains["features_read"] is True and chains["n_fake"] == 40 and chains["source"] == "chains"
    assert chains["feature_fd_train_split"] == first["feature_fd_train_split"]  # one network, one test split
    with open(os.path.join(tmp_path, "a", "feature-fd.json")) as f:
        assert json.load(f) == first
    with open(feats, "r+b") as f:
        f.truncate(100)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("python -m fastebm.eval: error: --features: ")


def test_eval_task_feature_fd_caches_a_network_per_training_split(tiny_ckpt, score, tmp_path, monkeypatch, capsys):
    trained = []
    monkeypatch.setattr(FF, "train_feature_net", lambda data, **kw: trained.append(len(data)) or score.net)
    argv = ["--ckpt", tiny_ckpt, "--task", "feature-fd", "--stats-cache", str(tmp_path / "cache"), "--device", "cpu",
            "--out", str(tmp_path / "e")]
    assert main(argv) == 0
    a = json.loads(capsys.readouterr().out)["feature-fd"]
    assert main(argv) == 0
    b = json.loads(capsys.readouterr().out)["feature-fd"]
    assert trained == [1437] and a["features_read"] is False and b["features_read"] is True
    assert a["features"] == b["features"] and a["features"].startswith(str(tmp_path / "cache"))
