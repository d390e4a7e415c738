"""Completing a resolved run configuration for where and on what it trains: the device, the number of
data-parallel ranks and the training data. :func:`fastebm.config.resolve` decides what follows from the options
alone; :func:`complete` decides, once, everything that also needs the machine or the data, and every check of an
option against them sits here, each error one line naming the option.

What :func:`complete` fills in, in this order::

    fast-path flags, host-check and FID cadence for the device   (fastebm.config.for_device)
    image side, classes and iterations per epoch from the data   (fastebm.config.derive_iters_per_epoch)
    warm-up at most a fifth of the run
    run folder                                                   (fastebm.runfolder.default_run_folder)
    FID cadence that can run here                                (fid_cadence)

A completed Config completed again with the same arguments is unchanged.
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import torch

from .bufferfid import reference_split
from .config import Config, derive_iters_per_epoch, for_device
from .limits import check_fits, flag
from .runfolder import default_run_folder


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
    and right: :func:`fastebm.inception.check_inception_weights`): an explicit ``--fid-every`` (or a weights
    file named by ``--inception-weights``) that cannot is a ValueError saying what to do; the device default
    (5 on CUDA) is turned off with a warning."""
    from . import metrics

    if cfg.px_weight == 0 and cfg.fid_every:  # a classifier only: no samples (mebm train_maebm.py: "if arg.px > 0")
        if explicit:
            raise ValueError("--fid-every: a classifier-only run (--px-weight 0) draws no samples to score; pass "
                             "--fid-every 0")
        return 0
    if not cfg.fid_every:
        return cfg.fid_every
    missing = metrics.missing_packages()
    path = cfg.inception_weights or metrics.default_inception_weights_path()
    if missing:
        msg = (f"--fid-every: FID needs {' and '.join(missing)}, not installed: {metrics.METRICS_EXTRA}, or "
               f"--fid-every 0")
    elif cfg.random_inception:
        return cfg.fid_every
    elif os.path.isfile(path):
        try:  # read whole at start, not at the end of the first epoch
            metrics.check_inception_weights(cfg.inception_weights)
            return cfg.fid_every
        except metrics.InceptionWeightsError as e:  # a file given by name is refused even at the default cadence
            msg, explicit = f"{e}; or --fid-every 0", explicit or bool(cfg.inception_weights)
    else:
        msg = (f"--fid-every: the FID Inception weights are not at {path!r}; pass --inception-weights "
               f"PATH ({metrics.FID_WEIGHTS_URL}) or --fid-every 0")
    if explicit:
        raise ValueError(msg)
    warnings.warn(msg + "; in-training FID is off", UserWarning, stacklevel=4)
    return 0


def check_fid_reference(cfg: Config, has_test: bool) -> None:
    """Raise ValueError when the in-training FID is on and its reference images
    (:func:`fastebm.bufferfid.reference_split`) need a test split the run's data does not have (at start, not after
    the first epoch)."""
    if cfg.fid_every and not has_test and "test" in reference_split(cfg):
        raise ValueError(f"--fid-split {cfg.fid_split}: the in-training FID reference {reference_split(cfg)} needs "
                         f"a test split, and --dataset {cfg.dataset} here has none; pass --fid-split train")


def run_folder(cfg: Config) -> str:
    """``cfg.out``, or when unset the first free ``runs/<dataset>-<model>-k<K>[-N]``
    (:func:`fastebm.runfolder.default_run_folder`): the one rule for a run's folder (the CLI needs it before the
    data is loaded, to lock the folder; :func:`complete` applies it to every run)."""
    return cfg.out or default_run_folder(cfg.dataset, cfg.model, cfg.k)


def complete(cfg: Config, device: torch.device | str, world_size: int, n_train: int, image_size: int,
             n_classes: int, has_test: bool = True) -> Config:
    """The run's final Config: ``cfg`` (from :func:`fastebm.config.resolve`) completed for ``device`` (the
    training device), ``world_size`` data-parallel ranks and the training data (``n_train`` images after
    ``--train-subset``, each ``image_size`` pixels a side, ``n_classes`` classes; ``has_test``: whether the data
    has a test split), after every check of the options against them. Idempotent: completing the result again
    with the same arguments returns an equal Config.

    Filled in: the device-dependent ``auto`` / None values (:func:`fastebm.config.for_device`: fast-path flags,
    ``check_every``, ``fid_every``); ``image_size`` and ``n_classes`` from the data; ``iters_per_epoch`` when
    unset (:func:`fastebm.config.derive_iters_per_epoch`); ``warmup_iters`` capped at a fifth of the run
    (``total_iters // 5``: a short run reaches its learning rate, paper-length runs of 78,000 iterations and more
    keep the recipe's 1,000); ``out`` when unset (:func:`run_folder`); ``fid_every``
    set to 0 (with a warning) when the device default cannot run here (:func:`fid_cadence`).

    Raises:
        ValueError: a batch or buffer that does not split over the ranks, ``--compile-step`` under DDP
            (:func:`check_world_size`); a CUDA-only flag without CUDA (:func:`~fastebm.config.for_device`); sizes
            that do not fit the data or the device (:func:`fastebm.limits.check_fits`); an explicit FID cadence
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
