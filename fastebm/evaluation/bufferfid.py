"""In-training FID / IS of the replay buffer, scored as the authors' training loop scores it (mebm
``train_maebm.py`` and ``Task/eval_buffer.py`` @20bbf21, :data:`PROTOCOL`): after the first epoch, every
``fid_every`` epochs after it and after the last; for classifier models the FID of the ``fid_keep_ratio`` (0.9) and
the IS of the ``is_keep_ratio`` (0.1) most confident buffer images of each predicted class (``cond_is_fid``, by
softmax probability), from one Inception pass; IS over ``max(1, N // 5000)`` splits; FID against the authors'
reference images (CIFAR-10 train + test, ImageNet 32×32 val, the training images otherwise), whose statistics are
streamed from the uint8 images.
"""
from __future__ import annotations

import numpy as np
import torch

from ..algorithm.model import model_outputs
from ..config.options import Config
from ..data.datasets import load_dataset
from ..data.imageset import ImageSet


def fid_epoch(cfg: Config, epoch: int) -> bool:
    """Whether epoch ``epoch`` (1-based, just finished) gets a buffer FID: the first, every ``fid_every``-th
    after it and the last (mebm train_maebm.py: ``epoch % 5 == 0 or epoch == n_epochs - 1``, 0-based)."""
    n = cfg.fid_every
    return bool(n) and ((epoch - 1) % n == 0 or epoch * cfg.iters_per_epoch >= cfg.total_iters)


def confident_subsets(model, fake: torch.Tensor, cfg: Config, device) -> tuple[np.ndarray, np.ndarray]:
    """(FID indices, IS indices) into ``fake`` (N, 3, H, W) in [-1, 1]: the authors' ``cond_is_fid`` (mebm
    ``Task/eval_buffer.py``): each image goes to its predicted class argmax p(y|x) of ``model``'s classifier (in
    eval mode), and within each class the ``cfg.fid_keep_ratio`` / ``cfg.is_keep_ratio`` most confident by
    max_y p(y|x) = max softmax probability (``prob = Softmax(logits).max(1)[0]``, not the raw logit) are kept
    (:func:`fastebm.evaluation.filter_by_confidence`). A subset of fewer than 2 images falls back to the whole
    buffer (FID) or the FID subset (IS). Sorted int64 arrays."""
    from .fid import filter_by_confidence

    probs = torch.softmax(model_outputs(model, fake, 256, device)[1].double(), 1)
    keep_fid, keep_is = (filter_by_confidence(probs, r) for r in (cfg.fid_keep_ratio, cfg.is_keep_ratio))
    keep_fid = keep_fid if len(keep_fid) >= 2 else np.arange(len(fake))  # too few to score: the whole buffer
    return keep_fid, keep_is if len(keep_is) >= 2 else keep_fid


# The authors' in-training protocol, mebm train_maebm.py and Task/eval_buffer.py @20bbf21 (as at 16473fc): IS of
# cond_is_fid(ratio=0.1 if pyx else 0.9, eval='is'), FID of cond_is_fid(ratio=0.9, eval='fid'), IS splits
# max(1, N // 5000), FID reference Cifar10(full=True) (train + test), Cifar100 (train), the img32 val folder (at most
# 60,000), the celeba128 train folder. From f7ae2f1 (2022-07-24) one cond_is_fid(ratio, eval='all') scores both on
# the same 10 % of an M-JEM (--fid-keep-ratio 0.1) with torch-fidelity (10 IS splits, reference cifar10-train).
PROTOCOL = "mebm train_maebm.py, Task/eval_buffer.py @20bbf21"
FID_REFERENCE = {"cifar10": "train+test", "imagenet32": "test"}  # the others: their training images


def reference_split(cfg: Config) -> str:
    """The real images of the in-training FID: ``cfg.fid_split``, or for ``auto`` the authors' reference of the
    dataset (:data:`FID_REFERENCE`: CIFAR-10 train + test, ImageNet 32×32 val; the training images otherwise)."""
    return FID_REFERENCE.get(cfg.dataset, "train") if cfg.fid_split == "auto" else cfg.fid_split


