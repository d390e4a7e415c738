"""``--p0 gaussian-mixture``: JEM++'s p0, one Gaussian (Eq. 6, :mod:`fastebm.p0.gaussian`) per class, each
restart from a class drawn uniformly (JEMPP ``train_jempp.py`` ``category_mean`` / ``init_from_centers`` /
``init_random`` at 0fd76f0); the mixture the paper's Section 3.1 calls "comparable" to one Gaussian. fastebm's
estimator (unbiased, float64 accumulation) and jitter rule (:func:`fastebm.p0.gaussian.fit_gaussian`).
"""
from __future__ import annotations

import math
import sys
from typing import ClassVar

import torch

from ..data.imageset import ImageSet
from .base import COV_FORMS, P0, FitOptions
from .gaussian import fit_gaussian, full_fit_bytes


class GaussianMixtureInit(P0):
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

    kind: ClassVar[str] = "gaussian-mixture"
    fitted: ClassVar[bool] = True
    uses_size: ClassVar[bool] = False  # no fused sampler: triton False, use_triton ignored (P0's defaults)

    def __init__(self, shape, means, weights, form, factor, diag_sqrt=None, meta=None):
        assert form in COV_FORMS and means.shape[0] == weights.shape[0] == factor.shape[0], form
        self.shape, self.means, self.weights, self.form = tuple(shape), means, weights, form
        self.factor, self.diag_sqrt, self.meta = factor, diag_sqrt, dict(meta or {})

    @classmethod
    def fit(cls, data: ImageSet, opts: FitOptions, device="cpu") -> GaussianMixtureInit:
        """:func:`fit_mixture` on ``data``'s classes with ``opts``' form, rank and jitter (one line on stderr when
        ``data`` has one class: the mixture is then the one Gaussian of ``--p0 gaussian``)."""
        if data.n_classes == 1:
            print("fastebm: --p0 gaussian-mixture on one class: one component, the Gaussian of --p0 gaussian",
                  file=sys.stderr)
        return fit_mixture(data.images, data.labels, data.n_classes, opts.form, opts.rank, opts.jitter, device=device)

    @classmethod
    def from_state_dict(cls, state: dict) -> GaussianMixtureInit:
        """From :meth:`state_dict` (CPU tensors)."""
        return cls(state["shape"], state["means"], state["weights"], state["form"], state["factor"],
                   state["diag_sqrt"], state.get("meta"))

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

    @classmethod
    def check_memory(cls, shape, n_classes: int, opts: FitOptions, free: int, device) -> None:
        """K float32 factors (D × D, or D × (r + 1) with the diagonal) and, for the full form, one float64 fit
        (2·D²·8 bytes) at a time. ValueError naming --p0 and --cov when they do not fit ``free``."""
        d = math.prod(shape)
        m, fit = (d, full_fit_bytes(d)) if opts.form == "full" else (min(opts.rank, d) + 1, 0)
        need = n_classes * d * m * 4 + fit
        if need > free:
            raise ValueError(f"--p0 gaussian-mixture --cov {opts.form}: {n_classes} class covariances over D = {d} "
                             f"need {need / 2 ** 30:.1f} GiB, {free / 2 ** 30:.1f} GiB are free on {device}; use "
                             f"--cov lowrank, --p0 gaussian or a smaller --image-size")

    def to(self, device, dtype: torch.dtype | None = None) -> GaussianMixtureInit:
        """A copy with every tensor on ``device`` (and of ``dtype``)."""
        mv = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
        return GaussianMixtureInit(self.shape, mv(self.means), mv(self.weights), self.form, mv(self.factor),
                                   mv(self.diag_sqrt), self.meta)

    def state_dict(self) -> dict:
        """Every tensor on the CPU plus form and meta: tensors and plain values (see :meth:`from_state_dict`)."""
        cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        return {"kind": self.kind, "shape": self.shape, "form": self.form, "means": cpu(self.means),
                "weights": cpu(self.weights), "factor": cpu(self.factor), "diag_sqrt": cpu(self.diag_sqrt),
                "meta": self.meta}


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
