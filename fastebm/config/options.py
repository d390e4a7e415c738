"""Run configuration: every option with its default and source, the presets, and the rules that depend on K.

Every value carries its source beside it. *paper*: Yang & Ji, "M-EBM: Towards Understanding the Manifolds of
Energy-Based Models" (PAKDD 2023, arXiv 2303.04343): Table 5, Appendix A, Section 5. *mebm*: the authors'
code, github sndnyang/mebm (``train_maebm.py``, ``utils.py``, ``scripts/*.sh``). *JEM*: github
wgrathwohl/JEM (``train_wrn_ebm.py``, its ``README.md``). docs/recipes.md tabulates every preset and where
the paper and the authors' code disagree (the choice made, and the flag to the other).

How a run's configuration is resolved (:func:`resolve`)::

    Config defaults (the M-EBM / M-JEM recipe of the mebm code)
      ← dataset preset (fastebm.data.datasets)  ← model preset (fastebm.config.recipes: jem, jempp, lse-jem)
      ← paper row (--paper KEY: the row's settings and its authors' code, fastebm.config.paper)
      ← what the user set  ← K rule (λ, σ, where still unset)  ← iterations per epoch from the dataset size

K rule (mebm ``scripts/maebm_cifar10.sh`` at da79aff, its closing comment: "K=2 ... l2_coeff 0.1 and
sgld_std 0; K>=5, l2_coeff=0.5, sgld_std=0.001"): λ = 0.1 and σ = 0 for K ≤ 2; λ = 0.5 and σ = 0.001 for
K ≥ 3. Table 5 gives σ = 0.001 for K = 2 as well: ``--noise 0.001 --l2 0.5``.

What each option accepts: :mod:`fastebm.config.limits`; the Config completed for a device, ranks and data, and
whether a run fits them: :mod:`fastebm.run.completion`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch

from ..data.datasets import DATASETS
from .limits import validate
from .paper import pinned_by
from .recipes import RECIPES, SHARED_BATCH


class _NoneGiven:
    """Marks an option the user set to ``none`` explicitly (so that no preset replaces it)."""

    def __repr__(self) -> str:
        return "none"


NONE = _NoneGiven()


def _f(default, help: str, group: str, **kw):
    """A Config field with its command-line help and help group (read by
    :func:`fastebm.config.flags.add_config_flags`)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "group": group, **kw})
    return field(default=default, metadata={"help": help, "group": group, **kw})