def reference_images(cfg: Config, train_data: ImageSet) -> list[torch.Tensor]:
    """The uint8 (N, 3, H, W) image sets of :func:`reference_split`: the run's training images (``train``) and the
    test split loaded now (``test``; ImageNet 32×32's ``val_data``). Raises DatasetError when a file is missing."""
    parts = []
    for split in reference_split(cfg).split("+"):
        parts.append(train_data.images if split == "train" else load_dataset(
            cfg.dataset, cfg.data_root, "test", False, cfg.max_per_class, cfg.image_size,
            classes=train_data.classes).images)
    return parts


class BufferScore:
    """FID (pytorch-fid) and Inception Score (unbiased logits) of replay-buffer samples as the authors' training loop
    scores them (:data:`PROTOCOL`); the Inception network and the reference statistics are made at the first call,
    streamed from the uint8 images (:func:`fastebm.evaluation.fidstats.inception_statistics`: no float copy of the set).

    Args:
        cfg: the run's configuration (``fid_keep_ratio``, ``is_keep_ratio``, ``fid_split``, ``inception_weights``,
            ``random_inception``). device: where Inception and the model run.
    """

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        self.inception = self.real_stats = None
        self.n_real = 0

    def reference_statistics(self, train_data: ImageSet) -> tuple:
        """(mu, sigma) of the reference images (:func:`reference_images`), made once (Inception loaded too)."""
        from . import inception as inc
        from .fidstats import inception_statistics

        if self.real_stats is None:
            cfg = self.cfg
            if self.inception is None:
                self.inception = inc.load_inception(None if cfg.random_inception else cfg.inception_weights,
                                                     device=self.device, random_init=cfg.random_inception)
            split = reference_split(cfg)
            mu, sigma, self.n_real = inception_statistics(
                self.inception, reference_images(cfg, train_data), 100, self.device,
                desc=f"fastebm: FID: Inception features of the reference images ({cfg.dataset} {split})")
            self.real_stats = (mu, sigma)
        return self.real_stats

    def __call__(self, model, samples: torch.Tensor, train_data: ImageSet) -> dict:
        """Score ``samples`` (N, 3, H, W) float in [-1, 1] (clamped) of ``model`` (an EnergyModel; its classifier
        ranks them). Returns ``{"fid", "is_mean", "is_std", "is_splits", "n_fake", "n_is", "n_buffer", "n_real",
        "real_split", "keep_ratio", "is_keep_ratio", "protocol"}`` (and ``meaningless`` with a random Inception)."""
        from . import inception as inc
        from . import metrics
        from .options import IS_IMAGES_PER_SPLIT

        cfg, device = self.cfg, self.device
        fake, n_buffer = samples.clamp(-1, 1), len(samples)
        ranked = model.has_classifier and (cfg.fid_keep_ratio, cfg.is_keep_ratio) != (1, 1)
        keep_fid, keep_is = confident_subsets(model, fake, cfg, device) if ranked else (np.arange(n_buffer),) * 2
        scored = np.union1d(keep_fid, keep_is)                      # one Inception pass serves both
        real_stats = self.reference_statistics(train_data)
        pool, logits = inc.inception_outputs(self.inception, fake[torch.as_tensor(scored)], 100,
                                             desc="fastebm: FID: Inception features of the buffer")
        pool, logits = pool[np.searchsorted(scored, keep_fid)], logits[np.searchsorted(scored, keep_is)]
        splits = max(1, len(logits) // IS_IMAGES_PER_SPLIT)          # Task/eval_buffer.py: max(1, N // 5000)
        is_mean, is_std = metrics.inception_score(logits, splits, True, 0)
        out = {"fid": metrics.frechet_distance(*real_stats, *metrics.activation_statistics(pool)),
               "is_mean": is_mean, "is_std": is_std, "is_splits": splits, "n_fake": len(keep_fid),
               "n_is": len(keep_is), "n_buffer": n_buffer, "n_real": self.n_real, "real_split": reference_split(cfg),
               "keep_ratio": cfg.fid_keep_ratio if ranked else 1.0,
               "is_keep_ratio": cfg.is_keep_ratio if ranked else 1.0, "protocol": PROTOCOL}
        if cfg.random_inception:
            out["meaningless"] = inc.RANDOM_INCEPTION_NOTE
        return out
