"""Completing a resolved run configuration for where and on what it trains: the device, the number of
data-parallel ranks and the training data. :func:`fastebm.config.options.resolve` decides what follows from the options
alone; :func:`complete` decides, once, everything that also needs the machine or the data, and every check of an
option against them sits here, each error one line naming the option.

What :func:`complete` fills in, in this order::

    fast-path flags, host-check and FID cadence for the device   (for_device)
    batches and buffer that split over the ranks                 (check_world_size)
    image side, classes and iterations per epoch from the data   (fastebm.config.options.derive_iters_per_epoch)
    warm-up at most a fifth of the run
    sizes that fit the data and the device                       (check_fits)
    run folder                                                   (run_folder)
    FID cadence that can run here, and its reference images      (fid_cadence, check_fid_reference)

A completed Config completed again with the same arguments is unchanged.
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import torch

from ..config.limits import check_p0_size, flag
from ..config.options import Config, derive_iters_per_epoch, fast_flags
from ..evaluation.bufferfid import reference_split
from ..p0 import P0_KINDS, fit_options
from .folder import default_run_folder

# The fields whose "auto" / None depends on the device a run is on: a resume on another device resolves them
# again unless the user gave them (see for_device).
DEVICE_FIELDS = ("compile", "cuda_graphs", "amp", "sgld_amp", "triton", "channels_last", "compile_step",
                 "check_every", "fid_every")


def for_device(cfg: Config, device_type: str, world_size: int = 1) -> Config:
    """``cfg`` with the device-dependent "auto" / None values decided for ``device_type`` (a new Config):
    the fast-path flags (:func:`fast_flags`; in a multi-process DDP run ``auto`` leaves the compiled step off,
    it is single-process), ``check_every`` (1 on the CPU, where a host sync costs nothing; ``log_every`` on
    CUDA) and ``fid_every`` (5 epochs on CUDA, off on the CPU).

    Raises ValueError when a CUDA-only flag (cuda_graphs, triton) is forced on without CUDA.
    """
    auto = dict(fast_flags(device_type), **({"compile_step": False} if world_size > 1 else {}))
    auto.update(check_every=1 if device_type != "cuda" else cfg.log_every,
                fid_every=5 if device_type == "cuda" else 0)
    new = dataclasses.replace(cfg, **{k: v for k, v in auto.items() if getattr(cfg, k) in (None, "auto")})
    if device_type != "cuda":
        for name in ("cuda_graphs", "triton"):
            if getattr(new, name):
                raise ValueError(f"{flag(name)} needs a CUDA device (this run is on {device_type})")
    return new


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
    from ..algorithm.model import build_model

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
        buffer (float32, ``--buffer-size``) or a p0 fit (each kind's ``check_memory``: a full covariance in
        float64, the class covariances of a mixture) larger than the free memory of the device; a ``--p0-size``
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
    check_p0_size(cfg)
    opts = fit_options(cfg.p0, cfg.image_size, cfg.cov, cfg.rank, cfg.p0_size)
    P0_KINDS[cfg.p0].check_memory((3, cfg.image_size, cfg.image_size), cfg.n_classes, opts, free, device)


def check_world_size(cfg: Config, world_size: int) -> None:
    """Data-parallel ranks: each global batch splits evenly over them, each holds a replay-buffer shard, and the
    compiled step is single-process.

    Raises:
        ValueError: ``--batch-size`` / ``--cls-batch-size`` not divisible by ``world_size``, ``--buffer-size``
            below it, or ``--compile-step`` on with ``world_size`` > 1.
    """
    if world_size <= 1:
        return
    for name in ("batch_size", "cls_batch_size"):
        if getattr(cfg, name) % world_size:
            raise ValueError(f"{flag(name)} {getattr(cfg, name)}: the global batch must be divisible by the number "
                             f"of ranks ({world_size})")
    if cfg.buffer_size < world_size:
        raise ValueError(f"--buffer-size {cfg.buffer_size}: expected at least one sample per rank ({world_size})")
    if cfg.compile_step:  # "auto" leaves it off under DDP (for_device): only an explicit one gets here
        raise ValueError("--compile-step: not supported with DDP (torchrun); pass --no-compile-step")


def fid_cadence(cfg: Config, explicit: bool) -> int:
    """``fid_every`` after checking that FID can run (pytorch-fid installed, the Inception weights file there
    and right: :func:`fastebm.evaluation.inception.check_inception_weights`): an explicit ``--fid-every`` (or a weights
    file named by ``--inception-weights``) that cannot is a ValueError saying what to do; the device default
    (5 on CUDA) is turned off with a warning."""
    from ..evaluation import inception as inc

    if cfg.px_weight == 0 and cfg.fid_every:  # a classifier only: no samples (mebm train_maebm.py: "if arg.px > 0")
        if explicit:
            raise ValueError("--fid-every: a classifier-only run (--px-weight 0) draws no samples to score; pass "
                             "--fid-every 0")
        return 0
    if not cfg.fid_every:
        return cfg.fid_every
    missing = inc.missing_packages()
    path = cfg.inception_weights or inc.default_inception_weights_path()
    if missing:
        msg = (f"--fid-every: FID needs {' and '.join(missing)}, not installed: {inc.METRICS_EXTRA}, or "
               f"--fid-every 0")
    elif cfg.random_inception:
        return cfg.fid_every
    elif os.path.isfile(path):
        try:  # read whole at start, not at the end of the first epoch
            inc.check_inception_weights(cfg.inception_weights)
            return cfg.fid_every
        except inc.InceptionWeightsError as e:  # a file given by name is refused even at the default cadence
            msg, explicit = f"{e}; or --fid-every 0", explicit or bool(cfg.inception_weights)
    else:
        msg = (f"--fid-every: the FID Inception weights are not at {path!r}; pass --inception-weights "
               f"PATH ({inc.FID_WEIGHTS_URL}) or --fid-every 0")
    if explicit:
        raise ValueError(msg)
    warnings.warn(msg + "; in-training FID is off", UserWarning, stacklevel=4)
    return 0


def check_fid_reference(cfg: Config, has_test: bool) -> None:
    """Raise ValueError when the in-training FID is on and its reference images
    (:func:`fastebm.evaluation.bufferfid.reference_split`) need a test split the run's data does not have (at start, not
    after the first epoch)."""
    if cfg.fid_every and not has_test and "test" in reference_split(cfg):
        raise ValueError(f"--fid-split {cfg.fid_split}: the in-training FID reference {reference_split(cfg)} needs "
                         f"a test split, and --dataset {cfg.dataset} here has none; pass --fid-split train")


def run_folder(cfg: Config) -> str:
    """``cfg.out``, or when unset the first free ``runs/<dataset>-<model>-k<K>[-N]``
    (:func:`fastebm.run.folder.default_run_folder`): the one rule for a run's folder (the CLI needs it before the
    data is loaded, to lock the folder; :func:`complete` applies it to every run)."""
    return cfg.out or default_run_folder(cfg.dataset, cfg.model, cfg.k)


def complete(cfg: Config, device: torch.device | str, world_size: int, n_train: int, image_size: int,
             n_classes: int, has_test: bool = True) -> Config:
    """The run's final Config: ``cfg`` (from :func:`fastebm.config.options.resolve`) completed for ``device`` (the
    training device), ``world_size`` data-parallel ranks and the training data (``n_train`` images after
    ``--train-subset``, each ``image_size`` pixels a side, ``n_classes`` classes; ``has_test``: whether the data
    has a test split), after every check of the options against them. Idempotent: completing the result again
    with the same arguments returns an equal Config.

    Filled in: the device-dependent ``auto`` / None values (:func:`for_device`: fast-path flags,
    ``check_every``, ``fid_every``); ``image_size`` and ``n_classes`` from the data; ``iters_per_epoch`` when
    unset (:func:`fastebm.config.options.derive_iters_per_epoch`); ``warmup_iters`` capped at a fifth of the run
    (``total_iters // 5``: a short run reaches its learning rate, paper-length runs of 78,000 iterations and more
    keep the recipe's 1,000); ``out`` when unset (:func:`run_folder`); ``fid_every``
    set to 0 (with a warning) when the device default cannot run here (:func:`fid_cadence`).

    Raises:
        ValueError: a batch or buffer that does not split over the ranks, ``--compile-step`` under DDP
            (:func:`check_world_size`); a CUDA-only flag without CUDA (:func:`for_device`); sizes
            that do not fit the data or the device (:func:`check_fits`); an explicit FID cadence
            that cannot run (:func:`fid_cadence`); an FID reference without its test split
            (:func:`check_fid_reference`). Each one line naming the option.
    """
    device = torch.device(device)
    fid_explicit = cfg.fid_every is not None  # decided before for_device fills in the device's default
    cfg = for_device(cfg, device.type, world_size)
    check_world_size(cfg, world_size)
    ipe = cfg.iters_per_epoch or derive_iters_per_epoch(cfg, n_train)
    cfg = dataclasses.replace(cfg, image_size=image_size, n_classes=n_classes, iters_per_epoch=ipe,
                              warmup_iters=min(cfg.warmup_iters, cfg.epochs * ipe // 5))
    check_fits(cfg, n_train, device, world_size)  # before the model, p0 or buffer are allocated
    cfg = dataclasses.replace(cfg, out=run_folder(cfg))
    cfg = dataclasses.replace(cfg, fid_every=fid_cadence(cfg, fid_explicit))
    check_fid_reference(cfg, has_test)
    return cfg
