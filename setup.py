"""fastebm: a fast engine for training M-EBM / M-JEM / JEM energy-based image models."""
from setuptools import setup

setup(
    name="fastebm",
    version="0.1.0",
    description="Fast training of energy-based image models (M-EBM / M-JEM / JEM)",
    python_requires=">=3.10",
    # The Triton kernels live in the top-level kernels/ folder and are installed as fastebm.kernels.
    packages=["fastebm", "fastebm.kernels"],
    package_dir={"fastebm": "fastebm", "fastebm.kernels": "kernels"},
    install_requires=[
        # The supported range: the oldest torch the test suite runs on (2.11, the GPU machine's, with
        # torchvision 0.26 / triton 3.6) up to below the next major, so that `pip install -e .` keeps a
        # torch that is already installed (a CUDA build, say). Only .ci/run pins exact versions.
        "torch>=2.11,<3",
        "torchvision>=0.26,<1",
        "triton",
        "numpy",
        "scikit-learn",  # the embedded `digits` dataset, t-SNE, AUROC
        "tqdm",
        "nvtx",
        "pytorch-fid",  # FID: InceptionV3 and calculate_frechet_distance
        "tensorboard",  # event files in the run folder (torch.utils.tensorboard)
    ],
    extras_require={
        "plots": ["matplotlib"],  # the paper's figures (python -m fastebm.eval --task tsne logpx ...)
        # torch-fidelity: the Inception Score reference the tests compare against
        "test": ["pytest", "pytest-benchmark", "matplotlib", "torch-fidelity"],
    },
)
