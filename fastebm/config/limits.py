"""What each option accepts: its choices, its range and the rules between options, checked once when a Config is
resolved, each error one line that names the option, what was expected and what was got. Whether a run fits its
data and its machine: :func:`fastebm.run.completion.check_fits`."""
from __future__ import annotations

import dataclasses
import math

from ..algorithm.loss import REG_FORMS
from ..algorithm.model import MODEL_KINDS, NORMS
from ..algorithm.sampler import BN_MODES
from ..data.datasets import DATASETS
from ..p0 import P0_KINDS
from ..p0.base import COV_FORMS

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
    if cfg.image_size is not None:  # a folder's side is known once its images are (completion.check_fits)
        check_p0_size(cfg)


def check_p0_size(cfg) -> None:
    """A p0 fitted at --p0-size (``gaussian-downsampled``): it must divide the image side (each pixel becomes a
    block)."""
    if P0_KINDS[cfg.p0].uses_size and (cfg.p0_size > cfg.image_size or cfg.image_size % cfg.p0_size):
        raise ValueError(f"--p0-size {cfg.p0_size}: expected a divisor of the image side {cfg.image_size} "
                         f"(--p0 {cfg.p0} fits at p0-size and repeats each pixel image-side / p0-size "
                         f"times each way)")
