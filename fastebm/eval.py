"""Evaluation of trained checkpoints: ``python -m fastebm.eval --ckpt RUN/ckpt.pt [MORE.pt ...] --task ...``.

Reproduces the measurements and figures of the M-EBM paper (Yang & Ji, "M-EBM: Towards Understanding the
Manifolds of Energy-Based Models") from checkpoints written by :class:`fastebm.trainer.Trainer`. Each task
writes ``<task>.json`` (its numbers) and PNG figures into ``--out`` (default: ``eval/`` next to the
checkpoint). With several ``--ckpt``, ``tsne`` embeds them jointly; the other tasks run per checkpoint
(into ``--out/<run folder name>`` or each checkpoint's own ``eval/``).

========  =========================================================================================
fid       FID of generated images (pytorch-fid's InceptionV3 and ``calculate_frechet_distance``)
is        Inception Score (softmax of the unbiased logits pool3 · Wᵀ, shuffled ``--splits``)
gen       fresh SGLD samples from p0 (and class-conditional ones for mjem/jem): PNG grids and .npz
acc       test accuracy and cross-entropy (classifier models)
ece       expected calibration error and a reliability diagram (classifier models)
ood       AUROC (scikit-learn) of the test set vs ``--ood-dataset`` for log p(x), max softmax, grad norm
logpx     log p(x) = -E(x) histograms per class: test data by label, buffer by predicted class (Fig. 6)
tsne      one joint t-SNE of penultimate features of x+, x0 ~ p0 and buffer x- of each checkpoint (Fig. 4)
extremes  per class, buffer samples with the highest / lowest p(x) and p(y|x) (Figs. 5, 9-17)
energy    distributions of E(x+), E(x0), E(x-) (violins and histograms)
p0        μ of p0 and a grid of p0 samples (Fig. 7)
========  =========================================================================================

Figures (every task but fid / is / acc / gen / p0) need matplotlib (``pip install 'fastebm[plots]'``).

Conventions:

* Images are float (N, 3, H, W) in [-1, 1]; E(x) low = likely, log p(x) = -E(x) + const.
* Scoring runs the network in eval mode without gradients (model mode and flags restored afterwards).
* SGLD (gen, ``--source chains``) runs the fast :class:`~fastebm.sampler.Sampler` (Triton update and CUDA
  graph on CUDA, fp32 as in training; the plain path on CPU) with the checkpoint's SGLD settings;
  ``--sgld-steps`` defaults to the training K.
* FID real-data statistics are cached in ``--stats-cache`` (default ``$FASTEBM_CACHE/fid_stats``, else
  ``~/.cache/fastebm/fid_stats``), keyed by the content of the data (every file's path, size and mtime
  under the data root), the split, the image count and the Inception weights file: a folder that gains
  images gets new statistics.
* Buffer filtering (``--keep-ratio``, classifier models), as the JEM++ / M-EBM reference ``cond_is_fid``:
  per predicted class argmax p(y|x), keep the top ``floor(ratio * n_class)`` by confidence (ratio in
  (0, 1]), or the top ``int(ratio)`` per class when ratio > 1.
* OOD scores are oriented so that in-distribution inputs score higher: ``logpx`` = -E(x);
  ``max_softmax`` = max_y p(y|x); ``grad_norm`` = -||dE/dx||_2 (JEM's sign).
* ``--random-inception`` (hidden, tests and smoke runs): a randomly initialised Inception.

Exit status: 0 done, 2 bad input (one line ``python -m fastebm.eval: error: ...`` on stderr).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import warnings

import numpy as np
import torch

from . import __version__
from .checkpoint import CheckpointError, load_checkpoint, load_model_state
from .config import Config, OneLineParser, fast_flags, resolve, resolve_device
from .data import DATASETS, DatasetError, ImageSet, load_dataset, to_float, to_uint8
from .images import resize
from .init import p0_from_state_dict
from .model import EnergyModel, build_model, model_outputs
from .sampler import Sampler, SGLDConfig, energy_grad, sampling_mode
from .threads import apply_threads

TASKS = ("fid", "is", "gen", "acc", "ece", "ood", "logpx", "tsne", "extremes", "energy", "p0")
PROG = "python -m fastebm.eval"


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
        classes: the training split's class names (folder layouts; its other splits map to them), or None.
    """

    cfg: Config
    model: EnergyModel
    p0: object
    buffer: torch.Tensor
    device: torch.device
    ckpt: str
    iteration: int
    classes: list[str] | None = None

    @property
    def has_classifier(self) -> bool:
        """True when the model has a p(y|x) head (mjem, jem, lse-jem)."""
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
    load_model_state(model, ckpt, ckpt_path)
    model.to(dev).eval()
    p0 = p0_from_state_dict(ckpt["p0"]).to(dev) if "p0" in ckpt else None
    buffer = ckpt["buffer"]["samples"].float() if "buffer" in ckpt else None
    return Run(cfg, model, p0, buffer, dev, os.path.abspath(ckpt_path), int(ckpt.get("iteration", 0)),
               ckpt.get("classes"))


def _require_classifier(run: Run, what: str) -> None:
    if not run.has_classifier:
        raise EvalError(f"{what} needs a classifier model (mjem or jem); this checkpoint is "
                        f"{run.cfg.model!r}, which has no p(y|x)")


