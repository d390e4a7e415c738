"""TF32 rounding simulated on the CPU, for the margins benchmark (bench/test_margins.py).

On an NVIDIA GPU with TF32 on (PyTorch's default for cuDNN convolutions), a convolution or matmul rounds its
float32 inputs to TF32 — 10 explicit mantissa bits, round to nearest — and accumulates in float32. This module
does exactly that to every ``nn.Conv2d`` and ``nn.Linear`` while :func:`tf32_emulation` is active: the forward
rounds the input and the weight, the backward rounds the incoming gradient and uses the rounded input and
weight (as cuDNN's dgrad / wgrad kernels do). It is written as custom autograd functions of tensor ops, so the
eager plain path and a ``torch.compile``d fast path (Dynamo traces it; Inductor compiles the bit operations)
both get it; the float64 reference run is left exact (float64 tensors pass through unrounded).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

TF32_DROPPED_BITS = 13  # float32 has 23 explicit mantissa bits, TF32 10


def tf32_round(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to TF32 (float32 with the low 13 mantissa bits zero), to nearest, ties to even; other
    dtypes unchanged. Works on the bit pattern: add half a TF32 ulp (minus one, plus the kept last bit) to the
    magnitude bits and clear the dropped ones; infinities and NaNs keep their class."""
    if t.dtype != torch.float32:
        return t
    bits = t.view(torch.int32)
    keep_odd = (bits >> TF32_DROPPED_BITS) & 1
    bits = (bits + ((1 << (TF32_DROPPED_BITS - 1)) - 1) + keep_odd) & ~((1 << TF32_DROPPED_BITS) - 1)
    return bits.view(torch.float32)


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups):
        xr, wr = tf32_round(x), tf32_round(w)
        ctx.save_for_backward(xr, wr)
        ctx.conv = (list(stride), list(padding), list(dilation), groups, None if b is None else list(b.shape))
        return F.conv2d(xr, wr, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        xr, wr = ctx.saved_tensors
        stride, padding, dilation, groups, bias_shape = ctx.conv
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias_shape is not None and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(tf32_round(g), xr, wr, bias_shape, stride, padding,
                                                         dilation, False, [0, 0], groups, mask)
        return gx, gw, gb, None, None, None, None


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        xr, wr = tf32_round(x), tf32_round(w)
        ctx.save_for_backward(xr, wr)
        ctx.has_bias = b is not None
        return F.linear(xr, wr, b)

    @staticmethod
    def backward(ctx, g):
        xr, wr = ctx.saved_tensors
        gr = tf32_round(g)
        g2, x2 = gr.reshape(-1, gr.shape[-1]), xr.reshape(-1, xr.shape[-1])
        gx = gr @ wr if ctx.needs_input_grad[0] else None
        gw = g2.t() @ x2 if ctx.needs_input_grad[1] else None
        gb = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _conv_forward(self, input, weight, bias):
    if self.padding_mode != "zeros":
        raise ValueError("tf32_emulation: only zero padding is simulated")
    return _Conv2d.apply(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def _linear_forward(self, input):
    return _Linear.apply(input, self.weight, self.bias)


@contextlib.contextmanager
def tf32_emulation(on: bool = True):
    """Within: every ``nn.Conv2d`` / ``nn.Linear`` computes with TF32-rounded inputs (module docstring).
    Dynamo guards on the forward it traced, so a compiled graph is traced again when the context starts or ends."""
    if not on:
        yield
        return
    saved = nn.Conv2d._conv_forward, nn.Linear.forward
    nn.Conv2d._conv_forward, nn.Linear.forward = _conv_forward, _linear_forward
    try:
        yield
    finally:
        nn.Conv2d._conv_forward, nn.Linear.forward = saved
