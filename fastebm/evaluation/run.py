"""A trained run loaded for evaluation, what each task needs of it, and the passes of its network."""
from __future__ import annotations

import dataclasses
import os

import torch

from ..algorithm.model import EnergyModel, build_model, model_outputs
from ..algorithm.sampler import Sampler, SGLDConfig, energy_grad, sampling_mode
from ..config.options import Config, fast_flags, resolve, resolve_device
from ..data.datasets import DATASETS, load_dataset
from ..data.imageset import ImageSet, to_float
from ..io.checkpoint import CheckpointError, load_checkpoint, load_model_state
from ..io.progress import Progress
from ..p0 import p0_from_state_dict
from .options import EvalError, EvalOptions

LOG = "fastebm.eval"  # first word of every progress line on stderr


@dataclasses.dataclass
class Run:
    """A trained run loaded for evaluation.

    Attributes:
        cfg: the checkpoint's :class:`Config` (with the dataset / data_root / max_per_class overrides).
        model: the :class:`EnergyModel` on ``device``, in eval mode.
        p0: the initial distribution (``sample(n, device) -> (n, C, H, W)`` float32 in [-1, 1]), or None.
        buffer: replay-buffer samples (|B|, C, H, W) float32 in [-1, 1] on the CPU, or None.
        device: torch device of the model.
        ckpt: absolute path of the checkpoint; iteration: training iterations done.
        classes: the training split's class names (folder layouts; its other splits map to them), or None.
    """

    cfg: Config
    model: EnergyModel
    p0: object
    buffer: torch.Tensor | None
    device: torch.device
    ckpt: str
    iteration: int
    classes: list[str] | None = None

    @property
    def has_classifier(self) -> bool:
        """True when the model has a p(y|x) head (mjem, jem, lse-jem)."""
        return self.model.has_classifier


def load_run(ckpt_path: str, device: str = "auto", dataset: str | None = None,
             data_root: str | None = None, max_per_class: int | None = None) -> Run:
    """Load model, p0 and replay buffer of a fastebm checkpoint for evaluation.

    Args:
        ckpt_path: ``RUN/ckpt.pt`` written by :meth:`fastebm.run.trainer.Trainer.save_checkpoint`.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:N``.
        dataset, data_root, max_per_class: override the checkpoint's data settings (None: keep).

    Returns:
        a :class:`Run` with the model in eval mode.

    Raises:
        CheckpointError: missing/unreadable file, a stored configuration that is invalid, or weights that do
            not fit the stored architecture.
        EvalError: bad device or data overrides.
    """
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    names = {f.name for f in dataclasses.fields(Config)}
    stored = {k: v for k, v in ckpt["config"].items() if k in names}
    try:
        cfg = resolve(stored)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {ckpt_path!r}: stored configuration is invalid: {e}") from None
    overrides = {k: v for k, v in (("dataset", dataset), ("data_root", data_root),
                                   ("max_per_class", max_per_class)) if v is not None}
    try:
        cfg = resolve({**stored, **overrides}) if overrides else cfg
        dev = resolve_device(device)
    except ValueError as e:
        raise EvalError(str(e)) from None
    model = build_model(cfg)
    load_model_state(model, ckpt, ckpt_path)
    model.to(dev).eval()
    p0 = p0_from_state_dict(ckpt["p0"]).to(dev) if "p0" in ckpt else None
    buffer = ckpt["buffer"]["samples"].float() if "buffer" in ckpt else None
    return Run(cfg, model, p0, buffer, dev, os.path.abspath(ckpt_path), int(ckpt.get("iteration", 0)),
               ckpt.get("classes"))


def require_classifier(run: Run, what: str, option: str | None = None) -> None:
    """Raise EvalError unless the run's model has p(y|x); ``what`` needs it."""
    if not run.has_classifier:
        raise EvalError(f"{what} needs a classifier model (mjem or jem); this checkpoint is {run.cfg.model!r}, "
                        "which has no p(y|x)", option)