def _load_split(run: Run, split: str, subset: int | None, seed: int = 0) -> ImageSet:
    """A split of the run's dataset (optionally the first ``subset`` of a fixed permutation)."""
    cfg = run.cfg
    data = load_dataset(cfg.dataset, cfg.data_root, split, False, cfg.max_per_class, cfg.image_size, run.classes)
    if data.image_size != cfg.image_size:
        raise EvalError(f"dataset {cfg.dataset!r} ({split}) has {data.image_size}px images, the model "
                        f"expects {cfg.image_size}px")
    return data.subset(subset, seed)


# --------------------------------------------------------------------------------------------------
# model passes
# --------------------------------------------------------------------------------------------------
def _as_float(x: torch.Tensor) -> torch.Tensor:
    return to_float(x) if x.dtype == torch.uint8 else x.float()


def _outputs(run: Run, images: torch.Tensor, batch_size: int, features: bool = False):
    """:func:`fastebm.model.model_outputs` of the run's model on its device (CPU float32 results)."""
    return model_outputs(run.model, images, batch_size, run.device, features)


def _grad_norms(run: Run, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """||dE/dx||_2 per image (N,) float32 (gradient over all C*H*W inputs), eval mode, parameters
    frozen (no weight gradients)."""
    norms = []
    model = run.model
    with sampling_mode(model, "eval"):
        for i in range(0, images.shape[0], batch_size):
            g = energy_grad(model.energy, _as_float(images[i:i + batch_size].to(run.device)))
            norms.append(g.flatten(1).norm(dim=1).float().cpu())
    return torch.cat(norms)


def sample_chains(run: Run, n: int, n_steps: int, batch_size: int, labels: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Fresh SGLD chains from p0 with the run's SGLD settings (paper Eq. 3), through the fast
    :class:`~fastebm.sampler.Sampler`: on CUDA the fused Triton update and (unconditional chains) a CUDA graph
    per batch shape, in fp32 as in training (README, "bf16 and SGLD"); on the CPU the plain path (identical to
    :func:`~fastebm.sampler.sgld`).

    Args:
        run: the loaded run (``run.p0`` and the step size / noise / clamps / BN mode of its config).
        n: chains; n_steps: SGLD steps (>= 1); batch_size: chains per batch.
        labels: optional (n,) int64 classes (classifier models): chain i follows E(x, y_i) = -f(x)[y_i]
            (JEM, Grathwohl et al. 2020, p(x|y)).

    Returns:
        (n, C, H, W) float32 on the CPU, clamped to [-1, 1].

    Raises:
        EvalError: bad n / n_steps, no p0 in the checkpoint, labels for an unconditional model.
    """
    if n < 1 or n_steps < 1:
        raise EvalError(f"SGLD sampling: expected n >= 1 chains and >= 1 steps, got n={n}, steps={n_steps}")
    if run.p0 is None:
        raise EvalError(f"checkpoint {run.ckpt!r} holds no p0 to start chains from")
    if labels is not None:
        _require_classifier(run, "class-conditional sampling")
    cfg, model = run.cfg, run.model
    scfg = SGLDConfig(int(n_steps), cfg.step_size, cfg.noise, cfg.grad_clip, cfg.clamp_x, cfg.sgld_bn)
    fast = fast_flags(run.device.type)
    sampler = Sampler(model, scfg, triton=fast["triton"], amp=fast["sgld_amp"], cuda_graphs=fast["cuda_graphs"])
    out, was_training = [], model.training
    model.train(cfg.sgld_bn == "batch")  # as in training; the Sampler restores BN running statistics
    try:
        for i in range(0, n, batch_size):
            m = min(batch_size, n - i)
            if labels is not None:  # E(x, y) = -f(x)[y]: a per-batch energy, so no CUDA graph
                y = labels[i:i + m].to(run.device)
                sampler = Sampler(model, scfg, triton=fast["triton"], amp=fast["sgld_amp"],
                                  rng_state=sampler.rng_state,
                                  net=lambda x, y=y: (-model.logits(x).gather(1, y[:, None]).squeeze(1), None))
            out.append(sampler(run.p0.sample(m, device=run.device)).clamp_(-1, 1).cpu())
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
# output helpers
# --------------------------------------------------------------------------------------------------
def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None  # NaN (empty bins) -> null
    return obj


def _write_json(out: str, name: str, record: dict) -> str:
    path = os.path.join(out, name)
    with open(path, "w") as f:
        json.dump(_jsonable(record), f, indent=2, allow_nan=False)
    return path


def _save_npz_images(path: str, images: torch.Tensor, labels: torch.Tensor, **extra) -> str:
    """Images float [-1, 1] (N, 3, H, W) -> .npz with ``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,)."""
    u8 = to_uint8(images).permute(0, 2, 3, 1).contiguous().numpy()
    np.savez_compressed(path, images=u8, labels=labels.cpu().numpy().astype(np.int64),
                        **{k: np.asarray(v) for k, v in extra.items()})
    return path


def _check_range(x: torch.Tensor, what: str) -> torch.Tensor:
    """Images finite and in [-1, 1] (1e-3 tolerance, then clamped), else EvalError."""
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


def _run_name(run: Run) -> str:
    """``<run folder>`` for RUN/ckpt.pt, ``<run folder>-<stem>`` for other files (best_fid.pt, ckpt_e010.pt)."""
    folder, name = os.path.split(run.ckpt)
    return os.path.basename(folder) + ("" if name == "ckpt.pt" else f"-{os.path.splitext(name)[0]}")


def _need_buffer(run: Run, task: str) -> torch.Tensor:
    if run.buffer is None:
        raise EvalError(f"task {task!r} needs the replay buffer stored in {run.ckpt!r}")
    return run.buffer


def _subsample(x: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """A fixed random subset of n rows (all when n is None or >= len)."""
    if n is None or n >= len(x):
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


# --------------------------------------------------------------------------------------------------
# FID / IS
# --------------------------------------------------------------------------------------------------
def _fake_images(run: Run, opts) -> tuple[torch.Tensor, dict]:
    """Generated images for FID / IS from ``--source`` (buffer or chains), validated in [-1, 1]."""
    info: dict = {"source": opts.source}
    if opts.source == "buffer":
        x = _need_buffer(run, "fid/is (use --source chains)")
        if opts.keep_ratio is not None:
            _require_classifier(run, "--keep-ratio (per-class confidence filtering)")
            _, logits = _outputs(run, x, opts.batch_size)
            idx = filter_by_confidence(torch.softmax(logits.double(), 1), opts.keep_ratio)
            if len(idx) == 0:
                raise EvalError(f"--keep-ratio {opts.keep_ratio} keeps no buffer image")
            x = x[torch.from_numpy(idx)]
            info.update(keep_ratio=opts.keep_ratio, n_buffer=len(run.buffer))
        x = _subsample(x, opts.n_samples, opts.seed)
    else:
        n = opts.n_samples or (len(run.buffer) if run.buffer is not None else run.cfg.buffer_size)
        steps = opts.sgld_steps or run.cfg.k
        torch.manual_seed(opts.seed)
        x = sample_chains(run, n, steps, opts.batch_size)
        info.update(sgld_steps=steps)
    info["n_fake"] = len(x)
    return _check_range(x, f"generated images ({opts.source})"), info


def _load_inception(opts, device):
    from . import metrics

    if opts.random_inception:
        if opts.inception_weights:
            raise EvalError("--random-inception and --inception-weights are exclusive")
        warnings.warn("--random-inception: randomly initialised Inception; FID / IS numbers are "
                      "meaningless (tests and smoke runs only)", UserWarning, stacklevel=2)
        return metrics.load_inception(device=device, random_init=True), "random-init"
    try:
        model = metrics.load_inception(opts.inception_weights, device=device)
    except FileNotFoundError as e:
        hint = "" if opts.inception_weights else ", or pass --inception-weights PATH"
        raise FileNotFoundError(f"{e}{hint}") from None
    path = os.path.abspath(opts.inception_weights or metrics.default_inception_weights_path())
    return model, f"{path}:{os.path.getsize(path)}:{os.stat(path).st_mtime_ns}"


def data_fingerprint(cfg: Config, split: str) -> str:
    """SHA-1 of the data's content listing: every file under the data root (for the folder layouts, under
    ``root/<split>``, or ``val`` for test) as (relative path, size in bytes, mtime in ns), sorted; for the
    embedded ``digits``, scikit-learn's version. Changes when files are added, removed or rewritten."""
    h = hashlib.sha1()
    if cfg.dataset == "digits" or not cfg.data_root:
        import sklearn

        h.update(f"{cfg.dataset}:{sklearn.__version__}".encode())
        return h.hexdigest()
    root = os.path.abspath(cfg.data_root)
    if cfg.dataset in ("folder", "celebahq128"):
        sub = os.path.join(root, split)
        root = sub if os.path.isdir(sub) or split != "test" else os.path.join(root, "val")
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(folder, name))
            h.update(f"{os.path.relpath(os.path.join(folder, name), root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _real_statistics(run: Run, opts, inception, inception_id: str) -> tuple[tuple, int, str, bool]:
    """(mu, sigma), n_real, cache path and whether it was cached, for split ``opts.fid_split``."""
    from . import metrics

    cfg, split = run.cfg, opts.fid_split
    key = json.dumps([cfg.dataset, os.path.abspath(cfg.data_root) if cfg.data_root else "", cfg.max_per_class,
                      cfg.image_size, split, opts.n_real, inception_id, data_fingerprint(cfg, split)])
    folder = opts.stats_cache or os.path.join(
        os.environ.get("FASTEBM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fastebm")), "fid_stats")
    tag = "_random-inception" if opts.random_inception else ""
    cache = os.path.join(folder, f"fid_stats_{cfg.dataset}_{split}_{opts.n_real or 'all'}{tag}_"
                                 f"{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz")
    if os.path.isfile(cache) and os.path.isfile(cache + ".json"):  # real images not even loaded
        with open(cache + ".json") as f:
            return metrics.load_stats(cache), int(json.load(f)["n_real"]), cache, True
    real = load_dataset(cfg.dataset, cfg.data_root, split, False, cfg.max_per_class,
                        cfg.image_size).subset(opts.n_real, 0)
    pool, _ = metrics.inception_outputs(inception, to_float(real.images), opts.batch_size, run.device)
    stats = metrics.activation_statistics(pool)
    metrics.save_stats(cache, *stats)
    with open(cache + ".json", "w") as f:
        json.dump({"n_real": len(real), "dataset": cfg.dataset, "data_root": cfg.data_root, "split": split,
                   "inception": inception_id}, f, indent=2)
    return stats, len(real), cache, False


