"""The feature-FD task: sample quality without Inception weights (:mod:`fastebm.evaluation.featurenet`).

``feature-fd`` scores the replay buffer or fresh SGLD chains of a checkpoint by the Fréchet distance to the test
split in the feature space of a small CNN classifier trained on the training split, never by FID. The network
is a file: ``opts.features`` (read when it exists, trained and written there when it does not), or a cached one
per training split (``<cache>/feature_nets/``, keyed by the split's content, rebuilt when damaged). Runs scored
with one network file are comparable; with different files they are not.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import torch

from . import featurenet
from .featurenet import FeatureNetError, FeatureScore
from .fid import generated_images, split_fingerprint
from .options import EvalError, EvalOptions
from .records import header, out_dir, write_json
from .run import LOG, Run, check_task, load_split, outputs

MEASURE = ("feature-FD: Fréchet distance (pytorch-fid's algorithm) between the features of the samples and of "
           "the test split in the pooled last layer of a small CNN classifier trained on the training split; "
           "not FID, comparable only between runs scored with the same network")


def cache_folder(opts: EvalOptions) -> str:
    """Where trained feature networks are cached: ``opts.stats_cache``, else ``$FASTEBM_CACHE/feature_nets`` or
    ``~/.cache/fastebm/feature_nets``."""
    return opts.stats_cache or os.path.join(
        os.environ.get("FASTEBM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fastebm")), "feature_nets")


def feature_net_for(run: Run, opts: EvalOptions):
    """(the :class:`~fastebm.evaluation.featurenet.FeatureNet` of this evaluation, its file, whether it was read, not
    trained).

    ``opts.features`` names the file: read it when it exists (a damaged file or one for other image sizes is an
    EvalError: its numbers would not compare with the ones it gave before); train one on the run's training split
    and write it there when it does not. Without it, the cache (:func:`cache_folder`) keyed by the training split's
    content (:func:`~fastebm.evaluation.fid.split_fingerprint`), image size and image count per class.
    """
    cfg = run.cfg
    if opts.features and os.path.isfile(opts.features):
        try:
            net = featurenet.load_feature_net(opts.features, run.device)
        except FeatureNetError as e:
            raise EvalError(str(e), "features") from None
        if net.image_size != cfg.image_size:
            raise EvalError(f"{opts.features!r} is a network for {net.image_size}px images, the checkpoint's model "
                            f"is {cfg.image_size}px", "features")
        return net, opts.features, True
    train = load_split(run, "train", None)
    test = load_split(run, "test", None)
    if opts.features:
        net = featurenet.train_feature_net(train, device=run.device, test=test)
        os.makedirs(os.path.dirname(os.path.abspath(opts.features)), exist_ok=True)
        return net, featurenet.save_feature_net(net, opts.features), False
    key = json.dumps([cfg.dataset, os.path.abspath(cfg.data_root) if cfg.data_root else "", cfg.max_per_class,
                      cfg.image_size, split_fingerprint(cfg, "train"), featurenet.FORMAT])
    path = os.path.join(cache_folder(opts), f"feature_net_{cfg.dataset}_{cfg.image_size}px_"
                                            f"{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    net, cached = featurenet.cached_feature_net(path, train, key, run.device, test=test,
                                               say=lambda line: print(f"{LOG}: {line}", file=sys.stderr))
    return net, path, cached


def sample_scores(run: Run, score: FeatureScore, images: torch.Tensor, batch_size: int,
                  real: torch.Tensor | None = None) -> dict:
    """The numbers of a sample set (N, C, H, W) float in [-1, 1] of ``run``'s model, scored by ``score``:

    ``feature_fd`` (:meth:`~fastebm.evaluation.featurenet.FeatureScore.fd`), ``agreement`` (classifier models: the
    feature network's accuracy on the classes the model predicts for its samples, argmax p(y|x); None otherwise) and
    ``confidence`` (:meth:`~fastebm.evaluation.featurenet.FeatureScore.classifiability`), and the energies: ``e_neg``
    (mean E(x−) of the samples), with ``real`` (images of the data) ``e_pos`` (mean E(x+)) and ``energy_gap``
    = e_neg − e_pos (> 0: the model still tells its samples from data). Energies: low = likely.
    """
    energy, logits = outputs(run, images, batch_size, "feature-fd: scoring samples")
    record = {"n_fake": len(images), "feature_fd": score.fd(images),
              **score.classifiability(images, None if logits is None else logits.argmax(1)),
              "e_neg": float(energy.double().mean())}
    if real is not None:
        e_pos = float(outputs(run, real, batch_size, "feature-fd: energies of real images")[0].double().mean())
        record.update(e_pos=e_pos, energy_gap=record["e_neg"] - e_pos)
    return record


def task_feature_fd(run: Run, opts: EvalOptions) -> dict:
    """Feature-FD of generated images against the test split (``opts.test_subset`` images), in the feature space
    of :func:`feature_net_for`'s network; the images are those of the ``fid`` task (``opts.source``, buffer or
    fresh chains, and its filtering: :func:`~fastebm.evaluation.fid.generated_images`).

    Writes ``feature-fd.json``: the numbers of :func:`sample_scores`, ``feature_fd_train_split`` (the training
    split's feature-FD against the same test images: what real images reach), the network's file, whether it came
    from the file or was trained now, and its test accuracy. Raises EvalError (bad input, a damaged ``features``
    file), DatasetError (no test split).
    """
    check_task(run, opts, "feature-fd")
    out = out_dir(run, opts)
    net, path, read = feature_net_for(run, opts)
    test = load_split(run, "test", opts.test_subset)
    score = FeatureScore(net, test.images)
    fake, info = generated_images(run, opts)
    record = {**header(run, "feature-fd"), "measure": MEASURE, **info,
              **sample_scores(run, score, fake, opts.batch_size, test.images), "n_real": len(test),
              "real_split": "test", "feature_fd_train_split": score.fd(load_split(run, "train", None).images),
              "features": os.path.abspath(path), "features_read": read,
              "feature_net_test_accuracy": net.meta.get("test_accuracy")}
    return write_json(out, "feature-fd.json", record)
