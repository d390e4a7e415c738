"""Evaluation of a trained checkpoint: ``python -m fastebm.eval --ckpt RUN/ckpt.pt --task ...``.

Reproduces the measurements of the M-EBM paper (Yang & Ji, "M-EBM: Towards Understanding the
Manifolds of Energy-Based Models") from a checkpoint written by :class:`fastebm.trainer.Trainer`.
Each task writes ``<task>.json`` (its numbers) and, where a picture helps, PNG files into ``--out``
(default: ``eval/`` next to the checkpoint).

Tasks (``--task``, one or several, space- or comma-separated):

======  ===========================================================================================
fid     FID of generated images against the real data (pytorch-fid's InceptionV3, FID weights)
is      Inception Score of generated images (shuffled splits, ``--splits``)
gen     fresh SGLD samples from p0 (and class-conditional ones for mjem/jem): PNG grids and .npz
acc     test accuracy and cross-entropy loss (classifier models mjem/jem)
ece     expected calibration error and a reliability diagram (classifier models)
ood     AUROC in-distribution test set vs ``--ood-dataset`` for log p(x), max softmax, grad norm
logpx   per-class histograms of log p(x) = -E(x) on the test set (the paper's Fig. 6)
tsne    t-SNE of penultimate features of real x+, initial x0 ~ p0 and buffer x- (the paper's Fig. 4)
======  ===========================================================================================

Examples::

    python -m fastebm.eval --ckpt runs/cifar10-mjem-k5/ckpt.pt --task acc ece
    python -m fastebm.eval --ckpt RUN/ckpt.pt --task fid is --source buffer --keep-ratio 0.1
    python -m fastebm.eval --ckpt RUN/ckpt.pt --task fid --source chains --sgld-steps 100 --n-samples 10000
    python -m fastebm.eval --ckpt RUN/ckpt.pt --task ood --ood-dataset folder --ood-root /data/svhn-jpg
    python -m fastebm.eval --ckpt RUN/ckpt.pt --task gen logpx tsne --out /tmp/eval

Conventions and choices:

* Images are float (N, 3, H, W) in [-1, 1]; E(x) low = likely, log p(x) = -E(x) + const.
* Scoring (acc, ece, ood, logpx, tsne, buffer filtering) runs the network in eval mode (BatchNorm
  running statistics) without gradients (except the input gradient of the ood grad-norm score);
  the model's train/eval mode and ``requires_grad`` flags are restored afterwards.
* SGLD (gen, ``--source chains``) uses the checkpoint's SGLD settings (step size, noise, gradient
  clamp, x clamp, BatchNorm mode); with ``sgld_bn = batch`` the chains see batch statistics as in
  training (running statistics are left unchanged).  ``--sgld-steps`` defaults to the training K.
* FID real-data statistics are cached in ``--stats-cache`` (default ``$FASTEBM_CACHE/fid_stats``,
  else ``~/.cache/fastebm/fid_stats``) as ``fid_stats_<dataset>_<split>_<n>[_random-inception]_
  <key>.npz``; ``<key>`` hashes the data root, image size, per-class limit and the Inception weights
  file, so statistics of different folders or weights never collide.
* Buffer filtering (``--keep-ratio``, classifier models), as the JEM++ / M-EBM reference code's
  ``cond_is_fid``: each buffer image is assigned its predicted class argmax p(y|x); within each
  predicted class the images are sorted by confidence max p(y|x) and the top
  ``floor(ratio * n_class)`` kept (ratio in (0, 1]); a ratio > 1 keeps the top ``int(ratio)`` per
  class (the reference's "images per category").
* OOD scores are oriented so that in-distribution inputs score higher (AUROC 1 = perfect):
  ``logpx`` = -E(x); ``max_softmax`` = max_y p(y|x) (Hendrycks & Gimpel 2017); ``grad_norm`` =
  -||dE/dx||_2 = -||d log p(x)/dx||_2 (the sign of JEM's OOD code, Grathwohl et al. 2020: data
  points sit near modes where the gradient is small).  The sign is fixed, never chosen from data.
* ``--random-inception`` (hidden, for tests and smoke runs): a randomly initialised Inception, no
  weights file needed.  Its FID / IS numbers are meaningless.

Exit status: 0 done, 2 bad input (one line ``python -m fastebm.eval: error: ...`` on stderr).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import warnings

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint
from .config import Config, resolve
from .data import DATASETS, DatasetError, ImageSet, load_dataset, to_float, to_uint8
from .init import p0_from_state_dict
from .model import EnergyModel, build_model
from .sampler import SGLDConfig, sampling_mode, sgld
from .trainer import resolve_device

__all__ = ["TASKS", "EvalError", "Run", "load_run", "filter_by_confidence", "sample_chains",
           "task_fid_is", "task_gen", "task_acc", "task_ece", "task_ood", "task_logpx", "task_tsne",
           "run_tasks", "build_parser", "main"]

TASKS = ("fid", "is", "gen", "acc", "ece", "ood", "logpx", "tsne")
PROG = "python -m fastebm.eval"
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class EvalError(ValueError):
    """Bad input for an evaluation (wrong model kind for a task, bad option value, ...)."""


# --------------------------------------------------------------------------------------------------
# the checkpoint
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """A trained run loaded for evaluation.

    Attributes:
        cfg: the checkpoint's :class:`Config` (with ``--dataset`` / ``--data-root`` overrides).
        model: the :class:`EnergyModel` on ``device``, in eval mode.
        p0: the initial distribution (``sample(n, device) -> (n, C, H, W)`` float32 in [-1, 1]).
        buffer: replay-buffer samples (|B|, C, H, W) float32 on the CPU.
        device: torch device of the model.
        ckpt: path of the checkpoint; iteration: training iterations done.
    """

    cfg: Config
    model: EnergyModel
    p0: object
    buffer: torch.Tensor
    device: torch.device
    ckpt: str
    iteration: int

    @property
    def has_classifier(self) -> bool:
        return self.model.has_classifier


def _resolve_device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as e:
        raise EvalError(str(e)) from None


def load_run(ckpt_path: str, device: str = "auto", dataset: str | None = None,
             data_root: str | None = None, max_per_class: int | None = None) -> Run:
    """Load model, p0 and replay buffer of a fastebm checkpoint for evaluation.

    Args:
        ckpt_path: ``RUN/ckpt.pt`` written by :meth:`fastebm.trainer.Trainer.save_checkpoint`.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:N``.
        dataset, data_root, max_per_class: override the checkpoint's data settings (None: keep).

    Returns:
        a :class:`Run` with the model in eval mode.

    Raises:
        CheckpointError: missing/unreadable file, or weights that do not fit the stored architecture.
        EvalError: bad device, unknown dataset.
    """
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    names = {f.name for f in dataclasses.fields(Config)}
    stored = {k: v for k, v in ckpt["config"].items() if k in names}
    for key, value in (("dataset", dataset), ("data_root", data_root), ("max_per_class", max_per_class)):
        if value is not None:
            stored[key] = value
    if stored.get("dataset") not in DATASETS:
        raise EvalError(f"--dataset: expected one of {list(DATASETS)}, got {stored.get('dataset')!r}")
    try:
        cfg = resolve(stored)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {ckpt_path!r}: stored configuration is invalid: {e}") from None
    dev = _resolve_device(device)
    model = build_model(cfg)
    state = {k.replace("_orig_mod.", ""): v for k, v in ckpt["model"].items()}  # torch.compile prefix
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {ckpt_path!r}: weights do not fit the stored architecture "
                              f"{cfg.arch()}: {str(e).splitlines()[0]}") from None
    model.to(dev).eval()
    p0 = p0_from_state_dict(ckpt["p0"]).to(dev) if "p0" in ckpt else None
    buffer = ckpt["buffer"]["samples"].float() if "buffer" in ckpt else None
    return Run(cfg, model, p0, buffer, dev, os.path.abspath(ckpt_path), int(ckpt.get("iteration", 0)))


def _require_classifier(run: Run, what: str) -> None:
    if not run.has_classifier:
        raise EvalError(f"{what} needs a classifier model (mjem or jem); this checkpoint is "
                        f"{run.cfg.model!r}, which has no p(y|x)")


def _load_split(run: Run, split: str, subset: int | None, seed: int = 0) -> ImageSet:
    """A split of the run's dataset (optionally the first ``subset`` of a fixed permutation)."""
    cfg = run.cfg
    data = load_dataset(cfg.dataset, cfg.data_root, split, False, cfg.max_per_class, cfg.image_size)
    if data.image_size != cfg.image_size:
        raise EvalError(f"dataset {cfg.dataset!r} ({split}) has {data.image_size}px images, the model "
                        f"expects {cfg.image_size}px")
    return data.subset(subset, seed)


