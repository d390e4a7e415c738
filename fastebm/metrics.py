"""Evaluation metrics for energy-based image models: FID, Inception Score, ECE and AUROC.

The M-EBM / M-JEM paper (Yang & Ji, "M-EBM: Towards Understanding the Manifolds of Energy-Based
Models") reports sample quality with the Inception Score and the Fréchet Inception Distance,
classifier calibration with the expected calibration error, and out-of-distribution detection
with the AUROC of scores such as log p(x) = -E(x) + const.  This module computes them.

Conventions (shared with the rest of :mod:`fastebm`):

* images are float tensors of shape (N, 3, H, W) with values in [-1, 1];
* energies E(x) are low for likely inputs; the OOD score for "in-distribution" is typically
  ``-E(x)``, so larger scores mean "more in-distribution" (see :func:`auroc`).

Inception network: pytorch-fid's ``InceptionV3`` with the FID weights
(``pt_inception-2015-12-05-6726825d.pth``, a port of TensorFlow's 2015-12-05 Inception graph used by
the reference FID and IS code).  Nothing is ever downloaded: :func:`load_inception` reads the
weights from a local file and raises :class:`FileNotFoundError` when it is absent.

Numbers: statistics and distances are computed in float64 NumPy; public functions return plain
Python floats.
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "default_inception_weights_path",
    "frechet_distance",
    "activation_statistics",
    "InceptionOutputs",
    "load_inception",
    "inception_outputs",
    "inception_score",
    "compute_statistics",
    "compute_fid",
    "fid_from_images",
    "fid_and_inception_score",
    "save_stats",
    "load_stats",
    "expected_calibration_error",
    "reliability_diagram",
    "auroc",
]

#: File name of pytorch-fid's port of the FID Inception weights (the same name pytorch-fid's own
#: downloader stores under ``torch.hub.get_dir()/checkpoints``).
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
#: Where that file can be obtained (on a machine with internet access); never fetched here.
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILENAME
)

# Tolerance for images that should lie in [-1, 1] (float rounding of e.g. (x / 127.5) - 1 or of
# a clamp done in a lower precision); values within it are clamped, values beyond it rejected.
_RANGE_TOL = 1e-3


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Torch tensor / array-like -> NumPy array (no dtype change beyond what NumPy infers)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: expected an array or tensor, got {type(x).__name__}") from exc


def _float64(x: Any, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    ):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries")


def _check_probs(probs: Any, name: str = "probs", atol: float = 1e-3) -> np.ndarray:
    """Validate an (N, C) matrix of probabilities (rows summing to 1) and return it as float64."""
    p = _float64(probs, name)
    if p.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (N, C), got shape {p.shape}")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{name}: expected N >= 1 rows and C >= 1 columns, got shape {p.shape}")
    _check_finite(p, name)
    if p.min() < 0.0 or p.max() > 1.0 + atol:
        raise ValueError(
            f"{name}: expected probabilities in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}]"
            " (logits? apply softmax first)"
        )
    sums = p.sum(axis=1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > atol:
        raise ValueError(
            f"{name}: expected each row to sum to 1 (within {atol}), got row sums in "
            f"[{sums.min():.4g}, {sums.max():.4g}] (logits or unnormalised scores? apply softmax)"
        )
    return p


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer)):
        return np.random.default_rng(seed)
    raise ValueError(f"seed: expected an int, a numpy Generator or None, got {type(seed).__name__}")


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------------
def _sqrtm(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its deprecated ``disp`` argument (SciPy >= 1.16) and without
    the console message older SciPy prints for inaccurate results."""
    from scipy import linalg

    major_minor = tuple(int(p) for p in __import__("scipy").__version__.split(".")[:2])
    if major_minor >= (1, 16):
        return linalg.sqrtm(a)
    return linalg.sqrtm(a, disp=False)[0]


def _check_gaussian(mu: Any, sigma: Any, i: int) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(_float64(mu, f"mu{i}"))
    sigma = np.atleast_2d(_float64(sigma, f"sigma{i}"))
    if mu.ndim != 1:
        raise ValueError(f"mu{i}: expected a 1-D mean vector of shape (F,), got shape {mu.shape}")
    f = mu.shape[0]
    if sigma.shape != (f, f):
        raise ValueError(
            f"sigma{i}: expected a covariance of shape ({f}, {f}) to match mu{i} of shape ({f},), "
            f"got shape {sigma.shape}"
        )
    _check_finite(mu, f"mu{i}")
    _check_finite(sigma, f"sigma{i}")
    scale = float(np.max(np.abs(sigma))) if sigma.size else 0.0
    if not np.allclose(sigma, sigma.T, rtol=1e-5, atol=1e-8 * max(scale, 1e-300)):
        raise ValueError(f"sigma{i}: expected a symmetric covariance matrix, got a non-symmetric one")
    return mu, sigma


