"""What each option accepts, and whether a run fits its data and its machine: checked before anything large is
allocated, each error one line that names the option, what was expected and what was got."""
from __future__ import annotations

import dataclasses
import math
import os

import torch

from .datasets import DATASETS
from .loss import REG_FORMS
from .model import MODEL_KINDS, NORMS
from .p0 import P0_KINDS
from .p0.base import COV_FORMS, default_cov_form
from .sampler import BN_MODES

# --p0's choices are the registry itself (its keys, in order): a kind registered later is a choice too.
CHOICES = {"dataset": tuple(DATASETS), "model": MODEL_KINDS, "norm": NORMS, "p0": P0_KINDS,
           "cov": ("auto",) + COV_FORMS, "sgld_bn": BN_MODES, "reg_form": REG_FORMS,
           "optimizer": ("sgd", "adam"), "device": None,
           "compile": ("auto", "off", "default", "max-autotune", "aot_eager"), "amp": ("auto", "bf16", "fp16", "off"),
           "sgld_amp": ("auto", "bf16", "fp16", "off"),
           "on_divergence": ("rollback", "stop"), "fast_path": ("auto", "strict", "off"),
           "fid_split": ("auto", "train", "test", "train+test")}

# the allowed range of every numeric option, (low, high, low included, high included);
# None = unbounded. tests/test_inputs.py checks that every float field of Config has an entry.
RANGES: dict[str, tuple] = {
    "data_noise": (0, None, True, False), "dropout": (0, 1, True, False), "reinit_freq": (0, 1, True, True),
    "bn_momentum": (0, 1, False, True),  # 0 would leave the running statistics at their initial 0 / 1 for ever
    "step_size": (0, None, False, False), "noise": (0, None, True, False), "grad_clip": (0, None, False, False),
    "l2": (0, None, True, False), "cls_weight": (0, None, True, False), "px_weight": (0, None, True, False),
    "sgld_inner_steps": (1, 1000, True, True), "lr": (0, None, False, False),
    "momentum": (0, 1, True, False), "weight_decay": (0, None, True, False),
    "decay_rate": (0, None, False, False), "max_loss": (0, None, False, False),
    "epochs": (1, None, True, False), "iters_per_epoch": (1, None, True, False),
    "batch_size": (1, None, True, False), "cls_batch_size": (1, None, True, False),
    "buffer_size": (1, None, True, False), "rank": (1, None, True, False), "warmup_iters": (0, None, True, False),
    "p0_size": (1, 1024, True, True),
    "depth": (1, 1000, True, True),  # deeper is no WRN anyone trains (and is refused before it is built)
    "width": (1, None, True, False), "image_size": (8, 1024, True, True),
    "train_subset": (1, None, True, False), "test_subset": (1, None, True, False),
    "max_per_class": (1, None, True, False), "log_every": (1, None, True, False),
    "eval_every": (1, None, True, False), "sample_every": (1, None, True, False),
    "ckpt_every": (1, None, True, False), "check_every": (1, None, True, False),
    "max_rollbacks": (0, None, True, False), "rollback_lr_factor": (0, 1, False, True),
    "fid_every": (0, None, True, False), "keep_every": (0, None, True, False),  # 0: off
    "fid_keep_ratio": (0, None, False, False), "is_keep_ratio": (0, None, False, False),  # > 1: count per class
    "seed": (0, 2 ** 32 - 1, True, True),  # numpy's seed range
    "threads": (1, 4096, True, True),
}