def task_fid_is(run: Run, opts, fid: bool = True, inception_score: bool = True) -> dict:
    """FID and / or Inception Score of generated images (the paper's Tables 1-4), one Inception pass.

    Fake images: ``opts.source`` ``buffer`` (optionally filtered per predicted class with
    ``opts.keep_ratio``; ``opts.n_samples`` draws a random subset) or ``chains`` (fresh chains through the
    fast Sampler, :func:`sample_chains`). Real statistics: ``opts.n_real`` images (default all) of
    ``opts.fid_split``, cached by content (:func:`data_fingerprint`). FID:
    :func:`fastebm.metrics.frechet_distance` (pytorch-fid); IS: :func:`fastebm.metrics.inception_score`
    with ``opts.splits`` shuffled splits (seed ``opts.seed``).

    Writes ``fid.json`` and / or ``is.json``. Returns the record (``fid``, ``is_mean``, ``is_std``,
    ``n_fake``, ``n_real``, ...). Raises FileNotFoundError (no Inception weights) or EvalError.
    """
    from . import metrics

    inception, inception_id = _load_inception(opts, run.device)  # fail fast on missing weights
    fake, info = _fake_images(run, opts)
    record = {**_common(run, "fid" if fid else "is"), **info, "inception": inception_id}
    pool, logits = metrics.inception_outputs(inception, fake, batch_size=opts.batch_size, device=run.device)
    if inception_score:
        if len(fake) < opts.splits:
            raise EvalError(f"Inception Score: {len(fake)} images for --splits {opts.splits}; lower --splits")
        record["is_mean"], record["is_std"] = metrics.inception_score(logits, opts.splits, True, opts.seed)
        record["splits"] = opts.splits
    if fid:
        real, n_real, cache, cached = _real_statistics(run, opts, inception, inception_id)
        record.update(fid=metrics.frechet_distance(*real, *metrics.activation_statistics(pool)), n_real=n_real,
                      real_split=opts.fid_split, real_stats=cache, real_stats_cached=cached)
    if min(len(fake), record.get("n_real", 10**9)) < pool.shape[1]:
        record["note"] = (f"fewer samples than the {pool.shape[1]} Inception features: FID regularised and "
                          "strongly biased; use >= 10k samples for reported numbers")
    if opts.random_inception:
        record["meaningless"] = metrics.RANDOM_INCEPTION_NOTE
    for task, wanted in (("fid", fid), ("is", inception_score)):
        if wanted:
            _write_json(opts.out, f"{task}.json", dict(record, task=task))
    return record