def frechet_distance(
    mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6
) -> float:
    """Fréchet (2-Wasserstein) distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})`` — the FID when the
    statistics are those of Inception pool3 features (Heusel et al., "GANs Trained by a Two
    Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017; numerics follow
    pytorch-fid's ``calculate_frechet_distance``, the "stable version" by D. J. Sutherland).

    Args:
        mu1, mu2: mean vectors, shape (F,), any real dtype (NumPy array or torch tensor).
        sigma1, sigma2: symmetric positive semi-definite covariance matrices, shape (F, F).
        eps: the value added to the diagonal of *both* covariances when regularising (absolute,
            as in pytorch-fid; default 1e-6).

    Returns:
        The distance as a real, finite Python ``float`` (>= 0).  It is the squared distance, as
        FID is conventionally reported.

    Numerics (all in float64):
        Normally the matrix square root is taken with ``scipy.linalg.sqrtm`` of
        ``sigma1 @ sigma2``, as pytorch-fid does (results agree with it to ~1e-10).  When either
        covariance is numerically singular (smallest eigenvalue <= 1e-10 x largest, e.g. fewer
        samples than feature dimensions) or that square root has non-finite entries or a
        non-negligible imaginary part (> 1e-10 x its largest real entry), a :class:`UserWarning`
        is issued and the distance is computed between N(mu1, sigma1 + eps I) and
        N(mu2, sigma2 + eps I).  Unlike pytorch-fid, the traces are taken of the regularised
        covariances too, so identical statistics still give ~0 rather than -2·F·eps.  In that
        regularised case tr sqrt(S1 S2) is computed as the sum of the square roots of the
        eigenvalues of the similar symmetric PSD matrix S1^1/2 S2 S1^1/2 (eigenvalues clipped at
        0), which is always real (``sqrtm`` of an ill-conditioned product can return complex or
        non-finite values).  A slightly negative result from rounding is clipped to 0.0 (with a warning if it
        is below -1e-6 x the total variance).  A singular or near-singular product never raises.

    Raises:
        ValueError: if shapes do not match ((F,), (F, F)), values are not finite, a covariance is
            not symmetric (rtol 1e-5), has a clearly negative eigenvalue (< -1e-3 x largest; not a
            covariance matrix), or ``eps`` is not a finite number >= 0.
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, 1)
    mu2, sigma2 = _check_gaussian(mu2, sigma2, 2)
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"mu1 and mu2: expected the same feature dimension, got shapes {mu1.shape} and {mu2.shape}"
        )
    if not (isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
    n_feat = mu1.shape[0]

    w1, w2 = np.linalg.eigvalsh(sigma1), np.linalg.eigvalsh(sigma2)
    problems: list[str] = []
    for i, ev in ((1, w1), (2, w2)):
        top = float(np.max(np.abs(ev)))
        if ev[0] < -1e-3 * top:
            raise ValueError(
                f"sigma{i}: expected a positive semi-definite covariance matrix, got smallest "
                f"eigenvalue {ev[0]:.4g} (largest |eigenvalue| {top:.4g})"
            )
        if ev[0] <= 1e-10 * top:
            problems.append(
                f"sigma{i} is numerically singular (eigenvalues from {ev[0]:.3g} to {ev[-1]:.3g}; "
                "fewer samples than feature dimensions?)"
            )

    tr_covmean = 0.0
    if not problems:
        covmean = _sqrtm(sigma1 @ sigma2)
        if not np.all(np.isfinite(covmean)):
            problems.append("the square root of sigma1 @ sigma2 has non-finite entries")
        elif np.iscomplexobj(covmean) and np.max(np.abs(covmean.imag)) > 1e-10 * max(
            float(np.max(np.abs(covmean.real))), 1e-300
        ):
            problems.append(
                "the square root of sigma1 @ sigma2 has an imaginary part "
                f"(max {np.max(np.abs(covmean.imag)):.3g})"
            )
        else:
            tr_covmean = float(np.trace(covmean.real if np.iscomplexobj(covmean) else covmean))

    if problems:
        warnings.warn(
            "frechet_distance: " + "; ".join(problems) + f"; adding eps={eps:g} to the diagonal of "
            "both covariance matrices",
            UserWarning,
            stacklevel=2,
        )
        sigma1 = sigma1 + np.eye(n_feat) * eps
        sigma2 = sigma2 + np.eye(n_feat) * eps
        # tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2): the latter matrix is symmetric PSD, so the
        # trace is the sum of the square roots of its (clipped) eigenvalues -- always real.
        w1, v1 = np.linalg.eigh(sigma1)
        root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
        m = root1 @ sigma2 @ root1
        ev = np.linalg.eigvalsh((m + m.T) / 2.0)
        tr_covmean = float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))

    diff = mu1 - mu2
    dist = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    if not math.isfinite(dist):  # pragma: no cover - inputs are finite, so this needs overflow
        raise ValueError(f"frechet_distance: the result overflowed ({dist}); rescale the inputs")
    if dist < 0.0:
        scale = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2))
        if dist < -1e-6 * max(scale, 1e-300):
            warnings.warn(
                f"frechet_distance: got a negative distance {dist:.4g} (scale {scale:.4g}); "
                "clipping to 0",
                UserWarning,
                stacklevel=2,
            )
        dist = 0.0
    return dist


def activation_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a set of feature vectors, in float64 (pytorch-fid's convention:
    ``np.mean(axis=0)`` and ``np.cov(rowvar=False)``, i.e. the unbiased N-1 covariance).

    Args:
        features: (N, F) array or tensor of real numbers, N >= 2 (e.g. Inception pool3 features).

    Returns:
        ``(mu, sigma)``: float64 NumPy arrays of shapes (F,) and (F, F).

    Warns:
        UserWarning when N <= F: the covariance then has rank <= N - 1 < F and is singular, so
        the Fréchet distance will need regularising (and FID from so few samples is strongly
        biased; the usual protocol uses 10k-50k samples for F = 2048).

    Raises:
        ValueError: if ``features`` is not 2-D, has fewer than 2 rows, or has non-finite values.

    Source: Heusel et al., NeurIPS 2017 (FID); pytorch-fid ``calculate_activation_statistics``.
    """
    x = _float64(features, "features")
    if x.ndim != 2:
        raise ValueError(f"features: expected a 2-D array of shape (N, F), got shape {x.shape}")
    n, f = x.shape
    if n < 2 or f < 1:
        raise ValueError(
            f"features: expected at least 2 samples and 1 feature to estimate a covariance, got shape {x.shape}"
        )
    _check_finite(x, "features")
    if n <= f:
        warnings.warn(
            f"activation_statistics: only N={n} samples for F={f} feature dimensions; the "
            f"covariance has rank <= {n - 1} < {f} and is singular",
            UserWarning,
            stacklevel=2,
        )
    mu = x.mean(axis=0)
    sigma = np.atleast_2d(np.cov(x, rowvar=False))
    return mu, sigma