def flag(name: str) -> str:
    """The command-line option of a Config field: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _interval(lo, hi, lo_in, hi_in) -> str:
    low, high = "-inf" if lo is None else lo, "inf" if hi is None else hi
    return f"{'[' if lo_in else '('}{low}, {high}{']' if hi_in else ')'}"


def validate(cfg) -> None:
    """Check every value; raise ValueError naming the option, what was expected and what was got.

    Every numeric field (and each element of a list field) must be finite — NaN and ±inf are rejected
    for all of them, by type, not from a list — and inside its :data:`RANGES` interval.
    """
    for name, choices in CHOICES.items():
        if choices is not None and getattr(cfg, name) not in choices:
            raise ValueError(f"{flag(name)}: expected one of {list(choices)}, "
                             f"got {getattr(cfg, name)!r}")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
                raise ValueError(f"{flag(f.name)}: expected a finite number, got {v}")
        if f.name in RANGES and value is not None:
            lo, hi, lo_in, hi_in = RANGES[f.name]
            if ((lo is not None and (value < lo or (value == lo and not lo_in)))
                    or (hi is not None and (value > hi or (value == hi and not hi_in)))):
                raise ValueError(f"{flag(f.name)}: expected a value in {_interval(lo, hi, lo_in, hi_in)}, "
                                 f"got {value}")
    if cfg.depth < 4 or (cfg.depth - 4) % 6:
        raise ValueError(f"--depth: a Wide-ResNet has depth 6n + 4 (10, 16, 22, 28, ...), got {cfg.depth}")
    if cfg.px_weight == 0 and (cfg.model == "mebm" or cfg.cls_weight == 0):
        raise ValueError(f"--px-weight 0: a classifier-only run needs a classifier model and --cls-weight > 0; got "
                         f"--model {cfg.model} --cls-weight {cfg.cls_weight}")
    if int(cfg.k) != cfg.k or cfg.k < 1:  # K (int field) has no RANGES entry: this message says what K is
        raise ValueError(f"--k: SGLD steps K must be an integer >= 1, got {cfg.k}")
    for e in cfg.decay_epochs:
        if int(e) != e or e < 0:
            raise ValueError(f"--decay-epochs: expected epoch numbers >= 0, got {cfg.decay_epochs}")
    if cfg.image_size is not None:  # a folder's side is known once its images are (check_fits)
        _check_p0_size(cfg)


def _check_p0_size(cfg) -> None:
    """A p0 fitted at --p0-size (``gaussian-downsampled``): it must divide the image side (each pixel becomes a
    block)."""
    if P0_KINDS[cfg.p0].uses_size and (cfg.p0_size > cfg.image_size or cfg.image_size % cfg.p0_size):
        raise ValueError(f"--p0-size {cfg.p0_size}: expected a divisor of the image side {cfg.image_size} "
                         f"(--p0 {cfg.p0} fits at p0-size and repeats each pixel image-side / p0-size "
                         f"times each way)")


def available_memory(device) -> int:
    """Bytes that can still be allocated on ``device``: free CUDA memory (``torch.cuda.mem_get_info``),
    or the host's MemAvailable (/proc/meminfo; free pages where that file is missing)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def count_weights(cfg) -> int:
    """Parameters of the model ``cfg`` describes (``n_classes`` and ``image_size`` set), counted on the meta
    device: the model is built without allocating any of its weights, so the count cannot drift from it."""
    from .model import build_model

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg).parameters())


