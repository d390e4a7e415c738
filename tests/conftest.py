"""Test configuration: without a CUDA device the Triton kernels run in the Triton interpreter on CPU
tensors.  TRITON_INTERPRET must be in the environment before ``triton`` is imported (the ``triton.jit``
decorator picks the interpreter at decoration time), so it is set here, before any test module
imports the kernels.  ``import torch`` does not import triton."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
