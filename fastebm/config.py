"""Run configuration: plain values, the paper's presets per dataset, and the rules that depend on K.

Presets (all overridable from the command line):

=============  ==========  =====================================================================
dataset        network     notes
=============  ==========  =====================================================================
cifar10/100    WRN-28-10   BatchNorm, SGD lr 0.1, momentum 0.9, warm-up 1000 its, 150 epochs,
                           decay ×0.2 at epochs 50/100/125, buffer 10,000, ρ 0.05, α 1
imagenet32     WRN-28-2    as CIFAR
celebahq128    WRN-28-5    M-EBM (unconditional), low-rank p0, fourth WRN stage
folder         WRN-28-10   as CIFAR, image size from the data
digits         WRN-10-1    tiny CPU demo: 3 epochs of 100 iterations, lr 0.05, buffer 1,000
=============  ==========  =====================================================================

K-dependent rules of the reference scripts: λ (L2 energy) = 0.1 and σ (SGLD noise) = 0 for K ≤ 2;
λ = 0.5 and σ = 0.001 for K ≥ 3 (the scripts use K ≥ 5; K = 3, 4 follow the larger-K rule).

The JEM baseline (``--model jem``): K = 20, uniform p0, energy −logsumexp(logits), one batch of 64 for
both terms, no L2 term, SGLD noise 0.01, data noise 0.03, no normalization, Adam lr 1e-4
(the settings of the JEM paper's code).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .data import DATASETS
from .init import COV_FORMS
from .loss import REG_FORMS
from .model import MODEL_KINDS, NORMS
from .sampler import BN_MODES


@dataclass
class Config:
    """Every knob of a run; defaults are the CIFAR-10 M-JEM preset (see :func:`resolve`)."""

    # data
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    train_subset: int | None = None  # keep this many training images (demos, tests)
    test_subset: int | None = None  # evaluate on this many test images
    max_per_class: int | None = None  # folder layouts: read at most this many files per class
    image_size: int = 32  # set from the data
    n_classes: int = 10  # set from the data
    data_noise: float = 0.0
    # model
    model: str = "mjem"
    depth: int = 28
    width: int = 10
    norm: str = "batch"
    dropout: float = 0.0
    # informative initialization and buffer
    p0: str = "gaussian"
    cov: str = "auto"
    rank: int = 100
    buffer_size: int = 10_000
    reinit_freq: float = 0.05
    # SGLD
    k: int = 5
    step_size: float = 1.0
    noise: float | None = None  # None: by the K rule
    grad_clip: float | None = None
    clamp_x: bool = True
    sgld_bn: str = "batch"
    # loss
    l2: float | None = None  # None: by the K rule
    reg_form: str = "eq8"
    cls_weight: float = 1.0
    batch_size: int = 64  # p(x) batch, not augmented
    cls_batch_size: int = 128  # p(y|x) batch, augmented (M-JEM)
    # optimization
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_iters: int = 1000
    decay_epochs: list = field(default_factory=lambda: [50, 100, 125])
    decay_rate: float = 0.2
    epochs: int = 150
    iters_per_epoch: int = 390
    max_loss: float = 1e5  # |loss| above this stops the run (reference code)
    # fast path (issue 3); "auto" = fast on CUDA, plain reference path on CPU (see fast_flags / plain_flags)
    compile: str = "auto"  # off | default | max-autotune
    cuda_graphs: bool | None = None  # capture the K-step SGLD loop in a CUDA graph
    amp: str = "auto"  # bf16 | fp16 | off: autocast for the network
    triton: bool | None = None  # fused Triton kernels (Langevin update, low-rank p0 sampling)
    channels_last: bool | None = None
    nvtx: bool = False  # NVTX ranges for nsys
    # issue 12: the whole iteration as one compiled graph, and the fast path's run-time self-check
    compile_step: bool | None = field(default=None, metadata={
        "help": "torch.compile the whole training iteration as one graph (CUDA graphs on CUDA); "
                "auto: on for CUDA, off on CPU"})
    fast_path: str = field(default="auto", metadata={
        "help": "self-check of the fast components against the plain path at the first iteration: auto "
                "(switch a failing one off with a warning), strict (error), off (no check)"})
    # run
    device: str = "auto"
    seed: int = 1
    out: str | None = None
    log_every: int = 10
    eval_every: int | None = None  # None: once per epoch
    sample_every: int | None = None  # None: once per epoch
    ckpt_every: int | None = None  # None: once per epoch
    check_every: int | None = None  # host-side divergence check interval; None: 1 on CPU, log_every on CUDA
    progress: bool = True

    @property
    def total_iters(self) -> int:
        """epochs × iters_per_epoch."""
        return self.epochs * self.iters_per_epoch

    def to_dict(self) -> dict:
        """Plain dict of every field (stored in checkpoints)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The resolved configuration as indented JSON (config.json of a run)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def arch(self) -> dict:
        """What a checkpoint must match to be loaded into this run."""
        return {k: getattr(self, k) for k in ("model", "depth", "width", "norm", "n_classes", "image_size")}


