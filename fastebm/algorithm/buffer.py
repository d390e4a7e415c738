"""Replay buffer B of SGLD samples (Algorithm 1, lines 3 and 12; JEM's persistent chains).

B holds |B| images (10,000 in the paper) in float32 on the training device, filled from p0. Each draw
picks a batch of indices uniformly with replacement, and replaces each drawn sample by a fresh p0
sample with probability ρ (the reinitialization frequency, 0.05). After SGLD the negatives are written
back to the same indices. Every shape is fixed: the ρ-reinitialization is a per-sample mask over a full
batch of p0 samples, not a variable-size gather, so the draw can run inside a captured CUDA graph.
"""
from __future__ import annotations

import torch


class ReplayBuffer:
    """Replay buffer of SGLD chain states.

    Args:
        size: |B| ≥ 1 (10,000 in the paper).
        p0: the initial distribution (``sample(n, device) -> (n, C, H, W)``).
        reinit_freq: ρ ∈ [0, 1], probability that a drawn sample restarts from p0 (0.05).
        device: where the buffer lives.

    Attributes:
        samples: (size, C, H, W) float32, values in [−1, 1] when SGLD clamps.

    The values are checked once, at the boundary (:func:`fastebm.config.limits.validate`, naming the option).
    """

    def __init__(self, size: int, p0, reinit_freq: float = 0.05, device="cpu"):
        assert size >= 1 and 0.0 <= reinit_freq <= 1.0, (size, reinit_freq)  # validated by limits.validate
        self.p0, self.reinit_freq, self.device = p0, reinit_freq, torch.device(device)
        self.samples = torch.cat([p0.sample(min(1000, size - i), device=self.device)
                                  for i in range(0, size, 1000)]).float().contiguous()

    def __len__(self) -> int:
        return self.samples.shape[0]

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x0 for n chains (Algorithm 1 line 3).

        Returns:
            x0: (n, C, H, W) float32 — buffer samples, each replaced with probability ρ by a p0 sample.
            idx: (n,) int64 buffer indices, to pass to :meth:`update`.
        """
        idx = torch.randint(0, len(self), (n,), device=self.device)
        fresh = self.p0.sample(n, device=self.device)
        reinit = torch.rand(n, device=self.device) < self.reinit_freq
        return torch.where(reinit[:, None, None, None], fresh, self.samples[idx]), idx

    def update(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Write negatives back (Algorithm 1 line 12), detached; non-finite samples are not written.

        Args:
            idx: (n,) int64 from :meth:`sample`.
            x: (n, C, H, W) float tensor.

        Returns:
            (n,) bool device tensor: which samples were finite and written (no host sync).
        """
        x = x.detach().to(self.samples.dtype)
        ok = torch.isfinite(x).flatten(1).all(1)
        # Indices are drawn with replacement: for a repeated index the last draw wins. Every write to a
        # repeated index carries that same value, so the scatter is deterministic (fixed shapes, no sync).
        pos = torch.arange(len(idx), device=idx.device)
        last = torch.full((len(self),), -1, dtype=pos.dtype, device=idx.device).scatter_reduce_(
            0, idx, pos, reduce="amax")[idx]
        self.samples[idx] = torch.where(ok[last][:, None, None, None], x[last], self.samples[idx])
        return ok

    def state_dict(self) -> dict:
        """Samples (|B|, C, H, W) float32 on the CPU and ρ, for checkpoints."""
        return {"samples": self.samples.detach().cpu(), "reinit_freq": self.reinit_freq}

    def load_state_dict(self, state: dict) -> None:
        """Restore the samples. Raises ValueError if the stored shape differs from this buffer's."""
        s = state["samples"]
        if tuple(s.shape) != tuple(self.samples.shape):
            raise ValueError(f"replay buffer: expected samples of shape {tuple(self.samples.shape)}, "
                             f"the checkpoint has {tuple(s.shape)}")
        self.samples.copy_(s)
