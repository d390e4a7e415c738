"""``--p0 uniform``: U(−1, 1)^D, the JEM baseline's initialization."""
from __future__ import annotations

from typing import ClassVar

import torch

from ..data.imageset import ImageSet
from .base import P0, FitOptions


class UniformInit(P0):
    """p0 = U(−1, 1)^D, the JEM baseline's initialization. Samples (n, *shape) float32. Nothing is fitted: no
    memory to check; one torch.rand per batch: no fused kernel (:class:`P0`'s defaults)."""

    kind: ClassVar[str] = "uniform"
    fitted: ClassVar[bool] = False
    uses_size: ClassVar[bool] = False

    def __init__(self, shape: tuple[int, int, int]):
        self.shape, self.meta = tuple(shape), {}

    @classmethod
    def fit(cls, data: ImageSet, opts: FitOptions | None = None, device=None) -> UniformInit:
        """U(−1, 1) over the images' shape (C, H, W): nothing is fitted."""
        return cls(tuple(data.images.shape[1:]))

    @classmethod
    def from_state_dict(cls, state: dict) -> UniformInit:
        """From :meth:`state_dict`."""
        return cls(state["shape"])

    def sample(self, n: int, device=None) -> torch.Tensor:
        """n samples (n, C, H, W) float32 uniform in [−1, 1), global torch RNG."""
        return torch.rand((n, *self.shape), device=device).mul_(2).sub_(1)

    def to(self, device, dtype: torch.dtype | None = None) -> UniformInit:
        """No tensors to move: returns self (samples are float32; a float64 buffer promotes them)."""
        return self

    def state_dict(self) -> dict:
        """{"kind": "uniform", "shape"}."""
        return {"kind": self.kind, "shape": self.shape}