# --------------------------------------------------------------------------------------------------
# Inception network (pytorch-fid's FID InceptionV3) giving pool3 features and 1008-class logits
# --------------------------------------------------------------------------------------------------
class InceptionOutputs(nn.Module):
    """pytorch-fid's ``InceptionV3`` (pool3 output block) plus the FID Inception's ``fc`` layer.

    ``forward(x)`` takes images of shape (B, 3, H, W) with values in **[0, 1]** (pytorch-fid's
    convention; it resizes to 299 x 299 bilinearly and rescales to [-1, 1] internally) and returns
    ``(pool, logits)``: the 2048-d pool3 features (B, 2048) used by FID and the 1008-class logits
    (B, 1008) of the same forward pass, used by the Inception Score.  Use
    :func:`inception_outputs` to feed it images in the package's [-1, 1] range.
    """

    def __init__(self, inception: nn.Module, fc: nn.Linear):
        super().__init__()
        self.inception = inception
        self.fc = fc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.inception(x)[0].flatten(1)
        return pool, self.fc(pool)


def default_inception_weights_path() -> str:
    """Where pytorch-fid's downloader caches the FID weights: ``torch.hub.get_dir()/checkpoints/
    pt_inception-2015-12-05-6726825d.pth`` (``torch.hub.get_dir()`` honours ``$TORCH_HOME``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", FID_WEIGHTS_FILENAME)


_BUILD_LOCK = threading.Lock()


def _random_fid_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A state dict for the FID Inception architecture with random, scale-preserving weights.

    The FID Inception only overrides ``forward`` of torchvision's Inception blocks, so torchvision's
    ``inception_v3(num_classes=1008, aux_logits=False)`` has exactly the same parameter names and
    shapes.  Conv weights are He-normal (fan-in) so activations stay O(1) through the ~50 layers
    (torchvision's own truncated-normal init makes them grow to ~1e10 with BatchNorm at its
    default running statistics); the fc layer is N(0, 1/2048)."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.inception_v3(
            weights=None, aux_logits=False, num_classes=1008, init_weights=False
        )
        for mod in net.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            elif isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=mod.in_features ** -0.5)
                nn.init.zeros_(mod.bias)
    return net.state_dict()


def load_inception(
    weights_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    random_init: bool = False,
    seed: int = 0,
) -> InceptionOutputs:
    """Build pytorch-fid's FID InceptionV3 from a local weights file; never downloads anything.

    pytorch-fid's constructor fetches the weights with ``load_state_dict_from_url``; here that call
    is intercepted (while the model is built, under a lock) and answered from the local file, so
    pytorch-fid's own architecture patches and its strict ``load_state_dict`` still run.

    Args:
        weights_path: path of ``pt_inception-2015-12-05-6726825d.pth``.  ``None`` looks in
            pytorch-fid's cache location, :func:`default_inception_weights_path`
            (``torch.hub.get_dir()/checkpoints/``).
        device: where to put the model.
        random_init: build the same architecture with random weights instead (for tests and
            smoke runs — its features are meaningless for FID/IS); no file is read.
        seed: seed of the random weights when ``random_init`` (the global RNG is left untouched).

    Returns:
        An :class:`InceptionOutputs` module in eval mode without gradients: ``forward`` on [0, 1]
        images gives ``(pool3 (B, 2048), logits (B, 1008))``.

    Raises:
        FileNotFoundError: the weights file is absent; the message names the path looked at, the
            cache folder to put the file in and the URL to fetch it from (on another machine).
        ValueError: ``random_init=True`` together with a ``weights_path``.
        RuntimeError: the installed pytorch-fid does not expose the hooks used here.
    """
    import pytorch_fid.inception as pfi

    if random_init:
        if weights_path is not None:
            raise ValueError(
                f"load_inception: expected either weights_path or random_init=True, got both "
                f"(weights_path={str(weights_path)!r})"
            )

        def get_state_dict() -> dict[str, torch.Tensor]:
            return _random_fid_state_dict(seed)

    else:
        path = os.fspath(weights_path) if weights_path is not None else default_inception_weights_path()
        if not os.path.isfile(path):
            where = "weights_path" if weights_path is not None else "pytorch-fid's cache location"
            raise FileNotFoundError(
                f"FID Inception weights not found: looked at {path!r} ({where}). Nothing is "
                f"downloaded at run time. Put {FID_WEIGHTS_FILENAME} (from {FID_WEIGHTS_URL}) at "
                f"{default_inception_weights_path()!r} (the folder torch.hub.get_dir()/checkpoints; "
                "set $TORCH_HOME to move it) or pass its path as weights_path."
            )

        def get_state_dict() -> dict[str, torch.Tensor]:
            return torch.load(path, map_location="cpu", weights_only=True)

    for attr in ("load_state_dict_from_url", "fid_inception_v3", "InceptionV3"):
        if not hasattr(pfi, attr):
            raise RuntimeError(
                f"load_inception: the installed pytorch-fid has no pytorch_fid.inception.{attr}; "
                "this module was written against pytorch-fid 0.3.0"
            )

    calls: list[str] = []
    built: list[nn.Module] = []
    with _BUILD_LOCK:
        orig_loader, orig_builder = pfi.load_state_dict_from_url, pfi.fid_inception_v3

        def local_loader(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
            calls.append(url)
            return get_state_dict()

        def capturing_builder(*args: Any, **kwargs: Any) -> nn.Module:
            net = orig_builder(*args, **kwargs)
            built.append(net)
            return net

        pfi.load_state_dict_from_url = local_loader
        pfi.fid_inception_v3 = capturing_builder
        try:
            inception = pfi.InceptionV3(
                output_blocks=[pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                resize_input=True,
                normalize_input=True,
                requires_grad=False,
                use_fid_inception=True,
            )
        finally:
            pfi.load_state_dict_from_url = orig_loader
            pfi.fid_inception_v3 = orig_builder
    if len(calls) != 1 or len(built) != 1:  # pragma: no cover - guards against pytorch-fid changes
        raise RuntimeError(
            "load_inception: pytorch-fid's InceptionV3 did not load its weights through "
            "load_state_dict_from_url as expected; unsupported pytorch-fid version"
        )
    fc = built[0].fc
    fc.requires_grad_(False)
    model = InceptionOutputs(inception, fc).to(device)
    model.eval()
    return model


def _check_images(images: Any) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images: expected shape (N, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("images: expected at least one image, got N=0")
    if not torch.is_floating_point(x):
        raise ValueError(
            f"images: expected a float tensor with values in [-1, 1], got dtype {x.dtype} "
            "(for uint8 images in [0, 255] use x.float() / 127.5 - 1)"
        )
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("images: expected finite values in [-1, 1], got NaN/inf")
    if lo < -1.0 - _RANGE_TOL or hi > 1.0 + _RANGE_TOL:
        hint = ""
        if hi > 2.0:
            hint = " (looks like [0, 255]; use x / 127.5 - 1)"
        raise ValueError(f"images: expected values in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]{hint}")
    if lo >= 0.0:
        warnings.warn(
            f"images: no negative values (range [{lo:.4g}, {hi:.4g}]); the expected range is "
            "[-1, 1] — if these are [0, 1] images, convert them with 2 * x - 1",
            UserWarning,
            stacklevel=3,
        )
    return x


def inception_outputs(
    model: nn.Module,
    images: Any,
    batch_size: int = 50,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Inception pool3 features and class probabilities of images in the package's [-1, 1] range.

    Each batch is mapped once from [-1, 1] to [0, 1] (``(x + 1) / 2``), which pytorch-fid's
    ``InceptionV3(normalize_input=True)`` expects; it resizes to 299 x 299 and maps back to
    [-1, 1] itself, so the network sees exactly the input the FID reference code gives it.

    Args:
        model: an :class:`InceptionOutputs` (from :func:`load_inception`) or any module mapping
            [0, 1] images (B, 3, H, W) to ``(pool (B, D), logits (B, K))``.  It is run in eval
            mode (its previous mode is restored) without gradients.
        images: (N, 3, H, W) float tensor (or array), values in [-1, 1] (values outside by at most
            1e-3 are clamped), any H, W; may live on any device.
        batch_size: images per forward pass.
        device: where batches are sent; default: the device of the model's parameters.

    Returns:
        ``(pool, probs)``: float64 NumPy arrays of shapes (N, 2048) and (N, 1008) for the FID
        Inception; ``probs`` is the softmax of the logits, computed in float64 (rows sum to 1).

    Warns:
        UserWarning if no value is negative (likely [0, 1] images passed by mistake).

    Raises:
        ValueError: wrong shape, non-float dtype (e.g. uint8), non-finite values, values outside
            [-1, 1] (e.g. [0, 255] images), or a non-positive ``batch_size``.
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    x = _check_images(images)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    pools, probs = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(device=device, dtype=torch.float32)
                xb = ((xb + 1.0) * 0.5).clamp_(0.0, 1.0)
                pool, logits = model(xb)
                pools.append(pool.reshape(pool.shape[0], -1).double().cpu())
                probs.append(torch.softmax(logits.double(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(pools).numpy(), torch.cat(probs).numpy()


# --------------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------------
def inception_score(
    probs: Any,
    splits: int = 10,
    shuffle: bool = True,
    seed: int | np.random.Generator | None = 0,
) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))``, as mean and std over ``splits`` splits.

    Source: Salimans et al., "Improved Techniques for Training GANs", NeurIPS 2016 (and its
    reference code: the marginal p(y) is the mean of p(y|x) within each split; the reported
    std is NumPy's population std, ddof=0, over the splits).

    Args:
        probs: (N, C) class probabilities p(y|x) (rows sum to 1 within 1e-3), e.g. the ``probs``
            of :func:`inception_outputs` (C = 1008).
        splits: number of splits, 1 <= splits <= N.  When N is not divisible by ``splits``, split
            i holds samples ``[i*N//splits, (i+1)*N//splits)`` (of the shuffled order), as in the
            reference code, so split sizes differ by at most one and every sample is used once.
        shuffle: randomly permute the samples before splitting (so that splits are not
            determined by the order the samples were generated in).
        seed: int, ``numpy.random.Generator`` or ``None`` (fresh OS entropy) for the permutation;
            the default 0 makes the score deterministic.

    Returns:
        ``(mean, std)`` as Python floats; 1 <= IS <= C.  0·log 0 is taken as 0.

    Raises:
        ValueError: probs not a 2-D probability matrix (e.g. logits), N < splits, splits < 1.
    """
    p = _check_probs(probs)
    splits = _check_positive_int(splits, "splits")
    n = p.shape[0]
    if n < splits:
        raise ValueError(f"inception_score: expected at least splits={splits} samples, got N={n}")
    if shuffle:
        p = p[_rng(seed).permutation(n)]
    from scipy.special import xlogy

    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        # KL(p(y|x) || p(y)) = sum_y p log p - p log p(y); xlogy gives 0 for p = 0.
        kl = (xlogy(part, part) - xlogy(part, py)).sum(axis=1)
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