PRESETS: dict[str, dict] = {
    "cifar10": dict(depth=28, width=10),
    "cifar100": dict(depth=28, width=10),
    "imagenet32": dict(depth=28, width=2),
    "celebahq128": dict(depth=28, width=5, model="mebm", cov="lowrank", image_size=128),
    "folder": dict(depth=28, width=10),
    "digits": dict(depth=10, width=1, epochs=3, iters_per_epoch=100, buffer_size=1000, warmup_iters=50,
                   lr=0.05, decay_epochs=[2], batch_size=32, cls_batch_size=64, log_every=10),
}

JEM_BASELINE = dict(k=20, p0="uniform", l2=0.0, noise=0.01, data_noise=0.03, norm="none",
                    optimizer="adam", lr=1e-4, weight_decay=0.0)

CHOICES = {"dataset": DATASETS, "model": MODEL_KINDS, "norm": NORMS, "p0": ("gaussian", "uniform"),
           "cov": ("auto",) + COV_FORMS, "sgld_bn": BN_MODES, "reg_form": REG_FORMS,
           "optimizer": ("sgd", "adam"), "device": None,
           "compile": ("auto", "off", "default", "max-autotune", "aot_eager"), "amp": ("auto", "bf16", "fp16", "off"),
           "fast_path": ("auto", "strict", "off")}


def plain_flags() -> dict:
    """Every fast-path flag off: the plain PyTorch reference path."""
    return dict(compile="off", cuda_graphs=False, amp="off", triton=False, channels_last=False,
                compile_step=False)


def fast_flags(device_type: str) -> dict:
    """The fast-path flags that ``auto`` means on a device type: everything on CUDA, plain on CPU."""
    if device_type != "cuda":
        return plain_flags()
    return dict(compile="default", cuda_graphs=True, amp="bf16", triton=True, channels_last=True,
                compile_step=True)


def resolve_fast_flags(cfg: "Config", device_type: str) -> None:
    """Replace ``auto`` / None fast-path flags of ``cfg`` in place by :func:`fast_flags` of the device.

    Raises ValueError when a CUDA-only flag (cuda_graphs, triton) is forced on without CUDA.
    """
    if cfg.check_every is None:  # a host sync per iteration costs nothing on the CPU
        cfg.check_every = 1 if device_type != "cuda" else cfg.log_every
    auto = fast_flags(device_type)
    for name, value in auto.items():
        if getattr(cfg, name) in (None, "auto"):
            setattr(cfg, name, value)
    if device_type != "cuda":
        for name in ("cuda_graphs", "triton"):
            if getattr(cfg, name):
                raise ValueError(f"--{name.replace('_', '-')} needs a CUDA device (this run is on {device_type})")


def resolve(overrides: dict) -> Config:
    """Config = defaults ← dataset preset ← JEM baseline (``model="jem"``) ← K rule ← explicit overrides.

    Args:
        overrides: field → value for what the user set (``None`` values are ignored).

    Raises:
        ValueError: unknown field, a value outside its choices, K < 1, or an inconsistent setting.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = set(given) - names
    if unknown:
        raise ValueError(f"unknown config field(s) {sorted(unknown)}; expected fields of Config")
    dataset = given.get("dataset", Config.dataset)
    values: dict = {}
    values.update(PRESETS.get(dataset, {}))
    if given.get("model", values.get("model")) == "jem":
        values.update(JEM_BASELINE)
    values.update(given)
    cfg = Config(**values)
    if cfg.l2 is None:
        cfg.l2 = 0.1 if cfg.k <= 2 else 0.5
    if cfg.noise is None:
        cfg.noise = 0.0 if cfg.k <= 2 else 0.001
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Check every value; raise ValueError naming the option, what was expected and what was got."""
    for name, choices in CHOICES.items():
        if choices is not None and getattr(cfg, name) not in choices:
            raise ValueError(f"--{name.replace('_', '-')}: expected one of {list(choices)}, "
                             f"got {getattr(cfg, name)!r}")
    if int(cfg.k) != cfg.k or cfg.k < 1:
        raise ValueError(f"--k: SGLD steps K must be an integer >= 1, got {cfg.k}")
    positive = ("step_size", "lr", "epochs", "iters_per_epoch", "batch_size", "cls_batch_size",
                "buffer_size", "log_every", "rank", "max_loss")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected a value > 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.reinit_freq <= 1:
        raise ValueError(f"--reinit-freq: expected a value in [0, 1], got {cfg.reinit_freq}")
    for name in ("noise", "l2", "data_noise", "weight_decay", "warmup_iters", "momentum", "dropout"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected a value >= 0, got {getattr(cfg, name)}")
    if cfg.check_every is not None and cfg.check_every <= 0:
        raise ValueError(f"--check-every: expected a value > 0, got {cfg.check_every}")
    if cfg.grad_clip is not None and cfg.grad_clip <= 0:
        raise ValueError(f"--grad-clip: expected a value > 0, got {cfg.grad_clip}")