# --------------------------------------------------------------------------------------------------
# model passes
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Eval mode inside, the previous train/eval mode restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return to_float(x) if x.dtype == torch.uint8 else x.float()


def _outputs(run: Run, images: torch.Tensor, batch_size: int, features: bool = False):
    """Energies (N,), logits (N, C) or None, and optionally features (N, F); CPU float32.

    ``images``: (N, 3, H, W) uint8 in [0, 255] or float in [-1, 1]. Eval mode, no gradients.
    """
    energies, logits, feats = [], [], []
    model = run.model
    with _eval_mode(model), torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            x = _as_float(images[i:i + batch_size].to(run.device))
            h = model.features(x)
            if features:
                feats.append(h.float().cpu())
            energies.append(model.energy_from_features(h).float().cpu())
            if model.has_classifier:
                logits.append(model.class_head(h).float().cpu())
    out = (torch.cat(energies), torch.cat(logits) if logits else None)
    return out + (torch.cat(feats),) if features else out


def _grad_norms(run: Run, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """||dE/dx||_2 per image (N,) float32 (gradient over all C*H*W inputs), eval mode, parameters
    frozen (no weight gradients)."""
    norms = []
    model = run.model
    with sampling_mode(model, "eval"):
        for i in range(0, images.shape[0], batch_size):
            x = _as_float(images[i:i + batch_size].to(run.device)).requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(model.energy(x).sum(), x)
            norms.append(g.flatten(1).norm(dim=1).float().cpu())
    return torch.cat(norms)


def sample_chains(run: Run, n: int, n_steps: int, batch_size: int, labels: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Fresh SGLD chains from p0 with the run's SGLD settings (paper Eq. 3).

    Args:
        run: the loaded run (uses ``run.p0`` and the step size / noise / clamps / BN mode of its config).
        n: number of chains; n_steps: SGLD steps (>= 1); batch_size: chains per batch.
        labels: optional (n,) int64 classes for class-conditional sampling (classifier models): chain
            i follows E(x, y_i) = -f(x)[y_i], i.e. SGLD on minus the class logit (JEM, Grathwohl et
            al. 2020, "Your classifier is secretly an energy based model", Sec. 3 / p(x|y)).

    Returns:
        (n, C, H, W) float32 on the CPU, clamped to [-1, 1] (as images).

    Raises:
        EvalError: bad n / n_steps, no p0 in the checkpoint, labels for an unconditional model.
    """
    if n < 1 or n_steps < 1:
        raise EvalError(f"SGLD sampling: expected n >= 1 chains and >= 1 steps, got n={n}, steps={n_steps}")
    if run.p0 is None:
        raise EvalError(f"checkpoint {run.ckpt!r} holds no p0 to start chains from")
    if labels is not None:
        _require_classifier(run, "class-conditional sampling")
    cfg = run.cfg
    scfg = SGLDConfig(int(n_steps), cfg.step_size, cfg.noise, cfg.grad_clip, cfg.clamp_x, cfg.sgld_bn)
    model = run.model
    out = []
    was_training = model.training
    model.train(cfg.sgld_bn == "batch")  # as in training; sgld() keeps BN running stats intact
    try:
        for i in range(0, n, batch_size):
            m = min(batch_size, n - i)
            x0 = run.p0.sample(m, device=run.device)
            energy_fn = None
            if labels is not None:
                y = labels[i:i + m].to(run.device)
                energy_fn = lambda x, y=y: -model.logits(x).gather(1, y[:, None]).squeeze(1)  # noqa: E731
            out.append(sgld(model, x0, scfg, energy_fn=energy_fn).clamp_(-1, 1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def filter_by_confidence(probs, keep_ratio: float) -> np.ndarray:
    """Indices of the most confident samples per predicted class (JEM++ / M-EBM ``cond_is_fid``).

    Each sample is assigned its predicted class ``argmax_y p(y|x)``; within each predicted class the
    samples are ranked by confidence ``max_y p(y|x)`` (ties: lower index first) and the top
    ``floor(keep_ratio * n_class)`` are kept when ``0 < keep_ratio <= 1``, the top
    ``int(keep_ratio)`` when ``keep_ratio > 1`` (a count per class, as the reference's ``--ratio``).

    Args:
        probs: (N, C) class probabilities (tensor or array; logits also work, only the order matters).
        keep_ratio: > 0.

    Returns:
        sorted int64 indices (M,) into the N samples.

    Raises:
        EvalError: ``keep_ratio`` <= 0 or not finite, probs not 2-D.
    """
    p = probs.detach().cpu().double().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, float)
    if p.ndim != 2:
        raise EvalError(f"filter_by_confidence: expected (N, C) probabilities, got shape {p.shape}")
    if not (math.isfinite(keep_ratio) and keep_ratio > 0):
        raise EvalError(f"--keep-ratio: expected a ratio in (0, 1] or a count > 1, got {keep_ratio}")
    pred, conf = p.argmax(1), p.max(1)
    keep = []
    for c in np.unique(pred):
        members = np.flatnonzero(pred == c)
        k = int(len(members) * keep_ratio) if keep_ratio <= 1 else int(keep_ratio)
        order = np.argsort(-conf[members], kind="stable")
        keep.append(members[order[:k]])
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)


# --------------------------------------------------------------------------------------------------
# output helpers (JSON, PIL drawings)
# --------------------------------------------------------------------------------------------------
def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None  # NaN (empty bins) -> null
    return obj


def _write_json(out: str, name: str, record: dict) -> str:
    path = os.path.join(out, name)
    with open(path, "w") as f:
        json.dump(_jsonable(record), f, indent=2, allow_nan=False)
    return path


def _draw_histograms(panels: list[dict], path: str, cols: int = 4, w: int = 260, h: int = 180) -> str:
    """Grid of histogram panels drawn with PIL (matplotlib is not a dependency).

    Each panel: ``{"title": str, "edges": (B+1,) array, "series": [(counts (B,), (r, g, b), label)]}``;
    series are drawn as translucent bars over each other, with a legend.
    """
    from PIL import Image, ImageDraw

    rows = math.ceil(len(panels) / cols)
    cols = min(cols, len(panels))
    img = Image.new("RGBA", (cols * w, rows * h), "white")
    for i, panel in enumerate(panels):
        ox, oy = (i % cols) * w, (i // cols) * h
        left, right, top, bottom = ox + 10, ox + w - 10, oy + 22, oy + h - 28
        edges = np.asarray(panel["edges"], float)
        peak = max([float(np.max(c)) for c, _, _ in panel["series"] if len(c)] + [1.0])
        lo, hi = edges[0], edges[-1]
        span = hi - lo if hi > lo else 1.0
        for counts, color, _ in panel["series"]:
            layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
            d = ImageDraw.Draw(layer)
            for b, c in enumerate(counts):
                if c <= 0:
                    continue
                x0 = left + (edges[b] - lo) / span * (right - left)
                x1 = left + (edges[b + 1] - lo) / span * (right - left)
                d.rectangle([x0, bottom - c / peak * (bottom - top), max(x1 - 1, x0), bottom],
                            fill=tuple(color) + (120,), outline=tuple(color) + (255,))
            img.alpha_composite(layer)
        d = ImageDraw.Draw(img)
        d.line([left, bottom, right, bottom], fill="black")
        d.text((left, oy + 4), str(panel["title"]), fill="black")
        d.text((left, bottom + 4), f"{lo:.3g}", fill="black")
        d.text((right - 40, bottom + 4), f"{hi:.3g}", fill="black")
        for j, (_, color, label) in enumerate(panel["series"]):
            if label:
                d.rectangle([right - 70, top + 2 + 12 * j, right - 62, top + 10 + 12 * j], fill=tuple(color))
                d.text((right - 58, top + 12 * j), str(label), fill="black")
    img.convert("RGB").save(path, format="PNG")
    return path


def _draw_scatter(points: np.ndarray, groups: np.ndarray, names: list[str], path: str, size: int = 640) -> str:
    """Scatter plot of 2-D points coloured by group, with a legend (PIL)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    margin = 30
    lo, hi = points.min(0), points.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    xy = margin + (points - lo) / span * (size - 2 * margin)
    for g in range(len(names)):
        color = _PALETTE[g % len(_PALETTE)]
        for x, y in xy[groups == g]:
            d.ellipse([x - 2.5, size - y - 2.5, x + 2.5, size - y + 2.5], fill=color)
    for g, name in enumerate(names):
        d.rectangle([8, 8 + 14 * g, 16, 16 + 14 * g], fill=_PALETTE[g % len(_PALETTE)])
        d.text((20, 6 + 14 * g), f"{name} ({int((groups == g).sum())})", fill="black")
    img.save(path, format="PNG")
    return path


def _save_npz_images(path: str, images: torch.Tensor, labels: torch.Tensor, **extra) -> str:
    """Images float [-1, 1] (N, 3, H, W) -> .npz with ``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,)."""
    u8 = to_uint8(images).permute(0, 2, 3, 1).contiguous().numpy()
    np.savez_compressed(path, images=u8, labels=labels.cpu().numpy().astype(np.int64),
                        **{k: np.asarray(v) for k, v in extra.items()})
    return path


def _save_grid(path: str, images: torch.Tensor, nrow: int) -> str:
    from torchvision.utils import save_image

    save_image(to_uint8(images).float() / 255.0, path, nrow=nrow)
    return path


def _check_range(x: torch.Tensor, what: str) -> torch.Tensor:
    """Validate (once) that images are finite and in [-1, 1] (1e-3 tolerance, then clamped)."""
    if not bool(torch.isfinite(x).all()):
        raise EvalError(f"{what}: {int((~torch.isfinite(x)).sum())} non-finite pixel values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.001 or hi > 1.001:
        raise EvalError(f"{what}: expected images in [-1, 1], got values in [{lo:.4g}, {hi:.4g}] "
                        "(trained with --no-clamp-x?)")
    return x.clamp(-1, 1)


def _common(run: Run, task: str) -> dict:
    return {"task": task, "checkpoint": run.ckpt, "iteration": run.iteration, "model": run.cfg.model,
            "dataset": run.cfg.dataset}


# --------------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------------
def _fake_images(run: Run, opts) -> tuple[torch.Tensor, dict]:
    """Generated images for FID / IS from ``--source`` (buffer or chains), validated in [-1, 1]."""
    info: dict = {"source": opts.source}
    if opts.source == "buffer":
        if run.buffer is None:
            raise EvalError(f"checkpoint {run.ckpt!r} holds no replay buffer; use --source chains")
        x = run.buffer
        if opts.keep_ratio is not None:
            _require_classifier(run, "--keep-ratio (per-class confidence filtering)")
            _, logits = _outputs(run, x, opts.batch_size)
            idx = filter_by_confidence(torch.softmax(logits.double(), 1), opts.keep_ratio)
            if len(idx) == 0:
                raise EvalError(f"--keep-ratio {opts.keep_ratio} keeps no buffer image")
            x = x[torch.from_numpy(idx)]
            info.update(keep_ratio=opts.keep_ratio, n_buffer=len(run.buffer))
        if opts.n_samples is not None and opts.n_samples < len(x):
            g = torch.Generator().manual_seed(opts.seed)
            x = x[torch.randperm(len(x), generator=g)[:opts.n_samples]]
    elif opts.source == "chains":
        n = opts.n_samples or (len(run.buffer) if run.buffer is not None else run.cfg.buffer_size)
        steps = opts.sgld_steps or run.cfg.k
        torch.manual_seed(opts.seed)
        x = sample_chains(run, n, steps, opts.batch_size)
        info.update(sgld_steps=steps)
    else:
        raise EvalError(f"--source: expected 'buffer' or 'chains', got {opts.source!r}")
    info["n_fake"] = len(x)
    return _check_range(x, f"generated images ({opts.source})"), info


def _load_inception(opts, device):
    from . import metrics

    if opts.random_inception:
        if opts.inception_weights:
            raise EvalError("--random-inception and --inception-weights are exclusive")
        warnings.warn("--random-inception: randomly initialised Inception; FID / IS numbers are "
                      "meaningless (tests and smoke runs only)", UserWarning, stacklevel=2)
        return metrics.load_inception(device=device, random_init=True), "random-init (numbers meaningless)"
    path = opts.inception_weights or metrics.default_inception_weights_path()
    try:
        model = metrics.load_inception(opts.inception_weights, device=device)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (command line: --inception-weights PATH)") from None
    return model, os.path.abspath(path)


def _stats_cache_path(run: Run, opts, split: str, n: int | str, inception_id: str) -> str:
    cfg = run.cfg
    root = os.path.abspath(cfg.data_root) if cfg.data_root else ""
    key = json.dumps([cfg.dataset, root, cfg.max_per_class, cfg.image_size, split, n, inception_id])
    if not opts.random_inception and os.path.isfile(inception_id):
        key += f":{os.path.getsize(inception_id)}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    folder = opts.stats_cache or os.path.join(
        os.environ.get("FASTEBM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fastebm")), "fid_stats")
    tag = "_random-inception" if opts.random_inception else ""
    return os.path.join(folder, f"fid_stats_{cfg.dataset}_{split}_{n}{tag}_{digest}.npz")


def task_fid_is(run: Run, opts, fid: bool = True, inception_score: bool = True) -> dict:
    """FID and / or Inception Score of generated images (the paper's Tables 1-4).

    Fake images come from ``opts.source``: ``buffer`` (the checkpoint's replay buffer, optionally
    filtered per predicted class with ``opts.keep_ratio``, see :func:`filter_by_confidence`;
    ``opts.n_samples`` draws a random subset) or ``chains`` (``opts.n_samples`` fresh chains from p0
    run for ``opts.sgld_steps`` steps, :func:`sample_chains`).  Images are validated once to be
    finite and in [-1, 1].  Real statistics: ``opts.n_real`` images (default all) of split
    ``opts.fid_split`` (default ``train``), cached (see the module docstring).  FID: Heusel et al.
    2017 via :func:`fastebm.metrics.frechet_distance`; IS: Salimans et al. 2016 with ``opts.splits``
    shuffled splits (seed ``opts.seed``).  With fewer samples than the 2048 feature dimensions the
    metrics module warns and returns a regularised (real, strongly biased) FID.

    Writes ``fid.json`` and / or ``is.json`` (the same record) in ``opts.out``.

    Returns:
        dict with ``fid`` and / or ``is_mean``, ``is_std`` (floats), ``n_fake``, ``n_real``, ...

    Raises:
        FileNotFoundError: Inception weights absent (message names where to put them).
        EvalError: bad source / filtering / sample counts.
    """
    from . import metrics

    inception, inception_id = _load_inception(opts, run.device)  # fail fast on missing weights
    fake, info = _fake_images(run, opts)
    record = {**_common(run, "fid" if fid else "is"), **info, "inception": inception_id}
    pool, probs = metrics.inception_outputs(inception, fake, batch_size=opts.batch_size, device=run.device)
    if inception_score:
        if len(fake) < opts.splits:
            raise EvalError(f"Inception Score: {len(fake)} images for --splits {opts.splits}; lower --splits")
        record["is_mean"], record["is_std"] = metrics.inception_score(probs, opts.splits, True, opts.seed)
        record["splits"] = opts.splits
    if fid:
        split = opts.fid_split
        cache = _stats_cache_path(run, opts, split, opts.n_real or "all", inception_id)
        if os.path.isfile(cache) and os.path.isfile(cache + ".json"):  # real images not even loaded
            mu_r, sigma_r = metrics.load_stats(cache)
            with open(cache + ".json") as f:
                n_real = int(json.load(f)["n_real"])
            record["real_stats_cached"] = True
        else:
            real = load_dataset(run.cfg.dataset, run.cfg.data_root, split, False, run.cfg.max_per_class,
                                run.cfg.image_size)
            real = real.subset(opts.n_real, 0)
            n_real = len(real)
            mu_r, sigma_r = metrics.compute_statistics(to_float(real.images), inception, opts.batch_size,
                                                       run.device)
            metrics.save_stats(cache, mu_r, sigma_r)
            meta = {"n_real": n_real, "dataset": run.cfg.dataset, "data_root": run.cfg.data_root,
                    "split": split, "max_per_class": run.cfg.max_per_class, "inception": inception_id}
            with open(cache + ".json", "w") as f:
                json.dump(meta, f, indent=2)
            record["real_stats_cached"] = False
        mu_f, sigma_f = metrics.activation_statistics(pool)
        record["fid"] = metrics.frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
        record.update(n_real=n_real, real_split=split, real_stats=cache)
    if min(len(fake), record.get("n_real", 10**9)) < pool.shape[1]:
        record["note"] = (f"fewer samples than the {pool.shape[1]} Inception features: covariance singular, "
                          "FID regularised and strongly biased; use >= 10k samples for reported numbers")
    if fid:
        _write_json(opts.out, "fid.json", dict(record, task="fid"))
    if inception_score:
        _write_json(opts.out, "is.json", dict(record, task="is"))
    return record


def task_gen(run: Run, opts) -> dict:
    """Fresh samples after ``opts.sgld_steps`` (default: the training K) SGLD steps from p0.

    Writes ``gen_uncond.png`` (grid) and ``gen_uncond.npz`` (``images`` uint8 (N, H, W, 3) and
    ``labels`` int64 (N,): the classifier's prediction, -1 for mebm), N = ``opts.n_samples``
    (default 64).  Classifier models (mjem, jem) also get class-conditional samples, SGLD on
    E(x, y) = -f(x)[y] (JEM, Grathwohl et al. 2020): ``gen_cond.png`` (one row per class) and
    ``gen_cond.npz`` (labels = the conditioning class), max(1, N // n_classes) per class.
    Returns and writes ``gen.json`` (paths, counts, mean energies of the samples).
    """
    n = opts.n_samples or 64
    steps = opts.sgld_steps or run.cfg.k
    torch.manual_seed(opts.seed)
    x = sample_chains(run, n, steps, opts.batch_size)
    energy, logits = _outputs(run, x, opts.batch_size)
    pred = logits.argmax(1) if logits is not None else torch.full((n,), -1, dtype=torch.long)
    record = {**_common(run, "gen"), "sgld_steps": steps, "n_uncond": n,
              "energy_uncond_mean": float(energy.mean()),
              "grid_uncond": _save_grid(os.path.join(opts.out, "gen_uncond.png"), x, nrow=int(math.ceil(n ** 0.5))),
              "npz_uncond": _save_npz_images(os.path.join(opts.out, "gen_uncond.npz"), x, pred,
                                             energy=energy.numpy())}
    if run.has_classifier:
        per = max(1, n // run.cfg.n_classes)
        y = torch.arange(run.cfg.n_classes).repeat_interleave(per)
        xc = sample_chains(run, len(y), steps, opts.batch_size, labels=y)
        _, logits_c = _outputs(run, xc, opts.batch_size)
        record.update(
            n_per_class=per, n_cond=len(y),
            cond_accuracy=float((logits_c.argmax(1) == y).float().mean()),  # do samples look like class y?
            grid_cond=_save_grid(os.path.join(opts.out, "gen_cond.png"), xc, nrow=per),
            npz_cond=_save_npz_images(os.path.join(opts.out, "gen_cond.npz"), xc, y))
    _write_json(opts.out, "gen.json", record)
    return record


def task_acc(run: Run, opts) -> dict:
    """Test accuracy and mean cross-entropy -log p(y|x) on the test split (classifier models).

    Uses ``opts.test_subset`` images (default all).  Writes ``acc.json``: ``accuracy`` in [0, 1],
    ``loss`` >= 0, ``n``, ``per_class_accuracy`` (NaN -> null for absent classes).
    Raises EvalError for mebm (no classifier).
    """
    _require_classifier(run, "task 'acc'")
    data = _load_split(run, "test", opts.test_subset)
    _, logits = _outputs(run, data.images, opts.batch_size)
    y = data.labels
    correct = (logits.argmax(1) == y).double()
    per_class = [float(correct[y == c].mean()) if bool((y == c).any()) else float("nan")
                 for c in range(run.cfg.n_classes)]
    record = {**_common(run, "acc"), "n": len(y), "accuracy": float(correct.mean()),
              "loss": float(torch.nn.functional.cross_entropy(logits.double(), y)),
              "per_class_accuracy": per_class}
    _write_json(opts.out, "acc.json", record)
    return record


def task_ece(run: Run, opts) -> dict:
    """Expected calibration error (Guo et al. 2017; the paper's calibration results) on the test
    split with ``opts.ece_bins`` equal-width bins (default 15), and ``reliability.png``.

    Writes ``ece.json``: ``ece`` in [0, 1], ``accuracy``, and the bins (edges, confidence, accuracy,
    count; empty bins null).  Raises EvalError for mebm.
    """
    from . import metrics

    _require_classifier(run, "task 'ece'")
    data = _load_split(run, "test", opts.test_subset)
    _, logits = _outputs(run, data.images, opts.batch_size)
    probs = torch.softmax(logits.double(), 1).numpy()
    ece, bins = metrics.expected_calibration_error(probs, data.labels.numpy(), n_bins=opts.ece_bins)
    png = metrics.reliability_diagram(bins, os.path.join(opts.out, "reliability.png"),
                                      title=f"{run.cfg.model} {run.cfg.dataset}")
    record = {**_common(run, "ece"), "n": len(data), "ece": ece,
              "accuracy": float((probs.argmax(1) == data.labels.numpy()).mean()), "bins": bins, "png": png}
    _write_json(opts.out, "ece.json", record)
    return record


def _ood_images(run: Run, opts) -> ImageSet:
    if not opts.ood_dataset:
        raise EvalError("task 'ood' needs --ood-dataset (and --ood-root unless it is 'digits')")
    if opts.ood_dataset not in DATASETS:
        raise EvalError(f"--ood-dataset: expected one of {list(DATASETS)}, got {opts.ood_dataset!r}")
    data = load_dataset(opts.ood_dataset, opts.ood_root, "test", False, opts.ood_max_per_class)
    data = data.subset(opts.ood_subset, 0)
    if data.image_size != run.cfg.image_size:  # e.g. 128 px CelebA-HQ vs 32 px CIFAR: resize
        from torchvision.transforms.v2.functional import resize

        data = ImageSet(resize(data.images, [run.cfg.image_size] * 2, antialias=True), data.labels,
                        data.n_classes, data.name)
    return data


def task_ood(run: Run, opts) -> dict:
    """Out-of-distribution detection: AUROC between the test split (in, positives) and
    ``opts.ood_dataset`` (test split; resized to the model's size if needed) for the scores
    (higher = more in-distribution):

    * ``logpx`` = -E(x) (unnormalised log-density, the paper's / JEM's "log p(x)");
    * ``max_softmax`` = max_y p(y|x) (classifier models; Hendrycks & Gimpel, ICLR 2017);
    * ``grad_norm`` = -||dE/dx||_2 (= -||d log p(x)/dx||, JEM's OOD code, Grathwohl et al. 2020).

    Writes ``ood.json`` (AUROC per score in [0, 1], counts, score means) and ``ood_hist.png``.
    """
    from . import metrics

    data_in = _load_split(run, "test", opts.test_subset)
    data_out = _ood_images(run, opts)
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    e_in, l_in = _outputs(run, data_in.images, opts.batch_size)
    e_out, l_out = _outputs(run, data_out.images, opts.batch_size)
    scores["logpx"] = (-e_in.numpy(), -e_out.numpy())
    if run.has_classifier:
        scores["max_softmax"] = (torch.softmax(l_in.double(), 1).max(1)[0].numpy(),
                                 torch.softmax(l_out.double(), 1).max(1)[0].numpy())
    scores["grad_norm"] = (-_grad_norms(run, data_in.images, opts.batch_size).numpy(),
                           -_grad_norms(run, data_out.images, opts.batch_size).numpy())
    record = {**_common(run, "ood"), "ood_dataset": opts.ood_dataset, "ood_root": opts.ood_root,
              "n_in": len(data_in), "n_out": len(data_out),
              "score_convention": "higher = more in-distribution: logpx=-E(x), max_softmax=max_y p(y|x), "
                                  "grad_norm=-||dE/dx||_2",
              "auroc": {}, "mean_in": {}, "mean_out": {}}
    panels = []
    for name, (s_in, s_out) in scores.items():
        record["auroc"][name] = metrics.auroc(s_in, s_out)
        record["mean_in"][name], record["mean_out"][name] = float(s_in.mean()), float(s_out.mean())
        edges = np.histogram_bin_edges(np.concatenate([s_in, s_out]), bins=opts.bins)
        panels.append({"title": f"{name}  AUROC {record['auroc'][name]:.3f}", "edges": edges,
                       "series": [(np.histogram(s_in, edges)[0], _PALETTE[0], run.cfg.dataset),
                                  (np.histogram(s_out, edges)[0], _PALETTE[3], opts.ood_dataset)]})
    record["png"] = _draw_histograms(panels, os.path.join(opts.out, "ood_hist.png"), cols=len(panels))
    _write_json(opts.out, "ood.json", record)
    return record


def task_logpx(run: Run, opts) -> dict:
    """Per-class histograms of log p(x) = -E(x) (up to the constant log Z) on the test split, by
    true label — the paper's Fig. 6.  All classes share ``opts.bins`` bin edges.

    Writes ``logpx.json`` (per class: n, mean, std, counts, and the shared edges) and ``logpx.png``
    (one panel per class).
    """
    data = _load_split(run, "test", opts.test_subset)
    energy, _ = _outputs(run, data.images, opts.batch_size)
    logp = -energy.double().numpy()
    labels = data.labels.numpy()
    edges = np.histogram_bin_edges(logp, bins=opts.bins)
    per_class, panels = {}, []
    for c in range(data.n_classes):
        v = logp[labels == c]
        counts = np.histogram(v, edges)[0]
        per_class[str(c)] = {"n": int(len(v)), "mean": float(v.mean()) if len(v) else None,
                             "std": float(v.std()) if len(v) else None, "counts": counts,
                             "edges": edges}
        mean = f"{v.mean():.3g}" if len(v) else "-"
        panels.append({"title": f"class {c}: n={len(v)} mean={mean}", "edges": edges,
                       "series": [(counts, _PALETTE[c % len(_PALETTE)], "")]})
    record = {**_common(run, "logpx"), "n": len(data), "edges": edges, "mean": float(logp.mean()),
              "std": float(logp.std()), "per_class": per_class,
              "png": _draw_histograms(panels, os.path.join(opts.out, "logpx.png"))}
    _write_json(opts.out, "logpx.json", record)
    return record


def task_tsne(run: Run, opts) -> dict:
    """t-SNE (sklearn, 2-D) of penultimate features h(x) of real x+ (training split), initial
    x0 ~ p0 and replay-buffer x- — the paper's Fig. 4.  ``opts.n_samples`` per set (default 500,
    capped by what exists).

    Writes ``tsne.png`` (one colour per set), ``tsne.npz`` (``coords`` float32 (M, 2), ``group``
    int64 (M,): 0 real, 1 p0, 2 buffer; ``names``) and ``tsne.json`` (the same as lists).
    """
    from sklearn.manifold import TSNE

    if run.buffer is None or run.p0 is None:
        raise EvalError(f"task 'tsne' needs the replay buffer and p0 stored in {run.ckpt!r}")
    n = opts.n_samples or 500
    real = _load_split(run, "train", n, seed=opts.seed)
    torch.manual_seed(opts.seed)
    x0 = run.p0.sample(n, device=run.device).cpu()
    g = torch.Generator().manual_seed(opts.seed)
    buf = run.buffer[torch.randperm(len(run.buffer), generator=g)[:n]]
    names = ["real x+", "p0 x0", "buffer x-"]
    feats, groups = [], []
    for i, imgs in enumerate((real.images, x0, buf)):
        feats.append(_outputs(run, imgs, opts.batch_size, features=True)[2].double().numpy())
        groups.append(np.full(len(imgs), i, dtype=np.int64))
    feats, groups = np.concatenate(feats), np.concatenate(groups)
    if len(feats) < 4:
        raise EvalError(f"task 'tsne': need at least 4 points, got {len(feats)}; raise --n-samples")
    perplexity = float(min(opts.perplexity, (len(feats) - 1) / 3))
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=opts.seed,
                  ).fit_transform(feats).astype(np.float32)
    npz = os.path.join(opts.out, "tsne.npz")
    np.savez_compressed(npz, coords=coords, group=groups, names=np.array(names))
    record = {**_common(run, "tsne"), "names": names, "counts": [int((groups == i).sum()) for i in range(3)],
              "perplexity": perplexity, "npz": npz,
              "png": _draw_scatter(coords, groups, names, os.path.join(opts.out, "tsne.png")),
              "coords": coords, "group": groups}
    _write_json(opts.out, "tsne.json", record)
    return record


# --------------------------------------------------------------------------------------------------
# dispatcher and command line
# --------------------------------------------------------------------------------------------------
def run_tasks(run: Run, tasks: list[str], opts) -> dict[str, dict]:
    """Run the named tasks in order (``fid`` and ``is`` share one Inception pass); returns
    task -> record.  Raises EvalError for an unknown task."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise EvalError(f"unknown task(s) {unknown}; expected some of {list(TASKS)}")
    os.makedirs(opts.out, exist_ok=True)
    single = {"gen": task_gen, "acc": task_acc, "ece": task_ece, "ood": task_ood, "logpx": task_logpx,
              "tsne": task_tsne}
    results: dict[str, dict] = {}
    for task in dict.fromkeys(tasks):  # unique, in order
        if task in ("fid", "is"):
            if task in results:
                continue
            record = task_fid_is(run, opts, fid="fid" in tasks, inception_score="is" in tasks)
            results.update({t: record for t in ("fid", "is") if t in tasks})
        else:
            results[task] = single[task](run, opts)
    return results


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m fastebm.eval`` (argparse errors are one line, exit 2)."""
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--ckpt", required=True, help="checkpoint written by fastebm.train (RUN/ckpt.pt)")
    a("--task", nargs="+", required=True, help=f"one or several of {', '.join(TASKS)}")
    a("--out", help="output folder (default: eval/ next to the checkpoint)")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    a("--batch-size", type=int, default=100, help="images per forward pass / SGLD batch")
    a("--n-samples", type=int, help="generated images (fid/is: all buffer images or |B| chains; "
      "gen: 64; tsne: 500 per set)")
    a("--seed", type=int, default=0)
    g = p.add_argument_group("data (default: the checkpoint's)")
    g.add_argument("--dataset", help=f"one of {', '.join(DATASETS)}")
    g.add_argument("--data-root")
    g.add_argument("--max-per-class", type=int, help="folder layouts: files read per class")
    g.add_argument("--test-subset", type=int, help="use this many test images (default all)")
    g = p.add_argument_group("fid / is")
    g.add_argument("--source", default="buffer", help="buffer (replay buffer) or chains (fresh SGLD from p0)")
    g.add_argument("--sgld-steps", type=int, help="SGLD steps for chains and gen (default: the training K)")
    g.add_argument("--keep-ratio", type=float, help="buffer: keep the most confident fraction per "
                   "predicted class (> 1: a count per class); classifier models")
    g.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (default: "
                   "pytorch-fid's cache, torch.hub.get_dir()/checkpoints)")
    g.add_argument("--random-inception", action="store_true", help=argparse.SUPPRESS)  # tests only
    g.add_argument("--splits", type=int, default=10, help="Inception Score splits")
    g.add_argument("--fid-split", default="train", choices=("train", "test"), help="real-data split")
    g.add_argument("--n-real", type=int, help="real images for the statistics (default all)")
    g.add_argument("--stats-cache", help="folder of cached real statistics (default "
                   "$FASTEBM_CACHE/fid_stats or ~/.cache/fastebm/fid_stats)")
    g = p.add_argument_group("ece / ood / logpx / tsne")
    g.add_argument("--ece-bins", type=int, default=15)
    g.add_argument("--ood-dataset", help=f"one of {', '.join(DATASETS)}")
    g.add_argument("--ood-root")
    g.add_argument("--ood-max-per-class", type=int)
    g.add_argument("--ood-subset", type=int, help="use this many OOD images (default all)")
    g.add_argument("--bins", type=int, default=30, help="histogram bins (ood, logpx)")
    g.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (capped by the size)")
    return p


def _check_opts(opts) -> None:
    for name in ("batch_size", "n_samples", "sgld_steps", "splits", "n_real", "ece_bins", "bins",
                 "test_subset", "ood_subset", "max_per_class", "ood_max_per_class"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise EvalError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value}")
    if opts.keep_ratio is not None and not (math.isfinite(opts.keep_ratio) and opts.keep_ratio > 0):
        raise EvalError(f"--keep-ratio: expected a ratio in (0, 1] or a count > 1, got {opts.keep_ratio}")
    if opts.perplexity <= 0:
        raise EvalError(f"--perplexity: expected a value > 0, got {opts.perplexity}")
    if opts.source not in ("buffer", "chains"):
        raise EvalError(f"--source: expected 'buffer' or 'chains', got {opts.source!r}")


def _check_finite(parser: argparse.ArgumentParser, opts) -> None:
    """Issue 11: every float option of ``parser`` (found by its type, not from a list) must be finite."""
    for action in parser._actions:
        value = getattr(opts, action.dest, None)
        if action.type is float and value is not None and not math.isfinite(value):
            raise EvalError(f"{action.option_strings[0]}: expected a finite number, got {value}")


def main(argv=None) -> int:
    """Command-line entry point; returns 0, or exits with status 2 and a one-line error."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    opts.task = [t for item in opts.task for t in item.split(",") if t]
    try:
        _check_finite(parser, opts)
        _check_opts(opts)
        unknown = [t for t in opts.task if t not in TASKS]
        if unknown:
            raise EvalError(f"unknown task(s) {unknown}; expected some of {list(TASKS)}")
        if opts.dataset is not None and opts.dataset not in DATASETS:
            raise EvalError(f"--dataset: expected one of {list(DATASETS)}, got {opts.dataset!r}")
        run = load_run(opts.ckpt, opts.device, opts.dataset, opts.data_root, opts.max_per_class)
        opts.out = opts.out or os.path.join(os.path.dirname(run.ckpt), "eval")
        for task in opts.task:  # reject model/task mismatches before any expensive work
            if task in ("acc", "ece"):
                _require_classifier(run, f"task {task!r}")
            if task in ("fid", "is") and opts.source == "buffer" and opts.keep_ratio is not None:
                _require_classifier(run, "--keep-ratio (per-class confidence filtering)")
        results = run_tasks(run, opts.task, opts)
    except (EvalError, CheckpointError, DatasetError, FileNotFoundError, ValueError) as e:
        parser.exit(2, f"{PROG}: error: {' '.join(str(e).split())}\n")
    for task, record in results.items():
        nums = {k: v for k, v in record.items()
                if isinstance(v, float) or (k == "auroc" and isinstance(v, dict))}
        print(f"{task}: {json.dumps(_jsonable(nums))}", file=sys.stderr)
    print(f"fastebm.eval: wrote {opts.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
