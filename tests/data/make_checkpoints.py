"""Writes the small checkpoints tests/test_files.py loads across versions: run once per torch version with

    python tests/data/make_checkpoints.py            # under each supported torch (CI's 2.14 and the GPU image's 2.11)

with this checkout installed in editable mode (``pip install -e .``), as for the tests.

It trains M-JEM on 64 digits for 2 iterations (WRN-10-1, 16 px, uniform p0, a buffer of 16), about 0.7 MB.
"""
import os
import shutil
import tempfile

import torch

from fastebm.train import main

ARGS = ["--dataset", "digits", "--model", "mjem", "--p0", "uniform", "--depth", "10", "--width", "1",
        "--image-size", "16", "--buffer-size", "16", "--batch-size", "8", "--cls-batch-size", "8", "--epochs", "1",
        "--iters-per-epoch", "2", "--k", "1", "--train-subset", "64", "--test-subset", "16", "--no-progress",
        "--no-tensorboard", "--warmup-iters", "0", "--device", "cpu"]

if __name__ == "__main__":
    version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    with tempfile.TemporaryDirectory() as tmp:
        assert main(ARGS + ["--out", tmp]) == 0
        dest = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"ckpt-torch{version}.pt")
        shutil.copyfile(os.path.join(tmp, "ckpt.pt"), dest)
    print(dest, os.path.getsize(dest))