# --------------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------------
def task_gen(run: Run, opts) -> dict:
    """Fresh samples after ``opts.sgld_steps`` (default: the training K) SGLD steps from p0.

    Writes ``gen_uncond.png`` and ``gen_uncond.npz`` (``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,):
    the classifier's prediction, -1 for mebm), N = ``opts.n_samples`` (default 64). Classifier models also
    get class-conditional samples (E(x, y) = -f(x)[y]): ``gen_cond.png`` (one row per class) and
    ``gen_cond.npz``, max(1, N // n_classes) per class. Writes ``gen.json``.
    """
    from .plots import save_grid

    n, steps = opts.n_samples or 64, opts.sgld_steps or run.cfg.k
    torch.manual_seed(opts.seed)
    x = sample_chains(run, n, steps, opts.batch_size)
    energy, logits = _outputs(run, x, opts.batch_size)
    pred = logits.argmax(1) if logits is not None else torch.full((n,), -1, dtype=torch.long)
    record = {**_common(run, "gen"), "sgld_steps": steps, "n_uncond": n, "energy_uncond_mean": float(energy.mean()),
              "grid_uncond": save_grid(os.path.join(opts.out, "gen_uncond.png"), x, nrow=math.ceil(n ** 0.5)),
              "npz_uncond": _save_npz_images(os.path.join(opts.out, "gen_uncond.npz"), x, pred, energy=energy.numpy())}
    if run.has_classifier:
        per = max(1, n // run.cfg.n_classes)
        y = torch.arange(run.cfg.n_classes).repeat_interleave(per)
        xc = sample_chains(run, len(y), steps, opts.batch_size, labels=y)
        _, logits_c = _outputs(run, xc, opts.batch_size)
        record.update(n_per_class=per, n_cond=len(y), cond_accuracy=float((logits_c.argmax(1) == y).float().mean()),
                      grid_cond=save_grid(os.path.join(opts.out, "gen_cond.png"), xc, nrow=per),
                      npz_cond=_save_npz_images(os.path.join(opts.out, "gen_cond.npz"), xc, y))
    _write_json(opts.out, "gen.json", record)
    return record


def task_acc(run: Run, opts) -> dict:
    """Test accuracy and mean cross-entropy on the test split (``opts.test_subset`` images; classifier
    models). Writes ``acc.json``: ``accuracy`` in [0, 1], ``loss``, ``n``, ``per_class_accuracy``."""
    _require_classifier(run, "task 'acc'")
    data = _load_split(run, "test", opts.test_subset)
    _, logits = _outputs(run, data.images, opts.batch_size)
    y = data.labels
    correct = (logits.argmax(1) == y).double()
    per_class = [float(correct[y == c].mean()) if bool((y == c).any()) else float("nan")
                 for c in range(run.cfg.n_classes)]
    record = {**_common(run, "acc"), "n": len(y), "accuracy": float(correct.mean()),
              "loss": float(torch.nn.functional.cross_entropy(logits.double(), y)), "per_class_accuracy": per_class}
    _write_json(opts.out, "acc.json", record)
    return record


def task_ece(run: Run, opts) -> dict:
    """Expected calibration error (Guo et al. 2017) on the test split with ``opts.ece_bins`` bins; writes
    ``ece.json`` and ``reliability.png`` (matplotlib). Raises EvalError for mebm."""
    from . import metrics

    _require_classifier(run, "task 'ece'")
    data = _load_split(run, "test", opts.test_subset)
    _, logits = _outputs(run, data.images, opts.batch_size)
    probs = torch.softmax(logits.double(), 1).numpy()
    ece, bins = metrics.expected_calibration_error(probs, data.labels.numpy(), n_bins=opts.ece_bins)
    png = metrics.reliability_diagram(bins, os.path.join(opts.out, "reliability.png"),
                                      title=f"{run.cfg.model} {run.cfg.dataset}  ECE {ece:.4f}")
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
        data = ImageSet(resize(data.images, run.cfg.image_size), data.labels, data.n_classes, data.name)
    return data


def task_ood(run: Run, opts) -> dict:
    """OOD detection: AUROC (:func:`fastebm.metrics.auroc`, scikit-learn) between the test split (positives)
    and ``opts.ood_dataset`` for ``logpx`` = -E(x), ``max_softmax`` = max_y p(y|x) (classifier models;
    Hendrycks & Gimpel 2017) and ``grad_norm`` = -||dE/dx||_2 (JEM's OOD code). Writes ``ood.json`` and
    ``ood_hist.png`` (score histograms, matplotlib)."""
    from . import metrics, plots

    data_in, data_out = _load_split(run, "test", opts.test_subset), _ood_images(run, opts)
    e_in, l_in = _outputs(run, data_in.images, opts.batch_size)
    e_out, l_out = _outputs(run, data_out.images, opts.batch_size)
    scores = {"logpx": (-e_in.numpy(), -e_out.numpy())}
    if run.has_classifier:
        scores["max_softmax"] = tuple(torch.softmax(v.double(), 1).max(1)[0].numpy() for v in (l_in, l_out))
    scores["grad_norm"] = (-_grad_norms(run, data_in.images, opts.batch_size).numpy(),
                           -_grad_norms(run, data_out.images, opts.batch_size).numpy())
    record = {**_common(run, "ood"), "ood_dataset": opts.ood_dataset, "ood_root": opts.ood_root,
              "n_in": len(data_in), "n_out": len(data_out),
              "score_convention": "higher = more in-distribution: logpx=-E(x), max_softmax=max_y p(y|x), "
                                  "grad_norm=-||dE/dx||_2",
              "auroc": {k: metrics.auroc(*v) for k, v in scores.items()},
              "mean_in": {k: float(v[0].mean()) for k, v in scores.items()},
              "mean_out": {k: float(v[1].mean()) for k, v in scores.items()}}
    record["png"] = plots.histograms(
        os.path.join(opts.out, "ood_hist.png"),
        [(f"{k}  AUROC {record['auroc'][k]:.3f}", {run.cfg.dataset: v[0], opts.ood_dataset: v[1]})
         for k, v in scores.items()], bins=opts.bins, cols=len(scores))
    _write_json(opts.out, "ood.json", record)
    return record


def task_logpx(run: Run, opts) -> dict:
    """log p(x) = -E(x) (up to log Z) per class — the paper's Fig. 6: test data by true label and replay-buffer
    samples by predicted class argmax p(y|x) (mebm: the buffer as one extra panel).

    Writes ``logpx.png`` (one panel per class, both series as densities) and ``logpx.json`` (per class:
    n, mean, std of each series).
    """
    from . import plots

    data = _load_split(run, "test", opts.test_subset)
    energy, _ = _outputs(run, data.images, opts.batch_size)
    test_lp, labels = -energy.double().numpy(), data.labels.numpy()
    buf_lp, buf_pred = np.zeros(0), np.zeros(0, np.int64)
    if run.buffer is not None:
        e_b, l_b = _outputs(run, _subsample(run.buffer, opts.n_samples, opts.seed), opts.batch_size)
        buf_lp = -e_b.double().numpy()
        buf_pred = l_b.argmax(1).numpy() if l_b is not None else np.full(len(buf_lp), -1)

    def stats(v):
        n = int(len(v))
        return {"n": n, "mean": float(v.mean()) if n else None, "std": float(v.std()) if n else None}

    per_class, panels = {}, []
    for c in range(data.n_classes):
        series = {"test data": test_lp[labels == c], "buffer (predicted)": buf_lp[buf_pred == c]}
        per_class[str(c)] = {k: stats(v) for k, v in series.items()}
        panels.append((f"class {c}", series))
    if run.buffer is not None and not run.has_classifier:
        panels.append(("all classes", {"test data": test_lp, "buffer": buf_lp}))
    record = {**_common(run, "logpx"), "n_test": len(data), "n_buffer": len(buf_lp), "per_class": per_class,
              "test": stats(test_lp), "buffer": stats(buf_lp),
              "png": plots.histograms(os.path.join(opts.out, "logpx.png"), panels, bins=opts.bins,
                                      xlabel="log p(x) = -E(x)")}
    _write_json(opts.out, "logpx.json", record)
    return record


def _three_sets(run: Run, n: int, seed: int):
    """n real training images x+ (float), n p0 samples x0 and n buffer samples x- (CPU float32)."""
    real = to_float(_load_split(run, "train", n, seed=seed).images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x0 = run.p0.sample(n, device=run.device).cpu().clamp(-1, 1)
    return real, x0, _subsample(_need_buffer(run, "this task"), n, seed)


def task_tsne(runs: list[Run], opts) -> dict:
    """One joint 2-D t-SNE (scikit-learn) of penultimate features h(x) — the paper's Fig. 4 — of real x+
    (training split), x0 ~ p0 and buffer x- of every checkpoint in ``runs``; the features of all points
    come from the first checkpoint's network, so several checkpoints (e.g. K = 1, 2, 5) share one space.
    ``opts.n_samples`` per set (default 500).

    Writes ``tsne.png`` (one colour per set, legend), ``tsne.npz`` (``coords`` float32 (M, 2), ``group``
    int64 (M,), ``names``) and ``tsne.json``.
    """
    from sklearn.manifold import TSNE

    from . import plots

    n, ref = opts.n_samples or 500, runs[0]
    for run in runs:
        if run.buffer is None or run.p0 is None:
            raise EvalError(f"task 'tsne' needs the replay buffer and p0 stored in {run.ckpt!r}")
    real, x0, buf = _three_sets(ref, n, opts.seed)
    sets = [("x+ data", real), ("x0 p0", x0)]
    label = (lambda r: f"x- {_run_name(r)}") if len(runs) > 1 else (lambda r: "x- buffer")
    sets += [(label(ref), buf)] + [(label(r), _subsample(r.buffer, n, opts.seed)) for r in runs[1:]]
    feats = np.concatenate([_outputs(ref, x, opts.batch_size, features=True)[2].double().numpy() for _, x in sets])
    groups = np.concatenate([np.full(len(x), i, dtype=np.int64) for i, (_, x) in enumerate(sets)])
    if len(feats) < 4:
        raise EvalError(f"task 'tsne': need at least 4 points, got {len(feats)}; raise --n-samples")
    perplexity = float(min(opts.perplexity, (len(feats) - 1) / 3))
    coords = TSNE(2, perplexity=perplexity, init="pca", random_state=opts.seed).fit_transform(feats).astype(np.float32)
    names = [name for name, _ in sets]
    npz = os.path.join(opts.out, "tsne.npz")
    np.savez_compressed(npz, coords=coords, group=groups, names=np.array(names))
    record = {"task": "tsne", "checkpoints": [r.ckpt for r in runs], "features_of": ref.ckpt, "names": names,
              "counts": np.bincount(groups).tolist(), "perplexity": perplexity, "npz": npz,
              "png": plots.scatter(os.path.join(opts.out, "tsne.png"), coords, groups, names,
                                   title="t-SNE of penultimate features")}
    _write_json(opts.out, "tsne.json", record)
    return record


def task_extremes(run: Run, opts) -> dict:
    """Per class, the replay-buffer samples with the highest / lowest log p(x) = -E(x) and the highest /
    lowest p(y|x) — the paper's Figs. 5, 9-17. Buffer samples are grouped by predicted class
    argmax p(y|x) (mebm: one group, p(x) rows only); ``opts.n_show`` (default 8) images per row.

    Writes ``extremes/class_<c>.png`` (4 labelled rows per class), ``extremes.png`` (the overview: classes ×
    the four selections) and ``extremes.json`` (buffer indices and scores of each selection).
    """
    from . import plots

    buf = _need_buffer(run, "extremes")
    energy, logits = _outputs(run, buf, opts.batch_size)
    logpx = -energy.double()
    if logits is not None:
        probs = torch.softmax(logits.double(), 1)
        conf, pred = probs.max(1)
        classes = list(range(run.cfg.n_classes))
    else:
        conf, pred, classes = None, torch.zeros(len(buf), dtype=torch.long), [0]
    k = opts.n_show
    folder = os.path.join(opts.out, "extremes")
    os.makedirs(folder, exist_ok=True)
    record = {**_common(run, "extremes"), "n_buffer": len(buf), "n_show": k, "per_class": {}}
    table, labels = [], []
    for c in classes:
        idx = torch.nonzero(pred == c).flatten()
        picks = {"highest p(x)": idx[logpx[idx].argsort(descending=True)[:k]],
                 "lowest p(x)": idx[logpx[idx].argsort()[:k]]}
        if conf is not None:
            picks["highest p(y|x)"] = idx[conf[idx].argsort(descending=True)[:k]]
            picks["lowest p(y|x)"] = idx[conf[idx].argsort()[:k]]
        name = f"class {c}" if logits is not None else "all"
        rows = [(f"{label}", buf[i]) for label, i in picks.items()]
        png = plots.image_rows(os.path.join(folder, f"class_{c}.png"), rows, title=f"{name}: {len(idx)} buffer samples")
        record["per_class"][str(c)] = {"n": len(idx), "png": png, **{
            label: {"index": i.tolist(), "logpx": logpx[i].tolist(),
                    **({"p_y_given_x": conf[i].tolist()} if conf is not None else {})} for label, i in picks.items()}}
        table.append([x for _, x in rows])
        labels.append(name)
    record["png"] = plots.image_table(os.path.join(opts.out, "extremes.png"), table, labels, list(picks))
    _write_json(opts.out, "extremes.json", record)
    return record


def task_energy(run: Run, opts) -> dict:
    """Distributions of the energies E(x+) of real training images, E(x0) of p0 samples and E(x-) of
    buffer samples (``opts.n_samples`` each, default 500). Writes ``energy.png`` (violins),
    ``energy_hist.png`` (overlaid histograms) and ``energy.json`` (mean, std, quantiles per set)."""
    from . import plots

    n = opts.n_samples or 500
    sets = dict(zip(("x+ data", "x0 p0", "x- buffer"), _three_sets(run, n, opts.seed)))
    energies = {k: _outputs(run, x, opts.batch_size)[0].double().numpy() for k, x in sets.items()}
    q = (0.05, 0.25, 0.5, 0.75, 0.95)
    record = {**_common(run, "energy"), "sets": {k: {"n": len(v), "mean": float(v.mean()), "std": float(v.std()),
                                                     "quantiles": dict(zip(map(str, q), np.quantile(v, q)))}
                                                 for k, v in energies.items()},
              "png": plots.violins(os.path.join(opts.out, "energy.png"), energies, ylabel="E(x)",
                                   title=f"{run.cfg.model} {run.cfg.dataset}, iteration {run.iteration}"),
              "png_hist": plots.histograms(os.path.join(opts.out, "energy_hist.png"), [("energies", energies)],
                                           bins=opts.bins, xlabel="E(x)", cols=1)}
    _write_json(opts.out, "energy.json", record)
    return record


def task_p0(run: Run, opts) -> dict:
    """μ of p0 and a grid of 64 p0 samples (the paper's Fig. 7): ``p0_mean.png``, ``p0_samples.png``."""
    from .plots import save_p0_pictures

    if run.p0 is None:
        raise EvalError(f"task 'p0' needs p0 stored in {run.ckpt!r}")
    mean, samples = save_p0_pictures(run.p0, opts.out, device=run.device, seed=opts.seed)
    record = {**_common(run, "p0"), "kind": run.p0.kind, "mean_png": mean, "samples_png": samples}
    _write_json(opts.out, "p0.json", record)
    return record


# --------------------------------------------------------------------------------------------------
# dispatcher and command line
# --------------------------------------------------------------------------------------------------
def run_tasks(run: Run, tasks: list[str], opts) -> dict[str, dict]:
    """Run the named single-checkpoint tasks in order (``fid`` and ``is`` share one Inception pass);
    ``tsne`` of one checkpoint. Returns task -> record. Raises EvalError for an unknown task."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise EvalError(f"unknown task(s) {unknown}; expected some of {list(TASKS)}")
    os.makedirs(opts.out, exist_ok=True)
    single = {"gen": task_gen, "acc": task_acc, "ece": task_ece, "ood": task_ood, "logpx": task_logpx,
              "tsne": lambda r, o: task_tsne([r], o), "extremes": task_extremes, "energy": task_energy, "p0": task_p0}
    results: dict[str, dict] = {}
    for task in dict.fromkeys(tasks):  # unique, in order
        if task in ("fid", "is"):
            if task not in results:
                record = task_fid_is(run, opts, fid="fid" in tasks, inception_score="is" in tasks)
                results.update({t: record for t in ("fid", "is") if t in tasks})
        else:
            results[task] = single[task](run, opts)
    return results


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one; a None default (its help says what happens) shows none."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m fastebm.eval`` (argparse errors are one line, exit 2)."""
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=_DefaultsShown)
    a = p.add_argument
    a("--version", action="version", version=f"fastebm {__version__}")
    a("--ckpt", nargs="+", required=True, help="checkpoint(s) written by fastebm.train (RUN/ckpt.pt); several: "
      "tsne embeds them jointly, other tasks run per checkpoint")
    a("--task", nargs="+", required=True, help=f"one or several of {', '.join(TASKS)}")
    a("--out", help="output folder (default: eval/ next to the checkpoint)")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    a("--threads", type=int, help="CPU threads of torch (default: the usable cores minus the current load, at "
      "least 1; OMP_NUM_THREADS if set)")
    a("--batch-size", type=int, default=100, help="images per forward pass / SGLD batch")
    a("--n-samples", type=int, help="images per set (fid/is: all buffer images or |B| chains; gen: 64; "
      "tsne / energy: 500; logpx: all buffer images)")
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
    g = p.add_argument_group("ece / ood / logpx / tsne / extremes")
    g.add_argument("--ece-bins", type=int, default=15)
    g.add_argument("--ood-dataset", help=f"one of {', '.join(DATASETS)}")
    g.add_argument("--ood-root")
    g.add_argument("--ood-max-per-class", type=int)
    g.add_argument("--ood-subset", type=int, help="use this many OOD images (default all)")
    g.add_argument("--bins", type=int, default=30, help="histogram bins (ood, logpx, energy)")
    g.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (capped by the size)")
    g.add_argument("--n-show", type=int, default=8, help="extremes: images per row")
    return p


def _check_opts(opts) -> None:
    for name in ("batch_size", "n_samples", "sgld_steps", "splits", "n_real", "ece_bins", "bins", "n_show",
                 "test_subset", "ood_subset", "max_per_class", "ood_max_per_class", "threads"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise EvalError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value}")
    if opts.keep_ratio is not None and not (math.isfinite(opts.keep_ratio) and opts.keep_ratio > 0):
        raise EvalError(f"--keep-ratio: expected a ratio in (0, 1] or a count > 1, got {opts.keep_ratio}")
    if opts.perplexity <= 0:
        raise EvalError(f"--perplexity: expected a value > 0, got {opts.perplexity}")
    if not 0 <= opts.seed < 2 ** 32:  # numpy / scikit-learn seeds
        raise EvalError(f"--seed: expected an integer in [0, 2**32), got {opts.seed}")
    if opts.source not in ("buffer", "chains"):
        raise EvalError(f"--source: expected 'buffer' or 'chains', got {opts.source!r}")
    unknown = [t for t in opts.task if t not in TASKS]
    if unknown:
        raise EvalError(f"unknown task(s) {unknown}; expected some of {list(TASKS)}")
    if opts.dataset is not None and opts.dataset not in DATASETS:
        raise EvalError(f"--dataset: expected one of {list(DATASETS)}, got {opts.dataset!r}")


def _check_finite(parser: argparse.ArgumentParser, opts) -> None:
    """Every float option of ``parser`` (found by its type, not from a list) must be finite."""
    for action in parser._actions:
        value = getattr(opts, action.dest, None)
        if action.type is float and value is not None and not math.isfinite(value):
            raise EvalError(f"{action.option_strings[0]}: expected a finite number, got {value}")


def main(argv=None) -> int:
    """Command-line entry point; returns 0, or exits with status 2 and a one-line error."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    opts.task = [t for item in opts.task for t in item.split(",") if t]
    results: dict[str, dict] = {}
    try:
        _check_finite(parser, opts)
        _check_opts(opts)
        apply_threads(opts.threads)
        runs = [load_run(c, opts.device, opts.dataset, opts.data_root, opts.max_per_class) for c in opts.ckpt]
        for run in runs:  # reject model/task mismatches before any expensive work
            for task in opts.task:
                if task in ("acc", "ece"):
                    _require_classifier(run, f"task {task!r}")
                if task in ("fid", "is") and opts.source == "buffer" and opts.keep_ratio is not None:
                    _require_classifier(run, "--keep-ratio (per-class confidence filtering)")
        out = opts.out
        opts.out = out or os.path.join(os.path.dirname(runs[0].ckpt), "eval")
        if "tsne" in opts.task and len(runs) > 1:
            os.makedirs(opts.out, exist_ok=True)
            results["tsne"] = task_tsne(runs, opts)
        tasks = [t for t in opts.task if not (t == "tsne" and len(runs) > 1)]
        names = [_run_name(r) for r in runs]
        if len(set(names)) < len(names):  # e.g. A/run/ckpt.pt and B/run/ckpt.pt: one folder each, not one shared
            names = [f"{name}-{i + 1}" for i, name in enumerate(names)]
        written = [opts.out] if "tsne" in opts.task and len(runs) > 1 else []
        for run, name in zip(runs, names) if tasks else []:
            if len(runs) > 1:
                opts.out = (os.path.join(out, name) if out else
                            os.path.join(os.path.dirname(run.ckpt), "eval", os.path.basename(run.ckpt)[:-3]))
            written.append(opts.out)
            results.update({f"{t}" if len(runs) == 1 else f"{t} {run.ckpt}": r
                            for t, r in run_tasks(run, tasks, opts).items()})
    except (EvalError, CheckpointError, DatasetError, OSError, ImportError, ValueError) as e:
        parser.exit(2, f"{PROG}: error: {' '.join(str(e).split())}\n")
    for task, record in results.items():
        nums = {k: v for k, v in record.items() if isinstance(v, float) or (k == "auroc" and isinstance(v, dict))}
        note = f"  ({record['meaningless']})" if "meaningless" in record else ""
        print(f"{task}: {json.dumps(_jsonable(nums))}{note}", file=sys.stderr)
    print(f"fastebm.eval: wrote {', '.join(dict.fromkeys(written)) or opts.out}", file=sys.stderr)
    return 0


def cli() -> None:
    """The ``fastebm-eval`` console script (and ``python -m fastebm.eval``)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
