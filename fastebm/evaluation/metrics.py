"""Evaluation metrics: FID and Inception Score (on pytorch-fid's Inception), ECE and AUROC.

The M-EBM / M-JEM paper (Yang & Ji) reports sample quality with the Inception Score and the Fréchet
Inception Distance, calibration with the expected calibration error and OOD detection with the AUROC.
Generic parts come from well-kept libraries; each function names its reference:

* Inception network and its features: pytorch-fid's ``InceptionV3`` with the FID weights
  (``pt_inception-2015-12-05-6726825d.pth``, TensorFlow's 2015-12-05 graph), read from a local file —
  nothing is ever downloaded: :mod:`fastebm.evaluation.inception` (streamed statistics of a large set:
  :mod:`fastebm.evaluation.fidstats`).
* FID: ``pytorch_fid.fid_score.calculate_frechet_distance`` on pool3 statistics (Heusel et al. 2017).
* IS: softmax of the *unbiased* logits pool3 · Wᵀ (no fc bias), as the reference code
  (openai/improved-gan ``inception_score.py``, the MatMul before the bias add) and torch-fidelity
  (``logits_unbiased``); splits and shuffle as torch-fidelity's ``isc_features_to_metric``.
* AUROC: ``sklearn.metrics.roc_auc_score``.  ECE: Guo et al. 2017, equal-width bins.

Images are float (N, 3, H, W) in [-1, 1]; statistics are float64 NumPy; results are Python floats.
"""
from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import torch