def check_fits(cfg, n_train: int, device, world_size: int = 1, available: int | None = None) -> None:
    """Reject sizes that cannot fit the data or the device, before anything large is allocated.

    Args:
        cfg: the resolved configuration (``image_size`` set from the data).
        n_train: training images (after ``--train-subset``).
        device: the training device; ``available``: bytes free there (default :func:`available_memory`).
        world_size: data-parallel ranks. Every rank draws its slice of the global batch from the whole
            training set, so the global batch is what must not exceed it (each rank then holds B/N ≤ N
            images); each rank holds a ⌈|B|/N⌉ shard of the replay buffer on its own device.

    Raises:
        ValueError: ``--px-weight 0 --model mjem`` on several processes (an unused head under DDP); a classifier
        model on data with fewer than 2 classes; fewer than 2 training images; a WRN
        whose weights, gradients and optimizer state (16 bytes a weight) exceed the free memory
        (``--depth`` / ``--width``); ``--batch-size`` / ``--cls-batch-size``
        (models with a p(y|x) batch) larger than the training set, a replay
        buffer (float32, ``--buffer-size``), a full p0 covariance (float64, ``--cov full``) or the class
        covariances of ``--p0 gaussian-mixture`` larger than the free memory of the device; a ``--p0-size``
        that does not divide the image side. The message names the option and the limit.
    """
    if cfg.px_weight == 0 and cfg.model == "mjem" and world_size > 1:  # DDP (find_unused_parameters=False)
        raise ValueError("--px-weight 0 --model mjem under torchrun: DDP refuses the energy head a classifier-only "
                         "run leaves unused; pass --model lse-jem (the same classifier without that head)")
    if cfg.model != "mebm" and cfg.n_classes < 2:
        raise ValueError(f"--model {cfg.model}: a p(y|x) model needs at least 2 classes; --dataset {cfg.dataset} "
                         f"has {cfg.n_classes} (use --model mebm for unlabelled images)")
    sizes = [("batch_size", cfg.batch_size)] + ([("cls_batch_size", cfg.cls_batch_size)]
                                                if cfg.model != "mebm" else [])
    for name, b in sizes:
        if b > n_train:
            raise ValueError(f"{flag(name)} {b}: larger than the training set; expected at most {n_train} "
                             f"(the number of training images{' after --train-subset' if cfg.train_subset else ''})")
    if n_train < 2:
        raise ValueError(f"the training set holds {n_train} image(s) (--train-subset, --max-per-class, the data); "
                         f"expected at least 2 (the p0 fit and the batches need them)")
    free = available_memory(device) if available is None else available
    try:
        weights = count_weights(cfg)
    except RuntimeError as e:  # a layer with more elements than torch can address
        raise ValueError(f"--depth {cfg.depth} --width {cfg.width}: a WRN-{cfg.depth}-{cfg.width} has a layer larger "
                         f"than torch can address ({e})") from None
    if 16 * weights > free:  # fp32 weights, gradients and up to two optimizer moments
        raise ValueError(f"--depth {cfg.depth} --width {cfg.width}: a WRN-{cfg.depth}-{cfg.width} has "
                         f"{weights / 1e6:.4g} M weights; training needs about {16 * weights / 2 ** 30:.4g} GiB "
                         f"(weights, gradients, optimizer state), {free / 2 ** 30:.1f} GiB are free on {device}")
    per_sample = 3 * cfg.image_size ** 2 * 4
    shard = -(-cfg.buffer_size // world_size)
    if shard * per_sample > free:
        limit = free // per_sample * world_size
        raise ValueError(f"{flag('buffer_size')} {cfg.buffer_size}: the replay buffer needs "
                         f"{shard * per_sample / 2 ** 30:.1f} GiB per rank, {free / 2 ** 30:.1f} GiB are free on "
                         f"{device}; expected at most {limit} samples")
    d = 3 * cfg.image_size ** 2
    if cfg.p0 == "gaussian" and cfg.cov == "full" and 2 * d * d * 8 > free:
        raise ValueError(f"--cov full: a {d}×{d} float64 covariance (and its factor) needs "
                         f"{2 * d * d * 8 / 2 ** 30:.1f} GiB, {free / 2 ** 30:.1f} GiB are free on {device}; "
                         f"use --cov lowrank or a smaller --image-size")
    _check_p0_size(cfg)
    form = default_cov_form(cfg.image_size) if cfg.cov == "auto" else cfg.cov
    if cfg.p0 == "gaussian-mixture":  # K float32 factors (D × D or D × rank, + diagonal), one float64 fit at a time
        m, fit = (d, 2 * d * d * 8) if form == "full" else (min(cfg.rank, d) + 1, 0)
        need = cfg.n_classes * d * m * 4 + fit
        if need > free:
            raise ValueError(f"--p0 gaussian-mixture --cov {form}: {cfg.n_classes} class covariances over D = {d} "
                             f"need {need / 2 ** 30:.1f} GiB, {free / 2 ** 30:.1f} GiB are free on {device}; use "
                             f"--cov lowrank, --p0 gaussian or a smaller --image-size")
