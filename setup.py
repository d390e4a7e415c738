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
        # Pinned to the releases that the development and CI machines install from local disk.
        # The code also runs on newer torch (the GPU machine has torch 2.11 / triton 3.6).
        "torch==2.14.1",
        "torchvision==0.29.1",
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
