"""``--p0 gaussian-downsampled``: the authors' CelebA-HQ p0, Eq. 6 (:mod:`fastebm.p0.gaussian`) fitted on the images
averaged over s×s pixel blocks (128 px → 32 px: s = 4, D = 3,072), samples clamped and each pixel repeated s×s back
to full size (mebm ``one_center.py`` ``ds_grain`` / ``downsample`` / ``upsample`` at 23b0813,
``train_maebm_celeba.py`` ``init_from_centers`` / ``init_random`` at 32f98f9). fastebm's estimator (unbiased,
float64 accumulation) and jitter rule (:func:`fastebm.p0.gaussian.fit_gaussian`).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from ..data.imageset import ImageSet
from .base import P0, FitOptions
from .gaussian import GaussianInit, check_full_fit, fit_gaussian


class DownsampledGaussianInit(P0):
    """The authors' CelebA-HQ p0: N(μ, Σ) over images averaged to (C, H/s, W/s), each sample clamped to [−1, 1]
    and every pixel repeated s×s (nearest) back to ``shape`` (C, H, W).

    mebm ``one_center.py`` at 23b0813: ``ds_grain(128) = 4``, ``downsample`` averages 4×4 blocks, the full
    covariance is fitted at 32×32 (D = 3,072); ``train_maebm_celeba.py`` at 32f98f9 ``init_from_centers`` /
    ``init_random``: ``MultivariateNormal(mean, cov + 1e-4 I)``, ``clamp(−1, 1)``, then ``upsample`` copies each
    pixel into its 4×4 block. fastebm keeps its own estimator (unbiased, float64) and jitter rule.

    Attributes:
        shape: (C, H, W) of the samples; scale: s = H / h.
        inner: the :class:`GaussianInit` at (C, h, w), float32 tensors.
    """

    kind: ClassVar[str] = "gaussian-downsampled"
    fitted: ClassVar[bool] = True
    uses_size: ClassVar[bool] = True  # no fused sampler: triton False, use_triton ignored (P0's defaults)

    def __init__(self, shape, inner: GaussianInit, meta=None):
        self.shape, self.inner, self.meta = tuple(shape), inner, dict(meta or {})
        self.scale = self.shape[1] // inner.shape[1]
        assert self.shape[1] == self.scale * inner.shape[1] and self.shape[2] == self.scale * inner.shape[2]

    @classmethod
    def fit(cls, data: ImageSet, opts: FitOptions, device="cpu") -> DownsampledGaussianInit:
        """:func:`fit_downsampled` at ``opts.size`` with ``opts``' form, rank and jitter."""
        return fit_downsampled(data.images, opts.size, opts.form, opts.rank, opts.jitter, device=device)

    @classmethod
    def from_state_dict(cls, state: dict) -> DownsampledGaussianInit:
        """From :meth:`state_dict` (CPU tensors)."""
        return cls(state["shape"], GaussianInit.from_state_dict(state["inner"]), state.get("meta"))

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C, h, w) → (n, C, H, W), each pixel repeated s×s (the authors' ``upsample``; exact, no blend)."""
        n, c, h, w, s = *x.shape, self.scale
        return x[:, :, :, None, :, None].expand(n, c, h, s, w, s).reshape(n, c, h * s, w * s)

    @property
    def mean(self) -> torch.Tensor:
        """μ repeated s×s: (D,) at full size (D = C·H·W), the inner tensors' dtype."""
        return self.upsample(self.inner.mean.view(1, *self.inner.shape)).flatten()

    def sample(self, n: int, device=None) -> torch.Tensor:
        """n samples (n, C, H, W) in [−1, 1]: the inner Gaussian's (global torch RNG, clamped), upsampled."""
        return self.upsample(self.inner.sample(n, device))

    @classmethod
    def check_memory(cls, shape, n_classes: int, opts: FitOptions, free: int, device) -> None:
        """The fit is :class:`GaussianInit`'s at (C, --p0-size, --p0-size): its full form's (D, D) float64
        covariance and factor must fit ``free``. ValueError naming --p0-size and --cov otherwise."""
        if opts.form == "full":
            check_full_fit(shape[0] * opts.size ** 2, free, device, f"--p0-size {opts.size} --cov full", "--p0-size")

    def to(self, device, dtype: torch.dtype | None = None) -> DownsampledGaussianInit:
        """A copy with the inner tensors on ``device`` (and of ``dtype``)."""
        return DownsampledGaussianInit(self.shape, self.inner.to(device, dtype), self.meta)

    def state_dict(self) -> dict:
        """{"kind", "shape", "inner": the inner Gaussian's state_dict, "meta"}: tensors and plain values."""
        return {"kind": self.kind, "shape": self.shape, "inner": self.inner.state_dict(), "meta": self.meta}


def fit_downsampled(images_u8: torch.Tensor, size: int = 32, form: str = "full", rank: int = 100,
                    jitter: float = 1e-4, batch_size: int = 500, device="cpu") -> DownsampledGaussianInit:
    """Fit the authors' CelebA-HQ p0 (:class:`DownsampledGaussianInit`): Eq. 6 on (N, C, H, W) uint8 images
    averaged over (H/size)×(H/size) blocks, i.e. at ``size``×``size`` (mebm ``one_center.py`` at 23b0813: 4×4
    blocks, 128 → 32 px); ``form`` / ``rank`` / ``jitter`` as :func:`fit_gaussian` at that size.

    Raises ValueError naming --p0-size when ``size`` does not divide H and W."""
    h, w = images_u8.shape[2:]
    if size < 1 or h % size or w % size:
        raise ValueError(f"--p0-size {size}: expected a divisor of the image side {h} (the Gaussian is fitted at "
                         f"size×size and each pixel repeated (side / size)² times)")
    inner = fit_gaussian(images_u8, form, rank, jitter=jitter, batch_size=batch_size, device=device,
                         pool=h // size, what=f" at {size}x{size}")
    return DownsampledGaussianInit(tuple(images_u8.shape[1:]), inner, meta=dict(inner.meta))