def check_task(run: Run, opts: EvalOptions, task: str) -> None:
    """Raise EvalError when ``task`` cannot run on this checkpoint with these options: the one list of
    what each task needs, checked for every checkpoint before any work and again by the task itself."""
    samples = ("fid", "is", "feature-fd")  # the tasks that score generated images of opts.source
    needs_buffer = task in ("tsne", "extremes", "energy") or (task in samples and opts.source == "buffer")
    needs_p0 = task in ("gen", "tsne", "energy", "p0") or (task in samples and opts.source == "chains")
    if task in ("acc", "ece"):
        require_classifier(run, f"task {task!r}")
    if task in samples and opts.keep_ratio is not None:
        require_classifier(run, "per-class confidence filtering of the buffer", "keep_ratio")
    if task == "ood" and not opts.ood_dataset:
        raise EvalError("task 'ood' needs an out-of-distribution dataset (and its root unless it is 'digits')",
                        "ood_dataset")
    if task == "ood" and DATASETS[opts.ood_dataset].needs_root and not opts.ood_root:
        raise EvalError(f"task 'ood' on dataset {opts.ood_dataset!r} needs the folder that holds its files",
                        "ood_root")
    if needs_buffer and run.buffer is None:
        raise EvalError(f"task {task!r} needs the replay buffer, and {run.ckpt!r} holds none"
                        + ("; use source 'chains'" if task in samples else ""))
    if needs_p0 and run.p0 is None:
        raise EvalError(f"task {task!r} needs p0, and {run.ckpt!r} holds none")
    if task in ("fid", "is") and not opts.random_inception:  # the weights file, before any work
        from .inception import check_inception_weights

        try:
            check_inception_weights(opts.inception_weights)
        except FileNotFoundError as e:
            raise EvalError(str(e) + ("" if opts.inception_weights else ", or give its path"),
                            "inception_weights") from None


def load_split(run: Run, split: str, subset: int | None, seed: int = 0) -> ImageSet:
    """``split`` (``train`` / ``test``) of the run's dataset, optionally the first ``subset`` images of a fixed
    permutation (seed ``seed``). Raises EvalError when its image size is not the model's, DatasetError."""
    cfg = run.cfg
    data = load_dataset(cfg.dataset, cfg.data_root, split, False, cfg.max_per_class, cfg.image_size, run.classes)
    if data.image_size != cfg.image_size:
        raise EvalError(f"dataset {cfg.dataset!r} ({split}) has {data.image_size}px images, the model "
                        f"expects {cfg.image_size}px")
    return data.subset(subset, seed)