PLOTS_HINT = "figures need matplotlib: pip install 'fastebm[plots]' (or pip install matplotlib)"


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend.

    Raises:
        ImportError: matplotlib is not installed; the one-line message says what to install.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError(PLOTS_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------- IS and FID
def inception_score(logits, splits: int = 10, shuffle: bool = True, seed: int = 0) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) ‖ p(y))), mean and population std over ``splits``.

    Salimans et al. 2016 (openai/improved-gan ``inception_score.py``), with p(y|x) = softmax of the
    unbiased logits; split i holds rows [i·N//splits, (i+1)·N//splits) after a shuffle with
    ``np.random.RandomState(seed).permutation(N)`` — torch-fidelity's ``isc_features_to_metric``
    convention, so the same seed gives torch-fidelity's number.

    Args:
        logits: (N, C) unbiased logits (array or tensor), N >= splits.
        splits: >= 1. shuffle: permute before splitting. seed: permutation seed.

    Returns:
        ``(mean, std)`` Python floats, 1 <= IS <= C.

    Raises:
        ValueError: logits not 2-D / non-finite, splits < 1 or > N.
    """
    z = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).double().cpu()
    if z.ndim != 2 or not bool(torch.isfinite(z).all()):
        raise ValueError(f"logits: expected a finite (N, C) array, got shape {tuple(z.shape)}")
    n = z.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits: expected 1 <= splits <= N={n}, got {splits}")
    if shuffle:
        z = z[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    p, log_p = z.softmax(1), z.log_softmax(1)
    scores = []
    for i in range(splits):
        sl = slice(i * n // splits, (i + 1) * n // splits)
        log_py = p[sl].mean(0, keepdim=True).log()
        scores.append(float((p[sl] * (log_p[sl] - log_py)).sum(1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def activation_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """``(mu (F,), sigma (F, F))`` float64 of (N, F) features, N >= 2: pytorch-fid's ``np.mean`` /
    ``np.cov(rowvar=False)``. Raises ValueError for fewer than 2 rows or non-finite values."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or not np.isfinite(x).all():
        raise ValueError(f"features: expected finite (N, F) values with N >= 2, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm(a)``, the matrix only, on SciPy before and after 1.18 (which removed ``disp``)."""
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SciPy < 1.18 warns about a singular matrix; the caller checks
        out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d² = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) (Heusel et al. 2017): pytorch-fid 0.3.0's
    ``calculate_frechet_distance`` step for step (SciPy's ``sqrtm`` of Σ1 Σ2; a non-finite square root is
    taken again of (Σ1 + εI)(Σ2 + εI); an imaginary part above 1e-3 on the diagonal raises), without the
    ``disp`` argument that SciPy 1.18 removed and pytorch-fid still passes. Equal to pytorch-fid's on the same
    inputs (tests/test_metrics.py). Raises ValueError("Imaginary component ...")."""
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """FID (Heusel et al. 2017) by :func:`calculate_frechet_distance` (pytorch-fid's algorithm).

    When the product of the covariances is too singular (fewer samples than the 2048 features; "Imaginary
    component"), it is computed on sigma + eps·I (both) and a UserWarning says so: such an FID is strongly
    biased; use >= 10k samples for reported numbers.

    Raises:
        ValueError: shapes differ ((F,), (F, F) for both).
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    f = mu1.shape[0]
    if mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(f"frechet_distance: expected mu (F,) and sigma (F, F) for both, got {mu1.shape}, "
                         f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}")

    def call(s1, s2):
        return calculate_frechet_distance(mu1, s1, mu2, s2, eps=eps)

    try:
        return call(sigma1, sigma2)
    except ValueError as e:
        if "Imaginary" not in str(e):
            raise
    warnings.warn(f"frechet_distance: singular covariance product ({f} features; too few samples?); "
                  f"adding eps={eps:g} to both diagonals", UserWarning, stacklevel=2)
    return call(sigma1 + eps * np.eye(f), sigma2 + eps * np.eye(f))


def save_stats(path: str, mu, sigma) -> str:
    """FID statistics to an .npz with ``mu`` / ``sigma`` (pytorch-fid's ``--save-stats`` layout),
    written to a temporary name and renamed; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "wb") as fh:
        np.savez(fh, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
    os.replace(tmp, path)
    return path


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mu (F,), sigma (F, F))`` float64 from an .npz of :func:`save_stats` or pytorch-fid.

    Raises:
        FileNotFoundError: no file.
        ValueError: a damaged file (not a readable .npz: cut short, a bad checksum, pickled objects) or one
            without finite ``mu`` (F,) and ``sigma`` (F, F) arrays; the message names the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID statistics file not found: {path!r}")
    try:
        with np.load(path) as data:  # allow_pickle=False: no object arrays
            if "mu" not in data.files or "sigma" not in data.files:
                raise ValueError(f"expected arrays 'mu' and 'sigma', got {sorted(data.files)}")
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, EOFError, ValueError...: a damaged file
        raise ValueError(f"{path!r}: not readable FID statistics ({type(e).__name__}: {e})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path!r}: expected finite mu (F,) and sigma (F, F), got shapes {mu.shape} and {sigma.shape}")
    return mu, sigma


# ------------------------------------------------------------------------------------- calibration, OOD
def expected_calibration_error(probs, labels, n_bins: int = 15) -> tuple[float, dict]:
    """ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over equal-width confidence bins (Guo et al., ICML 2017).

    Confidence = max_y p(y|x), prediction = argmax; bin b holds confidences in (b/n, (b+1)/n].

    Args:
        probs: (N, C) probabilities (rows sum to 1 within 1e-3). labels: (N,) ints in [0, C). n_bins: >= 1.

    Returns:
        ``(ece, bins)``: ece in [0, 1]; bins = ``edges`` (n_bins+1,), ``confidence`` / ``accuracy``
        (n_bins,) means (NaN when empty), ``count`` (n_bins,) int64.

    Raises:
        ValueError: shapes, non-probabilities (logits?), labels out of range, n_bins < 1.
    """
    p, y = np.asarray(probs, np.float64), np.asarray(labels)
    if p.ndim != 2 or y.shape != (p.shape[0],) or p.shape[0] == 0:
        raise ValueError(f"probs / labels: expected shapes (N, C) and (N,), N >= 1, got {p.shape} and {y.shape}")
    if not np.isfinite(p).all() or p.min() < 0 or np.abs(p.sum(1) - 1).max() > 1e-3:
        raise ValueError("probs: expected rows of probabilities summing to 1 (logits? apply softmax first)")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels: expected integers in [0, {p.shape[1]}), got {y.dtype} {y.min()}..{y.max()}")
    if n_bins < 1:
        raise ValueError(f"n_bins: expected >= 1, got {n_bins}")
    conf, correct = p.max(1), (p.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges[1:], conf, side="left"), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        mean_acc = np.bincount(idx, correct, n_bins) / count
    gap = np.where(count > 0, np.abs(mean_acc - mean_conf), 0.0)
    ece = float((count / len(y) * gap).sum())
    return ece, {"edges": edges, "confidence": mean_conf, "accuracy": mean_acc, "count": count.astype(np.int64)}


def reliability_diagram(bins: dict, path: str, title: str | None = None) -> str:
    """Reliability diagram (Guo et al. 2017, Fig. 1) of :func:`expected_calibration_error`'s bins, with
    matplotlib: accuracy bars, gaps to the bin confidence, the diagonal. Returns the PNG path.
    Raises ImportError (one line) without matplotlib."""
    plt = pyplot()
    edges, acc, conf = bins["edges"], np.nan_to_num(bins["accuracy"]), np.nan_to_num(bins["confidence"])
    width = np.diff(edges)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar(edges[:-1], acc, width, align="edge", edgecolor="k", label="accuracy")
    ax.bar(edges[:-1], conf - acc, width, bottom=acc, align="edge", color="r", alpha=0.3, label="gap")
    ax.plot([0, 1], [0, 1], "k--")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def auroc(scores_in, scores_out) -> float:
    """AUROC of in-distribution (positives, higher scores) vs OOD samples: ``sklearn.metrics.roc_auc_score``.

    Args:
        scores_in, scores_out: non-empty 1-D finite scores (e.g. log p(x) = -E(x)).

    Returns:
        a float in [0, 1] (0.5 chance). Raises ValueError for empty, non-1-D or non-finite scores.
    """
    from sklearn.metrics import roc_auc_score

    s_in, s_out = np.asarray(scores_in, np.float64), np.asarray(scores_out, np.float64)
    for name, s in (("scores_in", s_in), ("scores_out", s_out)):
        if s.ndim != 1 or len(s) == 0 or not np.isfinite(s).all():
            raise ValueError(f"{name}: expected a non-empty finite 1-D array, got shape {s.shape}")
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    return float(roc_auc_score(y, np.r_[s_in, s_out]))
