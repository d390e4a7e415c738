"""In-training FID / IS of the replay buffer, scored as the authors' training loop scores it (mebm
``train_maebm.py``): after the first epoch, every ``fid_every`` epochs after it and after the last; for classifier
models the FID of the ``fid_keep_ratio`` (0.9) and the IS of the ``is_keep_ratio`` (0.1) most confident buffer
images of each predicted class (``Task/eval_buffer.py`` ``cond_is_fid``), from one Inception pass.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from .config import Config
from .data import ImageSet, to_float
from .model import model_outputs


def fid_epoch(cfg: Config, epoch: int) -> bool:
    """Whether epoch ``epoch`` (1-based, just finished) gets a buffer FID: the first, every ``fid_every``-th
    after it and the last (mebm train_maebm.py: ``epoch % 5 == 0 or epoch == n_epochs - 1``, 0-based)."""
    n = cfg.fid_every
    return bool(n) and ((epoch - 1) % n == 0 or epoch * cfg.iters_per_epoch >= cfg.total_iters)


def fid_cadence(cfg: Config, explicit: bool) -> int:
    """``fid_every`` after checking that FID can run (pytorch-fid installed, the Inception weights file there):
    an explicit ``--fid-every`` that cannot is a ValueError saying what to do; the device default (5 on CUDA)
    is turned off with a warning."""
    from . import metrics

    if not cfg.fid_every:
        return cfg.fid_every
    missing = metrics.missing_packages()
    path = cfg.inception_weights or metrics.default_inception_weights_path()
    if missing:
        msg = (f"--fid-every: FID needs {' and '.join(missing)}, not installed: {metrics.METRICS_EXTRA}, or "
               f"--fid-every 0")
    elif cfg.random_inception or os.path.isfile(path):
        return cfg.fid_every
    else:
        msg = (f"--fid-every: the FID Inception weights are not at {path!r}; pass --inception-weights "
               f"PATH ({metrics.FID_WEIGHTS_URL}) or --fid-every 0")
    if explicit:
        raise ValueError(msg)
    warnings.warn(msg + "; in-training FID is off", UserWarning, stacklevel=3)
    return 0



def confident_subsets(model, fake: torch.Tensor, cfg: Config, device) -> tuple[np.ndarray, np.ndarray]:
    """(FID indices, IS indices) into ``fake`` (N, 3, H, W) in [-1, 1]: the authors' ``cond_is_fid`` (mebm
    ``Task/eval_buffer.py``): each image goes to its predicted class argmax p(y|x) of ``model``'s classifier (in
    eval mode), and within each class the ``cfg.fid_keep_ratio`` / ``cfg.is_keep_ratio`` most confident by
    max_y p(y|x) = max softmax probability (``prob = Softmax(logits).max(1)[0]``, not the raw logit) are kept
    (:func:`fastebm.evaluation.filter_by_confidence`). A subset of fewer than 2 images falls back to the whole
    buffer (FID) or the FID subset (IS). Sorted int64 arrays."""
    from .evaluation.fid import filter_by_confidence

    probs = torch.softmax(model_outputs(model, fake, 256, device)[1].double(), 1)
    keep_fid, keep_is = (filter_by_confidence(probs, r) for r in (cfg.fid_keep_ratio, cfg.is_keep_ratio))
    keep_fid = keep_fid if len(keep_fid) >= 2 else np.arange(len(fake))  # too few to score: the whole buffer
    return keep_fid, keep_is if len(keep_is) >= 2 else keep_fid


class BufferScore:
    """FID (pytorch-fid) and Inception Score (unbiased logits) of replay-buffer samples against the training
    data's Inception statistics; the Inception network and those statistics are made at the first call.

    Args:
        cfg: the run's configuration (``fid_keep_ratio``, ``is_keep_ratio``, ``inception_weights``,
            ``random_inception``). device: where Inception and the model run.
    """

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        self.inception = self.real_stats = None

    def __call__(self, model, samples: torch.Tensor, train_data: ImageSet) -> dict:
        """Score ``samples`` (N, 3, H, W) float in [-1, 1] (clamped) of ``model`` (an EnergyModel; its classifier
        ranks them). Returns ``{"fid", "is_mean", "is_std", "n_fake", "n_is", "n_buffer", "n_real", "keep_ratio",
        "is_keep_ratio"}`` (and ``meaningless`` with a random Inception)."""
        from . import metrics

        cfg, device = self.cfg, self.device
        fake, n_buffer = samples.clamp(-1, 1), len(samples)
        ranked = model.has_classifier and (cfg.fid_keep_ratio, cfg.is_keep_ratio) != (1, 1)
        keep_fid, keep_is = confident_subsets(model, fake, cfg, device) if ranked else (np.arange(n_buffer),) * 2
        scored = np.union1d(keep_fid, keep_is)                      # one Inception pass serves both
        if self.inception is None:
            self.inception = metrics.load_inception(None if cfg.random_inception else cfg.inception_weights,
                                                     device=device, random_init=cfg.random_inception)
            real = to_float(train_data.images)
            self.real_stats = metrics.activation_statistics(metrics.inception_outputs(
                self.inception, real, 100, desc="fastebm: FID: Inception features of the training images")[0])
        pool, logits = metrics.inception_outputs(self.inception, fake[torch.as_tensor(scored)], 100,
                                                 desc="fastebm: FID: Inception features of the buffer")
        pool, logits = pool[np.searchsorted(scored, keep_fid)], logits[np.searchsorted(scored, keep_is)]
        is_mean, is_std = metrics.inception_score(logits, min(10, len(logits)), True, 0)
        out = {"fid": metrics.frechet_distance(*self.real_stats, *metrics.activation_statistics(pool)),
               "is_mean": is_mean, "is_std": is_std, "n_fake": len(keep_fid), "n_is": len(keep_is),
               "n_buffer": n_buffer, "n_real": len(train_data),
               "keep_ratio": cfg.fid_keep_ratio if ranked else 1.0,
               "is_keep_ratio": cfg.is_keep_ratio if ranked else 1.0}
        if cfg.random_inception:
            out["meaningless"] = metrics.RANDOM_INCEPTION_NOTE
        return out
