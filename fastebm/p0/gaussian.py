"""``--p0 gaussian``: the informative initialization of the SGLD chains (paper Eq. 6).

Informative initialization fits one Gaussian p0(x) = N(μ, Σ) to the whole training set, D = 3·H·W,
in a single streaming pass with float64 accumulation (the data is never held in float at once).
Two covariance forms behind one interface (:class:`GaussianInit`):

- ``full``: the exact sample covariance (unbiased, like ``numpy.cov``) and its Cholesky factor, with a
  small jitter on the diagonal (1e-4, as the reference code adds) that is raised ×10 until the
  factorization succeeds. Memory D², fine up to D ≈ 12k (64×64 RGB).
- ``lowrank``: Σ ≈ U Uᵀ + diag(d) with U (D × r) the top-r principal directions scaled by √eigenvalue
  and d the residual per-pixel variance. U is found from a one-pass randomized sketch Y = Σ Ω
  (Ω Gaussian D × (r + oversampling)) with the stabilized Nyström approximation of Tropp et al. (2017,
  "Fixed-rank approximation of a positive-semidefinite matrix from streaming data"); no D × D matrix is
  ever formed, so CelebA-HQ 128 (D = 49,152) fits in memory. Default above 64×64.

A constant pixel (zero variance) or fewer samples than dimensions (N < D) do not crash the fit: the
jitter (full) or the variance floor (lowrank) keep Σ positive definite.
Samples are batched (one GEMM) and clamped to [−1, 1].

The other kinds (``--p0``, :data:`fastebm.p0.P0_KINDS`) fit this Gaussian too: at 32 px
(:mod:`fastebm.p0.downsampled`), per class (:mod:`fastebm.p0.mixture`).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..data.imageset import ImageSet, to_float
from ..io.progress import Progress
from ..kernels.reference import lowrank_gaussian_reference
from .base import COV_FORMS, P0, FitOptions


def full_fit_bytes(d: int) -> int:
    """Bytes a full-covariance fit over D = ``d`` dimensions holds at once: the (D, D) float64 covariance and its
    Cholesky factor, 2·D²·8."""
    return 2 * d * d * 8


def check_full_fit(d: int, free: int, device, given: str = "--cov full", side: str = "--image-size") -> None:
    """Raise ValueError (one line: ``given``, the bytes needed, the bytes ``free`` on ``device``, and the way out:
    ``--cov lowrank`` or a smaller ``side``) when :func:`full_fit_bytes` of ``d`` exceeds ``free``."""
    need = full_fit_bytes(d)
    if need > free:
        raise ValueError(f"{given}: a {d}×{d} float64 covariance (and its factor) needs {need / 2 ** 30:.1f} GiB, "
                         f"{free / 2 ** 30:.1f} GiB are free on {device}; use --cov lowrank or a smaller {side}")


class GaussianInit(P0):
    """p0(x) = N(μ, Σ) over images of ``shape`` (C, H, W), D = C·H·W (paper Eq. 6).

    Attributes (float32, on one device):
        mean: (D,).
        scale_tril: (D, D) lower Cholesky factor of Σ (form ``full``).
        factor: (D, r) U and diag_sqrt: (D,) √d with Σ = U Uᵀ + diag(d) (form ``lowrank``).
    """

    kind: ClassVar[str] = "gaussian"
    fitted: ClassVar[bool] = True
    uses_size: ClassVar[bool] = False
    triton: ClassVar[bool] = True

    def __init__(self, shape, mean, form, scale_tril=None, factor=None, diag_sqrt=None, meta=None):
        assert form in COV_FORMS, form
        self.shape, self.mean, self.form = tuple(shape), mean, form
        self.scale_tril, self.factor, self.diag_sqrt = scale_tril, factor, diag_sqrt
        self.meta = dict(meta or {})

    @classmethod
    def fit(cls, data: ImageSet, opts: FitOptions, device="cpu") -> GaussianInit:
        """Eq. 6 on the whole image set: :func:`fit_gaussian` with ``opts``' form, rank and jitter."""
        return fit_gaussian(data.images, form=opts.form, rank=opts.rank, jitter=opts.jitter, device=device)

    @classmethod
    def check_memory(cls, shape, n_classes: int, opts: FitOptions, free: int, device) -> None:
        """The full form's fit holds a (D, D) float64 covariance and its factor (2·D²·8 bytes); the low-rank
        form's fit stays far below that. ValueError naming --cov when the full form does not fit ``free``."""
        if opts.form == "full":
            check_full_fit(math.prod(shape), free, device)

    @classmethod
    def from_state_dict(cls, state: dict) -> GaussianInit:
        """From :meth:`state_dict` (CPU tensors)."""
        return cls(state["shape"], state["mean"], state["form"], state["scale_tril"], state["factor"],
                   state["diag_sqrt"], state.get("meta"))

    @property
    def dim(self) -> int:
        """D = C·H·W."""
        return self.mean.numel()

    def use_triton(self, rng_state: torch.Tensor | None) -> None:
        """Sample CUDA batches with the fused Triton kernel (``fastebm.kernels.lowrank_gaussian``):
        x = clamp(μ + U z + √d ⊙ ε) in one launch, noise from the device Philox state ``rng_state``
        ([seed, offset] int64). The full form is the same kernel with U = L (r = D) and d = 0.
        ``None`` goes back to the plain PyTorch path."""
        self._triton_rng = rng_state

    def covariance(self) -> torch.Tensor:
        """Σ as a dense (D, D) float32 matrix (for tests and small D only)."""
        if self.form == "full":
            return self.scale_tril @ self.scale_tril.T
        return self.factor @ self.factor.T + torch.diag(self.diag_sqrt ** 2)

    def sample(self, n: int, device=None) -> torch.Tensor:
        """n samples (n, C, H, W) float32 in [−1, 1] (clamped): x = μ + U z + √d ⊙ ε (Eq. 6), with U = L and
        no ε for the full form. The plain path draws z (then ε) from the global torch RNG and applies the
        kernel's reference formula; after :meth:`use_triton` CUDA draws go through the fused kernel (one
        launch, noise from its Philox state). CPU tensors reach the kernel only through :meth:`sample_fused`."""
        mean = self.mean if device is None else self.mean.to(device)
        rng = getattr(self, "_triton_rng", None)
        if rng is not None and mean.is_cuda:
            return self.sample_fused(n, rng, mean.device)
        return self.plain_sample(n, mean.device)

    def plain_sample(self, n: int, device=None) -> torch.Tensor:
        """n samples (n, C, H, W) by the plain PyTorch path whatever :meth:`use_triton` chose: z (then ε)
        from the global torch RNG in the factors' dtype, the kernel's reference formula."""
        mean = self.mean if device is None else self.mean.to(device)
        factor, diag = self._factors(mean.device)
        z = torch.randn(n, factor.shape[1], device=mean.device, dtype=factor.dtype)
        eps = None if diag is None else torch.randn(n, self.dim, device=mean.device, dtype=factor.dtype)
        return lowrank_gaussian_reference(mean, factor, diag, z, eps).view(n, *self.shape)

    def sample_fused(self, n: int, rng_state: torch.Tensor, device=None) -> torch.Tensor:
        """n samples (n, C, H, W) float32 in [−1, 1] from the fused Triton kernel, noise from the Philox
        state ``rng_state`` (advanced in place); CPU tensors need the Triton interpreter."""
        from ..kernels.lowrank_gaussian import lowrank_gaussian_sample

        mean = self.mean if device is None else self.mean.to(device)
        factor, diag = self._factors(mean.device)
        diag = torch.zeros_like(mean) if diag is None else diag  # full form: the kernel with d = 0
        return lowrank_gaussian_sample(mean, factor, diag, n, rng_state).view(n, *self.shape)

    def _factors(self, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(U, √d) on ``device``: (L, None) for the full form, (U, √d) for the low-rank form."""
        if self.form == "full":
            return self.scale_tril.to(device), None
        return self.factor.to(device), self.diag_sqrt.to(device)

    def to(self, device, dtype: torch.dtype | None = None) -> GaussianInit:
        """A copy with every tensor on ``device`` (and of ``dtype``: float64 for a reference run)."""
        mv = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
        return GaussianInit(self.shape, mv(self.mean), self.form, mv(self.scale_tril), mv(self.factor),
                            mv(self.diag_sqrt), self.meta)

    def state_dict(self) -> dict:
        """Every tensor on the CPU plus form and meta (see :meth:`from_state_dict`)."""
        cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        return {"kind": self.kind, "shape": self.shape, "form": self.form, "mean": cpu(self.mean),
                "scale_tril": cpu(self.scale_tril), "factor": cpu(self.factor),
                "diag_sqrt": cpu(self.diag_sqrt), "meta": self.meta}


def _batches(images_u8: torch.Tensor, batch_size: int, device, pool: int = 1, what: str = ""):
    with Progress(images_u8.shape[0], f"fastebm: fitting p0{what} (Eq. 6)", unit="images") as bar:
        for i in range(0, images_u8.shape[0], batch_size):
            x = to_float(images_u8[i:i + batch_size].to(device)).double()
            yield (F.avg_pool2d(x, pool) if pool > 1 else x).flatten(1)
            bar.update(min(batch_size, images_u8.shape[0] - i))


def fit_gaussian(images_u8: torch.Tensor, form: str = "full", rank: int = 100, oversample: int | None = None,
                 jitter: float = 1e-4, batch_size: int = 500, device="cpu", seed: int = 0, pool: int = 1,
                 what: str = "") -> GaussianInit:
    """Fit p0 = N(μ, Σ) to a whole image set in one streaming pass (paper Eq. 6).

    Args:
        images_u8: (N, C, H, W) uint8 training images (mapped to [−1, 1] batch by batch).
        form: ``"full"`` (exact, D×D) or ``"lowrank"`` (rank ``rank`` plus diagonal).
        rank: r for ``lowrank`` (clipped to D and to N − 1).
        oversample: extra sketch columns for ``lowrank`` (default max(r, 20)); more columns capture
            the top-r subspace better when the residual spectrum is heavy.
        jitter: added to Σ's diagonal before the Cholesky factorization (full), and the floor of the
            residual variance d (lowrank).
        batch_size: images per streamed batch.
        device: where the float64 accumulation runs.
        seed: seed of the sketch matrix Ω (lowrank).
        pool: fit on the images averaged over pool×pool pixel blocks (H and W divisible by it), shape
            (C, H/pool, W/pool): the authors' CelebA p0 (mebm ``one_center.py`` ``downsample`` at 23b0813).
        what: words for the progress line (``" class 3/10"``).

    Returns:
        a :class:`GaussianInit` with float32 tensors on ``device``.

    Raises:
        ValueError: fewer than 2 images (form, rank, jitter and dtype are asserted: the options are
            validated as --cov / --rank in fastebm.config.options).
    """
    assert form in COV_FORMS and rank >= 1 and jitter > 0, (form, rank, jitter)  # --cov / --rank (config)
    assert images_u8.dtype == torch.uint8 and images_u8.ndim == 4, (images_u8.dtype, images_u8.shape)
    assert pool >= 1 and images_u8.shape[2] % pool == 0 and images_u8.shape[3] % pool == 0, pool  # --p0-size
    n, (c, h, w) = images_u8.shape[0], images_u8.shape[1:]
    shape = (c, h // pool, w // pool)
    d = math.prod(shape)
    if n < 2:
        raise ValueError(f"p0 fit: expected at least 2 images, got {n}")
    f64 = dict(dtype=torch.float64, device=device)
    s1 = torch.zeros(d, **f64)
    if form == "full":
        s2 = torch.zeros(d, d, **f64)
        for x in _batches(images_u8, batch_size, device, pool, what):
            s1 += x.sum(0)
            s2.addmm_(x.T, x)
        mean = s1 / n
        cov = (s2 - n * torch.outer(mean, mean)) / (n - 1)
        del s2
        eye = torch.eye(d, **f64)
        jit = jitter
        for _ in range(8):
            tril, info = torch.linalg.cholesky_ex(cov + jit * eye)
            if int(info) == 0:
                break
            jit *= 10
        else:
            raise RuntimeError(f"p0 fit: covariance not positive definite even with jitter {jit}")
        return GaussianInit(shape, mean.float(), "full", scale_tril=tril.float(),
                            meta={"n": n, "jitter": jit})

    r = min(rank, d, n - 1)
    k = min(d, r + (max(r, 20) if oversample is None else oversample))
    omega = torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
    sq = torch.zeros(d, **f64)
    sketch = torch.zeros(d, k, **f64)  # Σ_i x_i (x_iᵀ Ω), uncentered
    for x in _batches(images_u8, batch_size, device, pool, what):
        s1 += x.sum(0)
        sq += (x * x).sum(0)
        sketch.addmm_(x.T, x @ omega)
    mean = s1 / n
    var = ((sq - n * mean * mean) / (n - 1)).clamp_(min=0)
    y = (sketch - n * torch.outer(mean, mean @ omega)) / (n - 1)  # Σ Ω
    # Stabilized Nyström: Σ ≈ Yν (Ωᵀ Yν)⁻¹ Yνᵀ − ν I, computed through a thin SVD.
    nu = d * torch.finfo(torch.float64).eps * max(float(torch.linalg.matrix_norm(y)), 1e-30)
    y_nu = y + nu * omega
    b = omega.T @ y_nu
    b = (b + b.T) / 2
    chol, info = torch.linalg.cholesky_ex(b)
    if int(info) != 0:  # rank-deficient sketch (e.g. N tiny): shift by the smallest eigenvalue
        ev = torch.linalg.eigvalsh(b)
        chol = torch.linalg.cholesky(b + (abs(float(ev[0])) + nu) * torch.eye(k, **f64))
    e = torch.linalg.solve_triangular(chol, y_nu.T, upper=False).T  # (D, k)
    u, s, _ = torch.linalg.svd(e, full_matrices=False)
    lam = (s * s - nu).clamp_(min=0)[:r]
    factor = u[:, :r] * lam.sqrt()
    resid = (var - (factor * factor).sum(1)).clamp_(min=jitter)
    return GaussianInit(shape, mean.float(), "lowrank", factor=factor.float(), diag_sqrt=resid.sqrt().float(),
                        meta={"n": n, "rank": r, "jitter": jitter})
