"""FID statistics of a large set of real images in one streaming pass: the uint8 images go through Inception a
batch at a time and only running sums stay, so that no float copy of the set (15.7 GB for ImageNet 32×32's 1.28 M
training images) and no (N, 2048) feature matrix (21 GB for those) is ever held.

The statistics are pytorch-fid's (``np.mean``, ``np.cov(rowvar=False)`` of the pool3 features, as
:func:`fastebm.evaluation.metrics.activation_statistics`), accumulated in float64 about a shift (the first batch's
mean): μ = c + Σ(x − c)/n, Σ = (Σ(x − c)(x − c)ᵀ − n (μ − c)(μ − c)ᵀ) / (n − 1), the textbook shifted-data form, equal
to the two-pass result up to float64 rounding (tests/test_fidstats.py).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.imageset import to_float
from ..io.progress import Progress


def inception_statistics(model, images: torch.Tensor | Sequence[torch.Tensor], batch_size: int = 100,
                         device=None, desc: str = "fastebm: FID: Inception features of the real images"):
    """``(mu (F,), sigma (F, F), n)`` float64 of the pool3 features of ``images``, streamed.

    Args:
        model: :class:`fastebm.evaluation.inception.InceptionOutputs` (or anything with its interface: x (B, 3, H, W)
        float in
            [0, 1] → (pool (B, F), logits)); run in eval mode without gradients, its mode restored.
        images: (N, 3, H, W) uint8 in [0, 255] (converted a batch at a time by :func:`fastebm.data.imageset.to_float`,
        the
            conversion of the whole-set path) or float in [−1, 1]; or a sequence of such tensors (``train+test``),
            taken in order as one set.
        batch_size: images per forward pass (>= 1). device: where batches go (default: the model's).
        desc: what the progress report on stderr calls this pass (:mod:`fastebm.io.progress`).

    Raises:
        ValueError: fewer than 2 images, a part not (N, 3, H, W), batch_size < 1, non-finite features.
    """
    parts = [images] if isinstance(images, torch.Tensor) else list(images)
    if any(not isinstance(p, torch.Tensor) or p.ndim != 4 or p.shape[1] != 3 for p in parts):
        raise ValueError("images: expected (N, 3, H, W) tensors, uint8 in [0, 255] or float in [-1, 1]")
    n_total = sum(len(p) for p in parts)
    if n_total < 2 or batch_size < 1:
        raise ValueError(f"inception_statistics: expected at least 2 images and batch_size >= 1, got {n_total} and "
                         f"{batch_size}")
    device = device or next(model.parameters()).device
    shift = s1 = s2 = None
    n = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), Progress(n_total, desc, unit="images") as bar:
            for part in parts:
                for i in range(0, len(part), batch_size):
                    xb = part[i:i + batch_size].to(device)
                    xb = to_float(xb) if xb.dtype == torch.uint8 else xb.to(torch.float32)
                    pool = model(((xb + 1) / 2).clamp_(0, 1))[0].double()
                    if not bool(torch.isfinite(pool).all()):
                        raise ValueError("inception_statistics: non-finite Inception features")
                    if shift is None:
                        shift = pool.mean(0)
                        s1 = torch.zeros_like(shift)
                        s2 = torch.zeros(len(shift), len(shift), dtype=torch.float64, device=pool.device)
                    d = pool - shift
                    s1 += d.sum(0)
                    s2 += d.T @ d
                    n += len(pool)
                    bar.update(len(xb))
    finally:
        model.train(was_training)
    mean_d = s1 / n
    sigma = (s2 - n * torch.outer(mean_d, mean_d)) / (n - 1)
    return (shift + mean_d).cpu().numpy(), sigma.cpu().numpy(), n

