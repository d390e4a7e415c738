"""The p0 beside Eq. 6 as :mod:`fastebm.init` fits it (``--p0``): the authors' CelebA-HQ form and JEM++'s mixture.

- ``gaussian-downsampled`` (:class:`DownsampledGaussianInit`): Eq. 6 fitted on the images averaged over s×s pixel
  blocks (128 px → 32 px: s = 4, D = 3,072), samples clamped and each pixel repeated s×s back to full size
  (mebm ``one_center.py`` ``ds_grain`` / ``downsample`` / ``upsample`` at 23b0813, ``train_maebm_celeba.py``
  ``init_from_centers`` / ``init_random`` at 32f98f9).
- ``gaussian-mixture`` (:class:`GaussianMixtureInit`): one Gaussian per class, each restart from a class drawn
  uniformly (JEMPP ``train_jempp.py`` ``category_mean`` / ``init_from_centers`` / ``init_random`` at 0fd76f0);
  the mixture the paper's Section 3.1 calls "comparable" to one Gaussian.

Both keep fastebm's estimator (unbiased, float64 accumulation) and jitter rule (:func:`fastebm.init.fit_gaussian`).
"""
from __future__ import annotations

import math

import torch

from .init import COV_FORMS, GaussianInit, fit_gaussian


class DownsampledGaussianInit:
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

    kind = "gaussian-downsampled"

    def __init__(self, shape, inner: GaussianInit, meta=None):
        self.shape, self.inner, self.meta = tuple(shape), inner, dict(meta or {})
        self.scale = self.shape[1] // inner.shape[1]
        assert self.shape[1] == self.scale * inner.shape[1] and self.shape[2] == self.scale * inner.shape[2]

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

    def use_triton(self, rng_state) -> None:
        """The fused p0 kernel serves ``--p0 gaussian`` only (fastpath.requested_components): plain sampling."""

    def to(self, device, dtype: torch.dtype | None = None) -> DownsampledGaussianInit:
        """A copy with the inner tensors on ``device`` (and of ``dtype``)."""
        return DownsampledGaussianInit(self.shape, self.inner.to(device, dtype), self.meta)

    def state_dict(self) -> dict:
        """{"kind", "shape", "inner": the inner Gaussian's state_dict, "meta"}: tensors and plain values."""
        return {"kind": self.kind, "shape": self.shape, "inner": self.inner.state_dict(), "meta": self.meta}


class GaussianMixtureInit:
    """JEM++'s p0: Σ_k w_k N(μ_k, Σ_k) over images of ``shape`` (C, H, W), one component per class.

    JEMPP ``train_jempp.py`` at 0fd76f0: ``category_mean`` fits per class the mean and ``sub.t() @ sub /
    len(imc)``; ``init_from_centers`` builds ``MultivariateNormal(mean_k, cov_k + 1e-4 I)`` and fills the buffer
    with ``buffer_size // n_classes`` samples of each class; ``init_random`` gives every restart the class
    ``np.random.randint(n_classes)``: uniform weights, whatever the class sizes. fastebm: the same weights,
    its own estimator (unbiased, float64) and covariance forms (``full`` or rank-r + diagonal per class).

    Attributes (float32, on one device; K components, D = C·H·W):
        means: (K, D). weights: (K,) summing to 1.
        factor: (K, D, m): L_k (m = D, form ``full``) or U_k zero-padded to the largest rank (``lowrank``).
        diag_sqrt: (K, D) √d_k (``lowrank``) or None.
    """

    kind = "gaussian-mixture"

    def __init__(self, shape, means, weights, form, factor, diag_sqrt=None, meta=None):
        assert form in COV_FORMS and means.shape[0] == weights.shape[0] == factor.shape[0], form
        self.shape, self.means, self.weights, self.form = tuple(shape), means, weights, form
        self.factor, self.diag_sqrt, self.meta = factor, diag_sqrt, dict(meta or {})

    @property
    def mean(self) -> torch.Tensor:
        """The mixture's mean Σ_k w_k μ_k, (D,)."""
        return self.weights @ self.means

    def components(self, n: int, device=None) -> torch.Tensor:
        """(n,) int64 component of each draw, P(k) = w_k: inverse CDF of one torch.rand(n) (fixed shapes)."""
        w = self.weights.to(device)
        u = torch.rand(n, device=w.device, dtype=w.dtype)
        return torch.searchsorted(torch.cumsum(w, 0), u, right=True).clamp_(max=w.shape[0] - 1)

    def sample(self, n: int, device=None) -> torch.Tensor:
        """n samples (n, C, H, W) in [−1, 1] (clamped), global torch RNG in this order: components (n uniforms),
        z (n × m), ε (n × D, ``lowrank``). Every component's factor multiplies z in one batched GEMM and each
        draw keeps its own (K × the single Gaussian's work, fixed shapes: the compiled step traces it)."""
        means = self.means if device is None else self.means.to(device)
        dev, factor = means.device, self.factor.to(means.device)
        k = self.components(n, dev)
        z = torch.randn(n, factor.shape[2], device=dev, dtype=factor.dtype)
        y = torch.bmm(factor, z.T.unsqueeze(0).expand(factor.shape[0], -1, -1))  # (K, D, n)
        x = means[k] + y[k, :, torch.arange(n, device=dev)]
        if self.diag_sqrt is not None:
            x = x + self.diag_sqrt.to(dev)[k] * torch.randn(n, x.shape[1], device=dev, dtype=factor.dtype)
        return x.clamp_(-1, 1).view(n, *self.shape)

    def use_triton(self, rng_state) -> None:
        """The fused p0 kernel serves ``--p0 gaussian`` only (fastpath.requested_components): plain sampling."""

    def to(self, device, dtype: torch.dtype | None = None) -> GaussianMixtureInit:
        """A copy with every tensor on ``device`` (and of ``dtype``)."""
        mv = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
        return GaussianMixtureInit(self.shape, mv(self.means), mv(self.weights), self.form, mv(self.factor),
                                   mv(self.diag_sqrt), self.meta)

    def state_dict(self) -> dict:
        """Every tensor on the CPU plus form and meta: tensors and plain values (see :func:`p0_from_state_dict`)."""
        cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        return {"kind": self.kind, "shape": self.shape, "form": self.form, "means": cpu(self.means),
                "weights": cpu(self.weights), "factor": cpu(self.factor), "diag_sqrt": cpu(self.diag_sqrt),
                "meta": self.meta}


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