# --------------------------------------------------------------------------------------------------
# FID conveniences and cached statistics
# --------------------------------------------------------------------------------------------------
def compute_statistics(
    images: Any,
    model: nn.Module,
    batch_size: int = 50,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool3 ``(mu (F,), sigma (F, F))`` (float64) of images (N, 3, H, W) in [-1, 1]; see
    :func:`inception_outputs` and :func:`activation_statistics` (errors and warnings as there).
    Save them with :func:`save_stats` to cache a dataset's statistics."""
    pool, _ = inception_outputs(model, images, batch_size=batch_size, device=device)
    return activation_statistics(pool)


def _resolve_stats(real_stats: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(real_stats, (str, os.PathLike)):
        return load_stats(real_stats)
    if isinstance(real_stats, (tuple, list)) and len(real_stats) == 2:
        return real_stats[0], real_stats[1]
    raise ValueError(
        "real_stats: expected a (mu, sigma) pair or the path of a .npz written by save_stats, "
        f"got {type(real_stats).__name__}"
    )


def compute_fid(
    real_stats: Any,
    fake_images: Any,
    model: nn.Module,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    eps: float = 1e-6,
) -> float:
    """FID between cached real-data statistics and a set of generated images.

    Args:
        real_stats: ``(mu, sigma)`` or the path of an .npz from :func:`save_stats` (or one written
            by pytorch-fid's ``--save-stats``: same ``mu`` / ``sigma`` keys).
        fake_images: (N, 3, H, W) float images in [-1, 1].
        model: from :func:`load_inception`.
        batch_size, device: as in :func:`inception_outputs`.
        eps: as in :func:`frechet_distance`.

    Returns:
        FID as a Python float (Heusel et al., NeurIPS 2017).  Comparable to published numbers
        only with the real FID weights and ~10k-50k samples.

    Raises:
        ValueError / FileNotFoundError: see :func:`inception_outputs`, :func:`load_stats` and
            :func:`frechet_distance`; also if the feature dimensions differ.
    """
    mu_r, sigma_r = _resolve_stats(real_stats)
    mu_f, sigma_f = compute_statistics(fake_images, model, batch_size=batch_size, device=device)
    return frechet_distance(mu_r, sigma_r, mu_f, sigma_f, eps=eps)


def fid_from_images(
    real_images: Any,
    fake_images: Any,
    model: nn.Module,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    eps: float = 1e-6,
) -> float:
    """FID between two sets of (N, 3, H, W) float images in [-1, 1] (sizes may differ); see
    :func:`compute_fid`."""
    real = compute_statistics(real_images, model, batch_size=batch_size, device=device)
    return compute_fid(real, fake_images, model, batch_size=batch_size, device=device, eps=eps)


def fid_and_inception_score(
    real_stats: Any,
    fake_images: Any,
    model: nn.Module,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    splits: int = 10,
    seed: int | np.random.Generator | None = 0,
    eps: float = 1e-6,
) -> dict[str, float]:
    """FID and Inception Score of generated images from a single Inception pass.

    Returns ``{"fid": ..., "is_mean": ..., "is_std": ...}`` (Python floats).  Arguments as in
    :func:`compute_fid` and :func:`inception_score` (splits are shuffled with ``seed``).
    """
    mu_r, sigma_r = _resolve_stats(real_stats)
    pool, probs = inception_outputs(model, fake_images, batch_size=batch_size, device=device)
    mu_f, sigma_f = activation_statistics(pool)
    is_mean, is_std = inception_score(probs, splits=splits, shuffle=True, seed=seed)
    return {
        "fid": frechet_distance(mu_r, sigma_r, mu_f, sigma_f, eps=eps),
        "is_mean": is_mean,
        "is_std": is_std,
    }


def save_stats(path: str | os.PathLike, mu: Any, sigma: Any) -> str:
    """Save FID statistics to an .npz with arrays ``mu`` (F,) and ``sigma`` (F, F), float64 — the
    layout pytorch-fid's ``--save-stats`` writes and reads.

    The file is written to a temporary name and then renamed, so a concurrent reader never sees a
    half-written cache; parent folders are created.  The path is used as given (no ``.npz``
    suffix is appended).  Returns the path written.

    Raises:
        ValueError: shapes not (F,) and (F, F) or non-finite values.
    """
    mu, sigma = _check_gaussian(mu, sigma, 1)
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma)  # uncompressed: float64 covariances barely compress
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(mu (F,), sigma (F, F))`` float64 from an .npz written by :func:`save_stats` (or by
    pytorch-fid).

    Raises:
        FileNotFoundError: no file at ``path`` (the message names it).
        ValueError: the file lacks ``mu`` / ``sigma`` arrays or their shapes do not match.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID statistics file not found: {path!r}")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("mu", "sigma") if k not in data.files]
        if missing:
            raise ValueError(
                f"{path!r}: expected arrays 'mu' and 'sigma', got {sorted(data.files)} (missing {missing})"
            )
        mu, sigma = data["mu"], data["sigma"]
    mu, sigma = _check_gaussian(mu, sigma, 1)
    return mu.copy(), sigma.copy()


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------
def expected_calibration_error(
    probs: Any, labels: Any, n_bins: int = 15
) -> tuple[float, dict[str, np.ndarray]]:
    """Expected calibration error with equal-width confidence bins.

    Source: Guo et al., "On Calibration of Modern Neural Networks", ICML 2017:
    ``ECE = sum_b (|B_b| / N) |acc(B_b) - conf(B_b)|`` where the confidence of a sample is its
    largest class probability, its prediction the argmax, and bin b (1-based) holds the
    confidences in ``((b-1)/n_bins, b/n_bins]`` (bin edges ``np.linspace(0, 1, n_bins + 1)``, as
    in the paper's reference code; a confidence of exactly 0 — impossible for a max probability —
    would go to the first bin).

    Args:
        probs: (N, C) class probabilities (rows sum to 1 within 1e-3; not logits), N >= 1.
        labels: (N,) integer labels in [0, C).
        n_bins: number of bins (default 15, as in Guo et al.).

    Returns:
        ``(ece, bins)``: ``ece`` a Python float in [0, 1]; ``bins`` a dict of NumPy arrays:
        ``edges`` (n_bins + 1,), ``confidence`` (n_bins,) mean confidence per bin, ``accuracy``
        (n_bins,) accuracy per bin (both NaN for empty bins), ``count`` (n_bins,) int64.
        Pass ``bins`` to :func:`reliability_diagram`.

    Raises:
        ValueError: bad shapes, probabilities that are not probabilities, labels that are not
            integers in [0, C), or ``n_bins`` < 1.
    """
    p = _check_probs(probs)
    n_bins = _check_positive_int(n_bins, "n_bins")
    y = _to_numpy(labels, "labels")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(
            f"labels: expected shape ({p.shape[0]},) to match probs {p.shape}, got shape {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"labels: expected integer class labels, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(
            f"labels: expected values in [0, {p.shape[1]}), got values in [{y.min()}, {y.max()}]"
        )
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") on the upper edges gives the bin with lower < conf <= upper.
    idx = np.clip(np.searchsorted(edges[1:], conf, side="left"), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, sum_conf / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, sum_acc / np.maximum(count, 1), np.nan)
    nonempty = count > 0
    ece = float(np.sum(count[nonempty] / p.shape[0] * np.abs(mean_acc[nonempty] - mean_conf[nonempty])))
    bins = {"edges": edges, "confidence": mean_conf, "accuracy": mean_acc, "count": count}
    return ece, bins


def reliability_diagram(
    bins: dict[str, Any], path: str | os.PathLike, title: str | None = None, size: int = 480
) -> str:
    """Draw a reliability diagram (Guo et al., ICML 2017, Fig. 1) as a PNG with PIL.

    Blue bars: accuracy per confidence bin; red boxes: the gap to the bin's mean confidence; grey
    dashed line: perfect calibration; the ECE computed from ``bins`` is printed in the corner.
    Empty bins are left blank.

    Args:
        bins: the dict returned by :func:`expected_calibration_error` (``edges``, ``confidence``,
            ``accuracy``, ``count``).
        path: output file (PNG); parent folders are created.
        title: optional caption.
        size: width and height in pixels (>= 200).

    Returns:
        The path written.

    Raises:
        ValueError: ``bins`` lacks those keys or their lengths disagree; ``size`` < 200.
    """
    from PIL import Image, ImageDraw

    keys = ("edges", "confidence", "accuracy", "count")
    if not isinstance(bins, dict) or any(k not in bins for k in keys):
        raise ValueError(f"bins: expected a dict with keys {keys}, got {type(bins).__name__} "
                         f"{sorted(bins) if isinstance(bins, dict) else ''}")
    edges = np.asarray(bins["edges"], dtype=np.float64)
    conf = np.asarray(bins["confidence"], dtype=np.float64)
    acc = np.asarray(bins["accuracy"], dtype=np.float64)
    count = np.asarray(bins["count"], dtype=np.float64)
    nb = conf.shape[0]
    if edges.shape != (nb + 1,) or acc.shape != (nb,) or count.shape != (nb,) or nb < 1:
        raise ValueError(
            f"bins: expected edges of length n_bins+1 and confidence/accuracy/count of length "
            f"n_bins, got {edges.shape}, {conf.shape}, {acc.shape}, {count.shape}"
        )
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 200:
        raise ValueError(f"size: expected an integer >= 200, got {size!r}")
    total = count.sum()
    nonempty = count > 0
    ece = float(np.sum(count[nonempty] / total * np.abs(acc[nonempty] - conf[nonempty]))) if total else 0.0

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 50, size - 15, 30, size - 45
    w, h = right - left, bottom - top

    def px(u: float, v: float) -> tuple[float, float]:
        return left + u * w, bottom - v * h

    for t in np.linspace(0, 1, 6):  # grid and tick labels
        draw.line([px(t, 0), px(t, 1)], fill=(230, 230, 230))
        draw.line([px(0, t), px(1, t)], fill=(230, 230, 230))
        draw.text((px(t, 0)[0] - 8, bottom + 5), f"{t:.1f}", fill="black")
        draw.text((left - 30, px(0, t)[1] - 6), f"{t:.1f}", fill="black")
    for b in range(nb):
        if not nonempty[b]:
            continue
        x0, x1 = px(edges[b], 0)[0], px(edges[b + 1], 0)[0]
        draw.rectangle([x0, px(0, acc[b])[1], x1, bottom], fill=(70, 110, 200), outline=(30, 50, 120))
        lo_v, hi_v = sorted((acc[b], conf[b]))
        if hi_v - lo_v > 0:
            draw.rectangle([x0, px(0, hi_v)[1], x1, px(0, lo_v)[1]], outline=(220, 40, 40), width=2)
    # dashed diagonal
    steps = 40
    for k in range(0, steps, 2):
        draw.line([px(k / steps, k / steps), px((k + 1) / steps, (k + 1) / steps)], fill=(90, 90, 90), width=2)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left + 8, top + 6), f"ECE = {ece:.4f}", fill="black")
    draw.text((left + w // 2 - 30, size - 22), "confidence", fill="black")
    draw.text((5, 8), "accuracy" if title is None else f"accuracy   {title}", fill="black")

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path, format="PNG")
    return path


# --------------------------------------------------------------------------------------------------
# Out-of-distribution detection
# --------------------------------------------------------------------------------------------------
def auroc(scores_in: Any, scores_out: Any) -> float:
    """Area under the ROC curve for separating in-distribution from out-of-distribution inputs.

    In-distribution samples are the positive class, so scores must be *larger* for
    in-distribution inputs: use e.g. log p(x) = -E(x), the max softmax probability, or minus the
    gradient norm (the caller computes them).  AUROC = P(score_in > score_out) + 0.5 P(tie);
    1.0 = perfect separation, 0.5 = chance, 0.0 = perfectly reversed.  Computed with
    ``sklearn.metrics.roc_auc_score`` (Hendrycks & Gimpel, ICLR 2017, use it for OOD detection;
    Grathwohl et al., ICLR 2020 (JEM) and Yang & Ji report it for EBMs).

    Args:
        scores_in: 1-D array / tensor / sequence of scores of in-distribution samples (>= 1).
        scores_out: 1-D scores of out-of-distribution samples (>= 1).

    Returns:
        AUROC as a Python float in [0, 1].

    Raises:
        ValueError: a set is empty or not 1-D, or contains NaN/inf.
    """
    from sklearn.metrics import roc_auc_score

    s_in = _float64(scores_in, "scores_in")
    s_out = _float64(scores_out, "scores_out")
    for name, s in (("scores_in", s_in), ("scores_out", s_out)):
        if s.ndim != 1 or s.shape[0] == 0:
            raise ValueError(f"{name}: expected a non-empty 1-D array of scores, got shape {s.shape}")
        _check_finite(s, name)
    y = np.concatenate([np.ones(s_in.shape[0]), np.zeros(s_out.shape[0])])
    return float(roc_auc_score(y, np.concatenate([s_in, s_out])))
