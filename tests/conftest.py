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
    """The shared real CIFAR-10 JPEGs (class-folder layout); the path may be overridden by FASTEBM_CIFAR_JPG."""
    root = os.environ.get("FASTEBM_CIFAR_JPG", os.path.abspath(CIFAR_JPG))
    if not os.path.isdir(os.path.join(root, "train")):
        pytest.fail(f"shared CIFAR-10 JPEGs expected at {root} (set FASTEBM_CIFAR_JPG)")
    return root


@pytest.fixture
def tiny_model():
    from fastebm.model import EnergyModel

    def make(kind="mjem", norm="batch", image_size=16, depth=10, width=1):
        torch.manual_seed(0)
        return EnergyModel(kind, n_classes=10, depth=depth, width=width, norm=norm, image_size=image_size)

    return make
