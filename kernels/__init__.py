"""Triton kernels of fastebm (installed as ``fastebm.kernels``): one kernel a file, each with its
launcher, a plain PyTorch reference and a correctness check in ``tests/``."""