def fit_mixture(images_u8: torch.Tensor, labels: torch.Tensor, n_classes: int, form: str = "full", rank: int = 100,
                jitter: float = 1e-4, batch_size: int = 500, device="cpu") -> GaussianMixtureInit:
    """Fit JEM++'s p0 (:class:`GaussianMixtureInit`): Eq. 6 on each class's images, uniform weights 1/K.

    Args:
        images_u8: (N, C, H, W) uint8. labels: (N,) int64 in [0, n_classes). n_classes: K (one component
            each; K = 1, unlabelled data, is the one Gaussian of ``--p0 gaussian``).
        form, rank, jitter, batch_size, device: as :func:`fit_gaussian`, per class; ``lowrank`` factors are
            zero-padded to the largest per-class rank (a class of m images has rank ≤ m − 1).

    Raises:
        ValueError: a class with fewer than 2 training images (it has no covariance), naming --p0.
    """
    counts = torch.bincount(labels, minlength=n_classes).tolist()
    small = [(k, m) for k, m in enumerate(counts) if m < 2]
    if small:
        k, m = small[0]
        raise ValueError(f"--p0 gaussian-mixture: class {k} has {m} training image(s), each class needs at least 2 "
                         f"(a covariance); {len(small)} class(es) too small (--train-subset, --max-per-class)")
    d = math.prod(images_u8.shape[1:])
    m = d if form == "full" else min(rank, d, max(counts) - 1)  # a class of n images has rank <= n - 1
    factor = torch.zeros(n_classes, d, m, device=device)  # filled class by class: one class's fit at a time
    means = torch.zeros(n_classes, d, device=device)
    diag = None if form == "full" else torch.zeros(n_classes, d, device=device)
    jit = []
    for k in range(n_classes):
        p = fit_gaussian(images_u8[labels == k], form, rank, jitter=jitter, batch_size=batch_size, device=device,
                         what=f" class {k + 1}/{n_classes}")
        means[k] = p.mean
        if form == "full":
            factor[k] = p.scale_tril
        else:
            factor[k, :, :p.factor.shape[1]], diag[k] = p.factor, p.diag_sqrt
        jit.append(p.meta["jitter"])
    weights = torch.full((n_classes,), 1.0 / n_classes, device=means.device)  # JEMPP init_random: uniform class
    return GaussianMixtureInit(p.shape, means, weights, form, factor, diag,
                               meta={"n": counts, "jitter": max(jit), **({"rank": m} if form == "lowrank" else {})})