def subsample(x: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """A fixed random subset of n rows of x (all of them when n is None or >= len(x))."""
    if n is None or n >= len(x):
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def outputs(run: Run, images: torch.Tensor, batch_size: int, desc: str, features: bool = False):
    """:func:`fastebm.algorithm.model.model_outputs` of the run's model on its device, with progress on stderr.

    Args:
        images: (N, 3, H, W) uint8 in [0, 255] or float in [-1, 1]; batch_size: images per pass (>= 1).
        desc: what the pass is for (``"acc: test images"``), for the progress line.

    Returns:
        energies (N,), logits (N, C) or None, and with ``features`` the penultimate features (N, F): float32,
        CPU; energies low = likely.
    """
    chunk = batch_size * 10  # one model_outputs call per progress step: its mode handling stays in one place
    parts = []
    with Progress(len(images), f"{LOG}: {desc}", unit="images") as p:
        for i in range(0, len(images), chunk):
            parts.append(model_outputs(run.model, images[i:i + chunk], batch_size, run.device, features))
            p.update(len(parts[-1][0]))
    return tuple(None if part[0] is None else torch.cat(part) for part in zip(*parts))


def grad_norms(run: Run, images: torch.Tensor, batch_size: int, desc: str) -> torch.Tensor:
    """||dE/dx||_2 per image, (N,) float32 on the CPU: the gradient over all C*H*W inputs, in eval mode with the
    parameters frozen (no weight gradients). ``images`` uint8 in [0, 255] or float in [-1, 1]."""
    norms = []
    with sampling_mode(run.model, "eval"), Progress(len(images), f"{LOG}: {desc}", unit="images") as p:
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(run.device)
            x = to_float(x) if x.dtype == torch.uint8 else x.float()
            norms.append(energy_grad(run.model.energy, x).flatten(1).norm(dim=1).float().cpu())
            p.update(len(x))
    return torch.cat(norms)


def sample_chains(run: Run, n: int, n_steps: int, batch_size: int, labels: torch.Tensor | None = None,
                  desc: str = "SGLD chains") -> torch.Tensor:
    """Fresh SGLD chains from p0 with the run's SGLD settings (paper Eq. 3), through the fast
    :class:`~fastebm.algorithm.sampler.Sampler`: on CUDA the fused Triton update and (unconditional chains) a CUDA graph
    per batch shape, in fp32 as in training (docs/fastpath.md, "bf16 and SGLD"); on the CPU the plain path (identical to
    :func:`~fastebm.algorithm.sampler.sgld`).

    Args:
        run: the loaded run (``run.p0`` and the step size / noise / clamps / BN mode of its config; ``update``
            samples as ``batch``, so the loaded model's running statistics are never changed).
        n: chains (>= 1); n_steps: SGLD steps (>= 1); batch_size: chains per batch.
        labels: optional (n,) int64 classes (classifier models): chain i follows E(x, y_i) = -f(x)[y_i]
            (JEM, Grathwohl et al. 2020, p(x|y)).
        desc: what the chains are for, for the progress line.

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
        require_classifier(run, "class-conditional sampling")
    cfg, model = run.cfg, run.model
    # update normalizes as batch does (same chains); restoring keeps the checkpoint's statistics for later tasks
    bn_mode = "batch" if cfg.sgld_bn == "update" else cfg.sgld_bn
    scfg = SGLDConfig.of_run(cfg, n_steps, bn_mode)
    fast = fast_flags(run.device.type)
    sampler = Sampler(model, scfg, triton=fast["triton"], amp=fast["sgld_amp"], cuda_graphs=fast["cuda_graphs"])
    out, was_training = [], model.training
    model.train(bn_mode == "batch")  # as in training; the Sampler restores BN running statistics
    try:
        with Progress(n, f"{LOG}: {desc} ({n_steps} steps)", unit="chains") as p:
            for i in range(0, n, batch_size):
                m = min(batch_size, n - i)
                if labels is not None:  # E(x, y) = -f(x)[y]: a per-batch energy, so no CUDA graph
                    y = labels[i:i + m].to(run.device)
                    sampler = Sampler(model, scfg, triton=fast["triton"], amp=fast["sgld_amp"],
                                      rng_state=sampler.rng_state,
                                      net=lambda x, y=y: (-model.logits(x).gather(1, y[:, None]).squeeze(1), None))
                out.append(sampler(run.p0.sample(m, device=run.device)).clamp_(-1, 1).cpu())
                p.update(m)
    finally:
        model.train(was_training)
    return torch.cat(out)


def check_range(x: torch.Tensor, what: str) -> torch.Tensor:
    """x clamped to [-1, 1] after checking it is finite and inside [-1, 1] up to 1e-3, else EvalError."""
    if not bool(torch.isfinite(x).all()):
        raise EvalError(f"{what}: {int((~torch.isfinite(x)).sum())} non-finite pixel values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.001 or hi > 1.001:
        raise EvalError(f"{what}: expected images in [-1, 1], got values in [{lo:.4g}, {hi:.4g}] "
                        "(a model trained without clamping x to [-1, 1]?)")
    return x.clamp(-1, 1)