@dataclass(frozen=True)
class Config:
    """Every knob of a run. The defaults are the M-EBM / M-JEM recipe of the authors' code (sources in the
    comments); :func:`resolve` applies the dataset, model and K presets on top. Each field's ``metadata``
    holds its ``help`` line (and ``group``), from which ``python -m fastebm.train`` builds its flags."""

    # a row of the paper (fastebm.config.paper, docs/recipes.md): its settings and its authors' code, under what is
    # given
    paper: str | None = _f(None, "reproduce this row of the paper (a key of docs/recipes.md, e.g. t2-mebm-imagenet32-"
                                 "k2): its settings and the authors' code of the commit it names (L2 form, BatchNorm, "
                                 "fp32); options given still win, and the run names each that differs", "paper row")
    # data
    dataset: str = _f("digits", "dataset (digits: the embedded demo, no download)", "data")
    data_root: str | None = _f(None, "folder holding the dataset's files (not needed for digits)", "data")
    download: bool = _f(False, "download CIFAR into --data-root when its files are missing", "data")
    train_subset: int | None = _f(None, "keep this many training images (demos, tests; none: all)", "data")
    test_subset: int | None = _f(None, "evaluate on this many test images (none: all)", "data")
    max_per_class: int | None = _f(None, "folder layouts: read at most this many files per class "
                                         "(none: all)", "data")
    # --image-size resizes every image (antialiased); none keeps the data's own size, and the
    # trainer then sets it from the data (a checkpoint always stores the size the model was built for)
    image_size: int | None = _f(None, "resize every image to this side in pixels, antialiased (none: the data's "
                                      "own size)", "data")
    n_classes: int = _f(10, "number of classes (set from the data)", "data")
    data_noise: float = _f(0.0, "std of Gaussian noise added to data batches", "data")  # mebm scripts --sigma .0
    # mebm utils.get_data: transform_px has no augmentation; dload_train_labeled uses transform_train
    augment_px: bool = _f(False, "augment the p(x) batch too (reflect-pad 4, crop, flip)", "data")
    augment_cls: bool = _f(True, "augment the p(y|x) batch (reflect-pad 4, crop, flip)", "data")
    # model
    model: str = _f("mjem", "mebm, mjem, lse-jem, or the baselines jem and jempp (JEM++)", "model")
    depth: int = _f(28, "WRN depth 6n+4", "model")  # mebm scripts --depth 28
    width: int = _f(10, "WRN widening factor", "model")  # mebm scripts --width 10
    norm: str = _f("batch", "normalization layers of the WRN", "model")  # mebm scripts --norm batch
    dropout: float = _f(0.0, "dropout rate inside the WRN blocks", "model")  # mebm train_maebm.py --dropout_rate 0
    # PyTorch's default, so running statistics average over ~10 batches; mebm models/norms.py get_norm (ab600eb):
    # BatchNorm2d(n, momentum=0.9), running statistics ≈ the latest batch's (docs/recipes.md)
    bn_momentum: float = _f(0.1, "BatchNorm momentum m, PyTorch's convention: running ← (1 − m)·running + m·batch "
                                 "statistic (the authors' code: 0.9)", "model")
    # informative initialization and replay buffer
    p0: str = _f("gaussian", "SGLD initial distribution: gaussian (informative, Eq. 6), gaussian-downsampled (Eq. 6 "
                             "at --p0-size, pixels repeated: the authors' CelebA p0), gaussian-mixture (one Gaussian "
                             "per class, JEM++) or uniform", "p0 and replay buffer")  # mebm train_maebm.py --init gm
    cov: str = _f("auto", "p0 covariance form (auto: full up to 64 px, low-rank above)", "p0 and replay buffer")
    rank: int = _f(100, "rank of the low-rank p0 covariance", "p0 and replay buffer")
    # mebm one_center.py @23b0813 ds_grain: 4x4 blocks at 128 px, 2x2 at 64 px: 32 px both times
    p0_size: int = _f(32, "gaussian-downsampled: side the Gaussian is fitted at (divides the image side)",
                      "p0 and replay buffer")
    buffer_size: int = _f(10_000, "replay buffer size",
                          "p0 and replay buffer")  # mebm train_maebm.py --buffer_size 10000
    reinit_freq: float = _f(0.05, "ρ, fraction of chains restarted from p0 per draw",
                            "p0 and replay buffer")  # mebm train_maebm.py --reinit_freq 0.05
    # SGLD
    k: int = _f(5, "SGLD steps K per iteration", "SGLD")  # mebm scripts/majem_cifar10.sh --n_steps 5
    # JEMPP train_jempp.py @fba6ba5 sample_q (PYLD): --in_steps updates of --pyld_lr from each step's gradient
    sgld_inner_steps: int = _f(1, "updates of --step-size per SGLD step from its one input gradient (JEM++'s PYLD "
                                  "inner steps; 1: SGLD, Eq. 3)", "SGLD")
    step_size: float = _f(1.0, "SGLD step size α", "SGLD")  # mebm scripts --sgld_lr 1
    noise: float | None = _f(None, "SGLD noise σ (none: by the K rule)", "SGLD")  # K rule, see module docstring
    grad_clip: float | None = _f(1.0, "clamp ∂E/∂x to [-c, c] at every SGLD step (none: no clamp)",
                                 "SGLD")  # mebm train_maebm.py sample_q: t.clamp(eta, -1, 1)
    clamp_x: bool = _f(True, "clamp SGLD samples to [-1, 1] after every step",
                       "SGLD")  # mebm sample_q: t.clamp(x_k, -1, 1)
    # mebm sample_q (f7ae2f1): f stays in train mode, so its K forwards and f(x_q) update the running statistics
    # ("update"); fastebm keeps those statistics to the data by default (docs/recipes.md)
    sgld_bn: str = _f("batch", "BatchNorm on SGLD chains: batch (batch statistics; running statistics left to the "
                               "data), update (batch statistics; every SGLD step and E(x-) update the running "
                               "statistics, as the authors' code) or eval (running statistics)", "SGLD")
    # loss
    l2: float | None = _f(None, "λ, L2 energy regularization (none: by the K rule)", "loss")  # K rule
    reg_form: str = _f("eq8", "L2 term: eq8 (paper Eq. 8, per sample), squared-means (squared batch means: mebm "
                              "train_maebm.py to 20bbf21) or data-per-sample (data per sample, the negatives' mean: "
                              "train_maebm.py since f7ae2f1, the latest)", "loss")
    cls_weight: float = _f(1.0, "weight of the cross-entropy term", "loss")  # mebm scripts --pyx 1.0
    px_weight: float = _f(1.0, "weight of the p(x) term; 0: a classifier only, no SGLD (the authors' --px 0)",
                          "loss")  # mebm train_maebm.py --px 1.
    batch_size: int = _f(64, "p(x) batch (positives and SGLD chains)", "loss")  # mebm train_maebm.py --batch_size 64
    cls_batch_size: int = _f(128, "p(y|x) batch, augmented; one pass of it is an epoch (celebahq128: of --batch-size)",
                             "loss")  # mebm utils.get_data: label_bs = 128
    # optimization
    optimizer: str = _f("sgd", "optimizer", "optimization")  # mebm scripts --optimizer sgd
    lr: float = _f(0.1, "learning rate", "optimization")  # mebm scripts --lr .1; paper Appendix A (CIFAR-10)
    momentum: float = _f(0.9, "SGD momentum", "optimization")  # mebm train_maebm.py: SGD(momentum=.9)
    # mebm train_maebm.py --weight_decay 5e-4 (never overridden by its scripts)
    weight_decay: float = _f(5e-4, "weight decay", "optimization")
    # mebm scripts --warmup_iters 1000; train_maebm.py: lr * cur_iter / warmup_iters
    warmup_iters: int = _f(1000, "linear warm-up lr·it/warmup over the first iterations (at most a fifth of the "
                                 "run)", "optimization")
    decay_epochs: list[int] = _f([60, 120, 180], "epochs at which the lr is multiplied by --decay-rate",
                                 "optimization")  # mebm scripts --decay_epochs 60 120 180
    decay_rate: float = _f(0.2, "lr decay factor", "optimization")  # mebm train_maebm.py --decay_rate .2
    epochs: int = _f(200, "training epochs", "optimization")  # paper Table 5; mebm scripts --n_epochs 200
    iters_per_epoch: int | None = _f(None, "iterations per epoch (none: training images // --cls-batch-size, one "
                                           "pass of the labelled loader; celebahq128: // --batch-size; jem: its own)",
                                     "optimization")  # mebm utils.get_data: drop_last=True, batch 128
    max_loss: float = _f(1e5, "stop the run when |loss| exceeds this",
                         "optimization")  # mebm train_maebm.py: loss.abs() > 1e5
    # fast path; "auto" = fast on CUDA, plain reference path on CPU (see fast_flags / plain_flags)
    compile: str = _f("auto", "torch.compile of the energy network (auto: default on CUDA, off on CPU)",
                      "fast path")
    cuda_graphs: bool | None = _f(None, "capture the K-step SGLD loop in a CUDA graph (unset: on with CUDA)",
                                  "fast path")
    amp: str = _f("auto", "autocast precision of the loss pass: energies, classifier, weight gradients (auto: bf16 on "
                          "CUDA, off on CPU)", "fast path")
    # bf16 SGLD moved chains by ~60 % of the injected SGLD noise (K = 5; WRN-10-1, docs/fastpath.md "bf16 and SGLD"),
    # more than the self-check allows; the sampler therefore stays fp32 (TF32 convolutions on CUDA) by default
    sgld_amp: str = _f("auto", "autocast precision of the SGLD input gradients (auto: off, fp32)", "fast path")
    triton: bool | None = _f(None, "fused Triton kernels: Langevin update, p0 sampling (unset: on with CUDA)",
                             "fast path")
    channels_last: bool | None = _f(None, "channels-last network and chains (unset: on with CUDA)", "fast path")
    nvtx: bool = _f(False, "NVTX ranges for nsys", "fast path")
    # the whole iteration as one compiled graph, and the fast path's check at the first iteration
    compile_step: bool | None = _f(None, "torch.compile the whole training iteration as one graph (CUDA graphs on "
                                         "CUDA; unset: on with CUDA, off on CPU)", "fast path")
    fast_path: str = _f("auto", "self-check of the fast components against the plain path at the first "
                                "iteration: auto (switch a failing one off with a warning), strict (error), off "
                                "(no check)", "fast path")
    # run
    device: str = _f("auto", "auto, cpu, cuda, cuda:N", "run")
    seed: int = _f(1, "random seed", "run")  # mebm train_maebm.py --seed 1
    out: str | None = _f(None, "run folder (none: runs/<dataset>-<model>-k<K>, -2, -3, ... if taken)", "run")
    log_every: int = _f(10, "iterations between metric lines", "run")
    eval_every: int | None = _f(None, "iterations between test evaluations (none: once per epoch)", "run")
    sample_every: int | None = _f(None, "iterations between sample grids (none: once per epoch)", "run")
    ckpt_every: int | None = _f(None, "iterations between checkpoints (none: once per epoch)", "run")
    check_every: int | None = _f(None, "iterations between host-side divergence checks (none: 1 on CPU, "
                                       "--log-every on CUDA)", "run")
    progress: bool = _f(True, "progress bar", "run")
    threads: int | None = _f(None, "CPU threads of torch (none: the usable cores minus the current load, at least 1; "
                                   "OMP_NUM_THREADS if set)", "run")
    # automatic recovery from divergence (Trainer.fit / Trainer.rollback)
    on_divergence: str = _f("rollback", "on divergence: rollback (to the latest ckpt.pt, lower lr, reseed) or "
                                        "stop (exit 1)", "divergence recovery")
    max_rollbacks: int = _f(3, "rollbacks allowed over the whole run (stored in checkpoints); one more "
                               "divergence stops", "divergence recovery")
    rollback_lr_factor: float = _f(0.5, "each rollback multiplies the learning rate (a persistent scale on the "
                                        "schedule) by this", "divergence recovery")
    # best-before-divergence evaluation during training, TensorBoard
    fid_every: int | None = _f(None, "FID / IS of the replay buffer after the first epoch, every N epochs after it "
                                     "and the last, best_fid.pt (none: 5 on CUDA, 0 = off on CPU)",
                               "evaluation during training")
    fid_keep_ratio: float | None = _f(None, "in-training FID: keep the most confident fraction of the buffer per "
                                            "predicted class (none: 0.9 for classifier models, mebm "
                                            "train_maebm.py; 1: the whole buffer; mebm: always whole)",
                                      "evaluation during training")
    is_keep_ratio: float | None = _f(None, "in-training Inception Score: the same for IS (none: 0.1 for classifier "
                                           "models, mebm train_maebm.py 'ratio = 0.1 if arg.pyx'; at most "
                                           "--fid-keep-ratio)", "evaluation during training")
    fid_split: str = _f("auto", "in-training FID reference: auto (the authors': CIFAR-10 train + test, ImageNet "
                                "32x32 val, else train), train, test, train+test", "evaluation during training")
    keep_every: int = _f(0, "keep ckpt_eNNN.pt every N epochs (0: off)", "evaluation during training")
    inception_weights: str | None = _f(None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (none: "
                                             "torch.hub.get_dir()/checkpoints)", "evaluation during training")
    random_inception: bool = _f(False, "randomly initialised Inception (tests, smoke runs: FID / IS meaningless)",
                                "evaluation during training")
    tensorboard: bool = _f(True, "TensorBoard event files in the run folder", "evaluation during training")

    @property
    def total_iters(self) -> int:
        """epochs × iters_per_epoch (needs iters_per_epoch resolved, see :func:`derive_iters_per_epoch`)."""
        return self.epochs * self.iters_per_epoch

    def to_dict(self) -> dict:
        """Plain dict of every field (stored in checkpoints)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The resolved configuration as indented JSON (config.json of a run, ``--print-config``)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def arch(self) -> dict:
        """What a checkpoint must match to be loaded into this run."""
        return {k: getattr(self, k) for k in ("model", "depth", "width", "norm", "n_classes", "image_size")}


# Per-dataset presets on top of the Config defaults: each dataset's entry in fastebm.data.datasets, with its sources.
PRESETS: dict[str, dict] = {name: dict(d.preset) for name, d in DATASETS.items()}

# Per-model presets, applied after the dataset preset: fastebm.config.recipes (each value with its source).
MODEL_PRESETS: dict[str, dict] = {name: dict(values) for name, values in RECIPES.items()}

# Training-set sizes of the known datasets, for the iterations per epoch without loading the data.
TRAIN_SIZES = {name: d.train_size for name, d in DATASETS.items() if d.train_size}
# JEM's epoch is one pass of its p(x) loader (batch 64, drop_last) over 50,000 − 5,000 images (JEM
# train_wrn_ebm.py --n_valid 5000 holds out a validation set): 45,000 // 64 = 703 on CIFAR. fastebm trains
# on all images and keeps JEM's schedule length: 703 iterations per epoch.
JEM_N_VALID = 5_000

# image side of the datasets whose size is fixed (celebahq128: its preset; folder: from the files)
NATIVE_IMAGE_SIZES = {name: d.image_size for name, d in DATASETS.items() if d.image_size}

def plain_flags() -> dict:
    """Every fast-path flag off: the plain PyTorch reference path."""
    return dict(compile="off", cuda_graphs=False, amp="off", sgld_amp="off", triton=False, channels_last=False,
                compile_step=False)


def fast_flags(device_type: str) -> dict:
    """The fast-path flags that ``auto`` means on a device type: everything on CUDA, plain on CPU."""
    if device_type != "cuda":
        return plain_flags()
    return dict(compile="default", cuda_graphs=True, amp="bf16", sgld_amp="off", triton=True, channels_last=True,
                compile_step=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise ``torch.device(name)``.

    Raises ValueError for an unknown device string or an unavailable CUDA device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def derive_iters_per_epoch(cfg: Config, n_train: int) -> int:
    """Iterations of one epoch for ``n_train`` training images (after ``--train-subset``).

    M-EBM / M-JEM / LSE-JEM: one pass of the labelled loader, ``n_train // cls_batch_size`` (mebm
    ``train_maebm.py`` iterates ``dload_train_labeled``, batch 128, drop_last, even for M-EBM; the p(x)
    loader of 64 is cycled beside it): 390 on CIFAR, 10,009 on ImageNet 32×32; CelebA-HQ 128 iterates the
    batch-64 loader (mebm ``train_maebm_celeba.py``), 468 on its 30,000 images (the dataset's ``epoch_batch``).
    JEM and JEM++ (``train_jempp.py --n_valid 5000``): one pass of the p(x) loader over the images left after
    the validation hold-out, ``(n_train − 5,000) // batch_size`` when that leaves at least half the images (703
    on CIFAR), else ``n_train // batch_size``. At least 1.
    """
    if cfg.model in SHARED_BATCH:  # JEM, JEM++: one pass of the p(x) loader after the validation hold-out
        n = n_train - JEM_N_VALID if n_train - JEM_N_VALID >= n_train // 2 else n_train
        return max(1, n // cfg.batch_size)
    return max(1, n_train // getattr(cfg, DATASETS[cfg.dataset].epoch_batch))


def resolve(overrides: dict) -> Config:
    """Config = defaults ← dataset preset ← model preset ← paper row ← explicit overrides ← K rule ← epoch length.

    Args:
        overrides: field → value for what the user set (``None`` values are ignored; :data:`NONE` sets
            the field to None whatever the presets say). ``paper``: a row key (:func:`fastebm.config.paper.pinned_by`).

    JEM, JEM++ (:data:`fastebm.config.recipes.SHARED_BATCH`): ``cls_batch_size`` follows ``batch_size`` unless given
    (their two loaders share ``--batch_size``).

    Returns:
        the resolved :class:`Config`; ``iters_per_epoch`` is filled in for the datasets of known size
        (:data:`TRAIN_SIZES`) and stays None for the folder layouts until the data is loaded
        (:func:`derive_iters_per_epoch`, called by the trainer).

    Raises:
        ValueError: unknown field, a value outside its choices, K < 1, an unknown ``paper`` row or one whose
            dataset, model or K differ from those given, or an inconsistent setting.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = set(given) - names
    if unknown:
        raise ValueError(f"unknown config field(s) {sorted(unknown)}; expected fields of Config")
    pinned = pinned_by(None if given.get("paper") is NONE else given.get("paper"), given)
    dataset = given.get("dataset", pinned.get("dataset", Config.dataset))
    values: dict = {}
    values.update(PRESETS.get(dataset, {}))
    model = given.get("model", pinned.get("model", values.get("model", "mjem")))
    values.update(MODEL_PRESETS.get(model, {}))
    values.update(pinned)
    values.update(given)
    values = {k: (None if v is NONE else v) for k, v in values.items()}
    explicit_none = {k for k, v in given.items() if v is NONE}
    cfg = Config(**values)
    rules: dict = {}
    if cfg.fid_keep_ratio is None:  # mebm train_maebm.py: cond_is_fid(..., ratio=0.9, eval='fid')
        rules["fid_keep_ratio"] = 1.0 if cfg.model == "mebm" else 0.9
    if cfg.is_keep_ratio is None:  # mebm train_maebm.py: ratio = 0.1 if arg.pyx else 0.9; cond_is_fid(..., eval='is')
        rules["is_keep_ratio"] = 1.0 if cfg.model == "mebm" else 0.1
    if cfg.model in SHARED_BATCH and "cls_batch_size" not in given:
        rules["cls_batch_size"] = cfg.batch_size  # JEM, JEMPP get_data: both loaders use --batch_size
    if cfg.l2 is None and "l2" not in explicit_none:
        rules["l2"] = 0.1 if cfg.k <= 2 else 0.5
    if cfg.noise is None and "noise" not in explicit_none:
        rules["noise"] = 0.0 if cfg.k <= 2 else 0.001
    if cfg.image_size is None:  # the fixed sizes are known now; a folder's comes from its images
        rules["image_size"] = NATIVE_IMAGE_SIZES.get(cfg.dataset)
    cfg = dataclasses.replace(cfg, **rules)
    if cfg.l2 is None:
        raise ValueError("--l2: expected a number >= 0 (none is not a valid λ)")
    if cfg.noise is None:
        raise ValueError("--noise: expected a number >= 0 (none is not a valid σ)")
    if cfg.iters_per_epoch is None and dataset in TRAIN_SIZES:
        n = TRAIN_SIZES[dataset] if cfg.train_subset is None else min(cfg.train_subset, TRAIN_SIZES[dataset])
        cfg = dataclasses.replace(cfg, iters_per_epoch=derive_iters_per_epoch(cfg, n))
    validate(cfg)
    return cfg
