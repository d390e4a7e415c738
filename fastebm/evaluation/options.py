"""The options of an evaluation: one frozen dataclass, every value checked once when it is built."""
from __future__ import annotations

import dataclasses
import math
import re

from ..data.datasets import DATASETS


class EvalError(ValueError):
    """Bad input for an evaluation: a bad option value, a task the checkpoint cannot serve, ...

    Attributes:
        option: the :class:`EvalOptions` field at fault (``"batch_size"``), or None.
        detail: the message without the field's name; ``str(error)`` is ``"<option>: <detail>"``.
    """

    def __init__(self, detail: str, option: str | None = None):
        super().__init__(f"{option}: {detail}" if option else detail)
        self.option, self.detail = option, detail


def check_keep_ratio(keep_ratio: float) -> None:
    """The rule for ``keep_ratio``: a finite number > 0 (a fraction in (0, 1], a count per class above 1)."""
    if not (isinstance(keep_ratio, (int, float)) and math.isfinite(keep_ratio) and keep_ratio > 0):
        raise EvalError(f"expected a ratio in (0, 1] or a count > 1, got {keep_ratio}", "keep_ratio")


# None splits: the authors' Inception Score splits, max(1, N // 5000) (mebm Task/eval_buffer.py, 16473fc)
IS_IMAGES_PER_SPLIT = 5000
# FID's real images: one split, or both (the reference of the paper's period: CIFAR-10's 60,000 images)
FID_SPLITS = ("train", "test", "train+test")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how; the defaults are those of ``python -m fastebm.eval``.

    Run and output:
        tasks: names from :data:`fastebm.evaluation.runner.TASKS`, run in this order (duplicates run once); the
            names are checked where that list is seen, by :func:`~fastebm.evaluation.runner.check_task_names`
            (called by ``evaluate``, ``run_tasks`` and the command line before any work). Default: none.
        out: output folder; None: ``eval/`` next to the checkpoint.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        threads: CPU threads of torch (>= 1); None: the usable cores minus the current load. Set by the command
            line (:func:`fastebm.run.threads.apply_threads`); the task functions leave torch's setting alone.
        batch_size: images per forward pass and SGLD chains per batch (>= 1).
        n_samples: images per set (>= 1); None: each task's default (fid/is: the whole buffer or |B| chains;
            gen 64; tsne and energy 500; logpx the whole buffer).
        seed: seed of every random choice (subsets, chains, IS shuffle, t-SNE), an integer in [0, 2**32).

    Data (None: the checkpoint's):
        dataset: one of :data:`fastebm.data.datasets.DATASETS`; data_root: its folder.
        max_per_class: folder layouts: files read per class (>= 1).
        test_subset: test images used (>= 1; None: all).

    fid / is / feature-fd:
        source: ``buffer`` (the replay buffer) or ``chains`` (fresh SGLD chains from p0).
        sgld_steps: SGLD steps of chains and of ``gen`` (>= 1); None: the training K.
        keep_ratio: ``source="buffer"`` of a classifier model only: keep the most confident buffer images per
            predicted class, a fraction in (0, 1] or, above 1, a count per class (JEM++ ``cond_is_fid``); None:
            0.9 for a classifier model (the authors' protocol, mebm ``scripts/eval_all_in_one.sh``), 1: all.
        inception_weights: path of ``pt_inception-2015-12-05-6726825d.pth``; None: pytorch-fid's cache.
        random_inception: a randomly initialised Inception (tests and smoke runs: meaningless numbers).
        splits: Inception Score splits (>= 1); None: one per :data:`IS_IMAGES_PER_SPLIT` generated images, at
            least 1 (the authors' ``max(1, N // 5000)``, mebm ``Task/eval_buffer.py`` at 16473fc).
        fid_split: the real images of FID, ``train``, ``test`` or ``train+test`` (:data:`FID_SPLITS`).
        n_real: real images for the statistics (>= 1; None: all).
        stats_cache: folder of cached real statistics (and feature networks); None: ``$FASTEBM_CACHE/fid_stats``
            or ``~/.cache/fastebm/fid_stats`` (``.../feature_nets`` for the networks).

    feature-fd:
        features: the feature network's file (:mod:`fastebm.evaluation.featurenet`): read when it exists, trained on the
            training split and written there when not; None: one cached per training split.

    ece / ood / logpx / tsne / extremes / energy:
        ece_bins: calibration bins (>= 1).
        ood_dataset: one of :data:`fastebm.data.datasets.DATASETS` (needed by ``ood``); ood_root: its folder;
        ood_max_per_class, ood_subset: as max_per_class and test_subset, for it.
        bins: histogram bins (>= 1). perplexity: t-SNE perplexity (> 0, capped at (points - 1) / 3).
        n_show: extremes: images per row (>= 1).

    Raises:
        EvalError (a ValueError): the first bad value, ``"<field>: expected ..., got <value>"``.
    """

    tasks: tuple[str, ...] = ()
    out: str | None = None
    device: str = "auto"
    threads: int | None = None
    batch_size: int = 100
    n_samples: int | None = None
    seed: int = 0
    dataset: str | None = None
    data_root: str | None = None
    max_per_class: int | None = None
    test_subset: int | None = None
    source: str = "buffer"
    sgld_steps: int | None = None
    keep_ratio: float | None = None
    inception_weights: str | None = None
    random_inception: bool = False
    splits: int | None = 10
    fid_split: str = "train"
    n_real: int | None = None
    stats_cache: str | None = None
    features: str | None = None
    ece_bins: int = 15
    ood_dataset: str | None = None
    ood_root: str | None = None
    ood_max_per_class: int | None = None
    ood_subset: int | None = None
    bins: int = 30
    perplexity: float = 30.0
    n_show: int = 8

    def __post_init__(self):
        if isinstance(self.tasks, str):  # "acc" would otherwise be read as the tasks a, c, c
            object.__setattr__(self, "tasks", (self.tasks,))
        object.__setattr__(self, "tasks", tuple(dict.fromkeys(self.tasks)))
        for name in _FLOATS:  # every float finite, before any range check
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise EvalError(f"expected a finite number, got {value}", name)
        for name in _COUNTS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EvalError(f"expected an integer >= 1, got {value}", name)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 32:
            raise EvalError(f"expected an integer in [0, 2**32), got {self.seed}", "seed")  # numpy's seeds
        if self.perplexity <= 0:
            raise EvalError(f"expected a value > 0, got {self.perplexity}", "perplexity")
        for name, choices in (("source", ("buffer", "chains")), ("fid_split", FID_SPLITS),
                              ("dataset", DATASETS), ("ood_dataset", DATASETS)):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise EvalError(f"expected one of {list(choices)}, got {value!r}", name)
        if self.keep_ratio is not None:
            check_keep_ratio(self.keep_ratio)
            if self.source != "buffer":
                raise EvalError(f"filters the replay buffer, so it needs source 'buffer', got source "
                                f"{self.source!r}", "keep_ratio")
        if not (isinstance(self.device, str) and _DEVICE.fullmatch(self.device)):
            raise EvalError(f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}", "device")
        if self.random_inception and self.inception_weights:
            raise EvalError(f"a randomly initialised Inception reads no weights file, got {self.inception_weights!r}",
                            "random_inception")


# found by type, not from a list: a new field is checked without being added anywhere
_FLOATS = tuple(f.name for f in dataclasses.fields(EvalOptions) if "float" in str(f.type))
_COUNTS = tuple(f.name for f in dataclasses.fields(EvalOptions) if "int" in str(f.type) and f.name != "seed")
