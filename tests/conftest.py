"""Test configuration.

Without a CUDA device the Triton kernels run in the Triton interpreter on CPU tensors. TRITON_INTERPRET
must be in the environment before ``triton`` is imported (the ``triton.jit`` decorator picks the
interpreter at decoration time), so it is set here, before any test module imports the kernels.
GPU tests are marked ``gpu`` and skipped cleanly without CUDA (the hook is in the root conftest.py,
shared with bench/).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

CIFAR_JPG = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpg")


@pytest.fixture(scope="module")
def single_threaded():
    """One torch and one BLAS thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): on a
    small shared machine, thread contention made the Inception / eigh-heavy tests 5-20× slower."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def cifar_root():
    """The shared real CIFAR-10 JPEGs (class-folder layout) at ../shared/data/cifar10-jpg beside the checkout, or
    where FASTEBM_CIFAR_JPG points (README, "Testing"). Where they are absent the tests that read them skip
    and say why: real photographs cannot be made up here."""
    root = os.environ.get("FASTEBM_CIFAR_JPG", os.path.abspath(CIFAR_JPG))
    if not os.path.isdir(os.path.join(root, "train")):
        pytest.skip(f"the CIFAR-10 JPEGs are not at {root} (set FASTEBM_CIFAR_JPG to their folder; README, Testing)")
    return root


@pytest.fixture
def tiny_model():
    from fastebm.algorithm.model import EnergyModel

    def make(kind="mjem", norm="batch", image_size=16, depth=10, width=1):
        torch.manual_seed(0)
        return EnergyModel(kind, n_classes=10, depth=depth, width=width, norm=norm, image_size=image_size)

    return make


def fid_eigh(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """The Fréchet distance with tr sqrt(S1 S2) = Σ sqrt(eig(S1^½ S2 S1^½)) (symmetric eigh, ~1 s for 2048²)."""
    import numpy as np

    w, v = np.linalg.eigh(sigma1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(root @ sigma2 @ root)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


@pytest.fixture
def fast_fid(monkeypatch):
    """Tests of the plumbing around FID (caches, in-training rows, best_fid.pt) replace pytorch-fid's sqrtm
    (~30 s for 2048 features on one thread here) by :func:`fid_eigh`, the same number in exact arithmetic
    (tests/test_metrics.py checks it against pytorch-fid); the FID itself is tested in test_metrics.py."""
    from fastebm.evaluation import metrics

    monkeypatch.setattr(metrics, "frechet_distance", fid_eigh)

