"""Every cache fastebm reads is rebuilt when damaged, naming the file: the FID statistics cache of the evaluation
(its .npz and its .json; p0.pt is tested in test_p0.py / test_files.py)."""
import json
import os
import types

import numpy as np
import pytest
import torch

from fastebm.config.options import resolve
from fastebm.evaluation import EvalOptions, inception, metrics
from fastebm.evaluation.fid import real_statistics


@pytest.fixture
def stats(tmp_path, monkeypatch):
    """real_statistics of the digits' training images with a stand-in Inception (per-channel means and
    squares: 6 features), the cache under tmp_path; returns (call, counter of Inception passes)."""
    passes = []

    def features(model, images, *a, **k):
        passes.append(len(images))
        x = images.double().flatten(2)
        f = torch.cat([x.mean(2), (x ** 2).mean(2)], 1).numpy()
        return f, f

    monkeypatch.setattr(inception, "inception_outputs", features)
    run = types.SimpleNamespace(cfg=resolve(dict(dataset="digits", image_size=8)), device=torch.device("cpu"))
    opts = EvalOptions(stats_cache=str(tmp_path / "cache"), fid_split="train", random_inception=True)
    return (lambda: real_statistics(run, opts, None, "stand-in")), passes


def test_a_damaged_fid_statistics_cache_entry_is_named_and_rebuilt(stats, capsys):
    call, passes = stats
    (mu, sigma), n, cache, cached = call()
    assert not cached and n == 1437 and mu.shape == (6,) and sigma.shape == (6, 6) and passes == [1437]
    assert call()[3] is True and passes == [1437]  # the entry is read: no Inception pass
    size = os.path.getsize(cache)

    def write(path, mode, fn):
        with open(path, mode) as f:
            fn(f)

    damages = {  # what a full disk, a killed writer or a foreign file leaves there
        "npz cut short": lambda: write(cache, "r+b", lambda f: f.truncate(size // 2)),
        "npz empty": lambda: write(cache, "wb", lambda f: None),
        "npz of other arrays": lambda: write(cache, "wb", lambda f: np.savez(f, mu=np.zeros(6), sigma=np.eye(5))),
        "npz of NaN": lambda: write(cache, "wb", lambda f: np.savez(f, mu=np.full(6, np.nan), sigma=np.eye(6))),
        "json cut short": lambda: write(cache + ".json", "w", lambda f: f.write('{"n_real": 14')),
        "json without n_real": lambda: write(cache + ".json", "w", lambda f: f.write("{}")),
    }
    for what, damage in damages.items():
        capsys.readouterr()
        damage()
        (mu2, sigma2), n2, _, cached = call()
        err = capsys.readouterr().err
        assert not cached and n2 == n and np.array_equal(mu2, mu) and np.array_equal(sigma2, sigma), what
        assert f"FID statistics cache entry {cache} cannot be read" in err and "computing it again" in err, what
        assert len(err.strip().splitlines()) == 1, (what, err)
        assert call()[3] is True, what  # rewritten whole: read from the cache again
        with open(cache + ".json") as f:
            assert json.load(f)["n_real"] == n, what
    assert len(passes) == 1 + len(damages)
    assert not [f for f in os.listdir(os.path.dirname(cache)) if ".tmp-" in f]


def test_load_stats_names_a_damaged_file(tmp_path):
    path = str(tmp_path / "s.npz")
    metrics.save_stats(path, np.zeros(3), np.eye(3))
    assert [a.shape for a in metrics.load_stats(path)] == [(3,), (3, 3)]
    with open(path, "r+b") as f:
        f.truncate(40)
    with pytest.raises(ValueError, match=f"'{path}': not readable FID statistics \\(BadZipFile"):
        metrics.load_stats(path)
