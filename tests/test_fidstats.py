"""The in-training FID reference as the authors': which images (CIFAR-10 train + test, ImageNet 32×32 val), their
statistics streamed from the uint8 images (equal to pytorch-fid's mean / covariance of the whole feature matrix,
and no float copy of the set: peak memory measured on a synthetic Downsampled-ImageNet folder)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastebm.config.options import resolve
from fastebm.data.imageset import to_float
from fastebm.evaluation import inception, metrics
from fastebm.evaluation.bufferfid import reference_split
from fastebm.evaluation.fidstats import inception_statistics
from fastebm.run.completion import check_fid_reference

ROOT = os.path.join(os.path.dirname(__file__), "..")


class StubInception(torch.nn.Module):
    """InceptionOutputs' interface at a fraction of its cost (plumbing tests): x (B, 3, H, W) in [0, 1] →
    (pool (B, 64), logits (B, 10))."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(48, 64)

    def forward(self, x):
        pool = torch.relu(self.lin(F.adaptive_avg_pool2d(x, 4).flatten(1)))
        return pool, pool[:, :10]


def test_streamed_statistics_equal_the_whole_matrix_statistics():
    """From uint8 in parts, batch by batch, against pytorch-fid's np.mean / np.cov of every feature of the float
    images at once (float64 on both sides)."""
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen) for n in (37, 26))
    model = StubInception()
    mu, sigma, n = inception_statistics(model, [a, b], batch_size=10)
    pool, _ = inception.inception_outputs(model, to_float(torch.cat([a, b])), 10)
    want_mu, want_sigma = metrics.activation_statistics(pool)
    assert n == 63 and mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, want_mu, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-10, atol=1e-14 * np.abs(want_sigma).max())
    with pytest.raises(ValueError, match="at least 2 images"):
        inception_statistics(model, a[:1])


def test_the_reference_is_the_authors_per_dataset():
    """mebm Task/eval_buffer.py @20bbf21: Cifar10(full=True) (train + test), the img32 val folder, else train."""
    assert reference_split(resolve(dict(dataset="cifar10"))) == "train+test"
    assert reference_split(resolve(dict(dataset="imagenet32"))) == "test"
    for name in ("cifar100", "celebahq128", "digits", "folder"):
        assert reference_split(resolve(dict(dataset=name))) == "train"
    assert reference_split(resolve(dict(dataset="cifar10", fid_split="train"))) == "train"
    with pytest.raises(ValueError, match="--fid-split test: .*needs a test split"):
        check_fid_reference(resolve(dict(dataset="folder", fid_split="test", fid_every=1)), has_test=False)
    check_fid_reference(resolve(dict(dataset="folder", fid_split="test", fid_every=0)), has_test=False)  # FID off


_PEAK = r"""
import json, os, sys, threading, time, torch
torch.set_num_threads(1)
from test_fidstats import StubInception
from fastebm.evaluation import inception, metrics
from fastebm.evaluation.bufferfid import BufferScore, reference_images
from fastebm.config.options import resolve
from fastebm.data.imageset import ImageSet, to_float
inception.load_inception = lambda *a, **k: StubInception()
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
def peak_growth(fn):
    base, peak, stop = rss(), [0], threading.Event()
    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = fn()
    stop.set(); th.join()
    return max(peak[0], rss()) - base, out
cfg = resolve(dict(dataset="imagenet32", data_root=sys.argv[1], fid_every=1, device="cpu"))
train = ImageSet(torch.zeros((2, 3, 32, 32), dtype=torch.uint8), torch.zeros(2, dtype=torch.long), 1000, "imagenet32")
scorer = BufferScore(cfg, torch.device("cpu"))
streamed, stats = peak_growth(lambda: scorer.reference_statistics(train))
val = reference_images(cfg, train)[0]
copied, _ = peak_growth(lambda: metrics.activation_statistics(inception.inception_outputs(
    StubInception(), to_float(val), 100)[0]))
print(json.dumps({"streamed": streamed, "copied": copied, "n_real": scorer.n_real, "uint8": val.numel()}))
"""


def test_imagenet_reference_statistics_need_no_float_copy_of_the_images(tmp_path):
    """The in-training reference of imagenet32 (its val_data, 20,000 synthetic images here: 61 MB as uint8,
    246 MB as float32): reading the file and streaming the Inception pass peak at about twice the uint8 set (the
    pickle's array and its copy), below 3/4 of a float copy, where a float copy would add all of it to the set;
    the whole-set float path measured the same way, as a check of the measurement, grows by more than a float copy."""
    n = 20_000
    rng = np.random.default_rng(0)
    with open(tmp_path / "val_data", "wb") as f:
        import pickle

        pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     "labels": [int(y) for y in rng.integers(1, 1001, n)]}, f, protocol=4)
    # tests/ on the child's path for StubInception (fastebm comes from cwd and the editable install)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.abspath(ROOT), "tests"),
                                                        os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    float_copy = 4 * got["uint8"]
    assert got["n_real"] == n and got["uint8"] == n * 3072
    assert got["copied"] > float_copy, got  # the measurement sees a float copy where there is one
    assert got["streamed"] < 0.75 * float_copy, got
