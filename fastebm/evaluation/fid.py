"""FID and Inception Score of generated images (the paper's Tables 1-4), and the cache of real statistics.

FID: pytorch-fid's InceptionV3 (:mod:`fastebm.evaluation.inception`) and ``calculate_frechet_distance``
(:mod:`fastebm.evaluation.metrics`). IS: softmax of the unbiased logits pool3 · Wᵀ over shuffled splits (Salimans et al.
2016). Generated images come from the replay buffer (optionally filtered per predicted class as the JEM++ / M-EBM
reference ``cond_is_fid``) or from fresh SGLD chains.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings

import numpy as np
import torch

from ..config.options import Config
from ..data.datasets import DATASETS, load_dataset
from ..data.imageset import ImageSet, to_float
from .options import IS_IMAGES_PER_SPLIT, EvalError, EvalOptions, check_keep_ratio
from .records import header, out_dir, write_json
from .run import LOG, Run, check_range, check_task, outputs, sample_chains, subsample

EVAL_KEEP_RATIO = 0.9  # the authors' final FID / IS of a classifier model: mebm scripts/eval_all_in_one.sh


def filter_by_confidence(probs, keep_ratio: float) -> np.ndarray:
    """Indices of the most confident samples per predicted class (JEM++ / M-EBM ``cond_is_fid``, mebm
    ``Task/eval_buffer.py``: ``prob = Softmax(logits).max(1)[0]``).

    Each sample is assigned its predicted class ``argmax_y p(y|x)``; within each predicted class the
    samples are ranked by confidence ``max_y p(y|x)`` (ties: lower index first) and the top
    ``floor(keep_ratio * n_class)`` are kept when ``0 < keep_ratio <= 1``, the top
    ``int(keep_ratio)`` when ``keep_ratio > 1`` (a count per class, as the reference's ``--ratio``).

    Args:
        probs: (N, C) class probabilities p(y|x), rows summing to 1 (tensor or array). Not logits: the largest
            logit ranks differently from the largest probability, which also depends on the other logits
            (softmax first).
        keep_ratio: > 0, finite.

    Returns:
        sorted int64 indices (M,) into the N samples.

    Raises:
        EvalError: ``keep_ratio`` <= 0 or not finite, probs not 2-D or not rows of probabilities.
    """
    p = probs.detach().cpu().double().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, float)
    if p.ndim != 2:
        raise EvalError(f"filter_by_confidence: expected (N, C) probabilities, got shape {p.shape}")
    if len(p) and (not np.isfinite(p).all() or p.min() < 0 or np.abs(p.sum(1) - 1).max() > 1e-3):
        raise EvalError("filter_by_confidence: expected rows of probabilities summing to 1 (logits? apply softmax "
                        "first)")
    check_keep_ratio(keep_ratio)
    pred, conf = p.argmax(1), p.max(1)
    keep = []
    for c in np.unique(pred):
        members = np.flatnonzero(pred == c)
        k = int(len(members) * keep_ratio) if keep_ratio <= 1 else int(keep_ratio)
        order = np.argsort(-conf[members], kind="stable")
        keep.append(members[order[:k]])
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)


def split_fingerprint(cfg: Config, split: str) -> str:
    """SHA-1 of the content listing of one split of the run's data, the key of its cached FID statistics.

    Every file under the data root (for the folder layouts, under ``root/<split>``, or ``root/val`` for a
    missing ``test``) as (relative path, size in bytes, mtime in ns), sorted; for the embedded ``digits``
    (or no root), the dataset name and scikit-learn's version. Changes when files are added, removed or
    rewritten.
    """
    h = hashlib.sha1()
    layout = DATASETS[cfg.dataset].layout
    if layout == "embedded" or not cfg.data_root:
        import sklearn

        h.update(f"{cfg.dataset}:{sklearn.__version__}".encode())
        return h.hexdigest()
    root = os.path.abspath(cfg.data_root)
    if layout == "folders":
        sub = os.path.join(root, split)
        root = sub if os.path.isdir(sub) or split != "test" else os.path.join(root, "val")
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(folder, name))
            h.update(f"{os.path.relpath(os.path.join(folder, name), root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def generated_images(run: Run, opts: EvalOptions) -> tuple[torch.Tensor, dict]:
    """The generated images of FID / IS, (N, 3, H, W) float32 in [-1, 1], and a dict saying where they came
    from: ``opts.source`` ``buffer`` (filtered by ``opts.keep_ratio``, for a classifier model by default
    :data:`EVAL_KEEP_RATIO` as the authors, then ``opts.n_samples`` of them at random) or ``chains``
    (``opts.n_samples`` fresh chains, default |B|, of ``opts.sgld_steps`` steps)."""
    info: dict = {"source": opts.source}
    if opts.source == "buffer":
        x = run.buffer
        ratio = opts.keep_ratio if opts.keep_ratio is not None else (EVAL_KEEP_RATIO if run.has_classifier else None)
        if ratio is not None:
            _, logits = outputs(run, x, opts.batch_size, "fid: classifying the buffer")
            idx = filter_by_confidence(torch.softmax(logits.double(), 1), ratio)
            if len(idx) == 0:
                raise EvalError(f"{ratio} keeps no buffer image", "keep_ratio")
            x = x[torch.from_numpy(idx)]
            info.update(keep_ratio=ratio, n_buffer=len(run.buffer))
        x = subsample(x, opts.n_samples, opts.seed)
    else:
        n = opts.n_samples or (len(run.buffer) if run.buffer is not None else run.cfg.buffer_size)
        steps = opts.sgld_steps or run.cfg.k
        torch.manual_seed(opts.seed)
        x = sample_chains(run, n, steps, opts.batch_size, desc="fid: SGLD chains")
        info.update(sgld_steps=steps)
    info["n_fake"] = len(x)
    return check_range(x, f"generated images ({opts.source})"), info


def options_inception(opts: EvalOptions, device: torch.device):
    """(:func:`fastebm.evaluation.inception.load_inception` of ``opts.inception_weights`` or ``opts.random_inception``,
    the id of its weights: :func:`fastebm.evaluation.inception.weights_id`). Raises EvalError naming
    ``inception_weights`` when the file is missing (nothing is downloaded); warns that random weights give meaningless
    numbers."""
    from . import inception

    if opts.random_inception:
        warnings.warn("random_inception: randomly initialised Inception; FID / IS numbers are meaningless "
                      "(tests and smoke runs only)", UserWarning, stacklevel=2)
    weights = None if opts.random_inception else opts.inception_weights
    try:
        model = inception.load_inception(weights, device=device, random_init=opts.random_inception)
    except FileNotFoundError as e:
        raise EvalError(str(e) + ("" if opts.inception_weights else ", or give its path"),
                        "inception_weights") from None
    return model, inception.weights_id(weights, opts.random_inception)


def real_statistics(run: Run, opts: EvalOptions, inception, inception_id: str) -> tuple[tuple, int, str, bool]:
    """((mu (2048,), sigma (2048, 2048)), n_real, cache file, whether it was cached) of ``opts.n_real`` images
    (default all) of split ``opts.fid_split`` (``train+test``: both splits together, the first ``n_real`` of a
    fixed permutation of their union). The cache is keyed by the data's content
    (:func:`split_fingerprint`), the split, the image count and the Inception weights."""
    from . import inception as inc
    from . import metrics

    cfg, split = run.cfg, opts.fid_split
    key = json.dumps([cfg.dataset, os.path.abspath(cfg.data_root) if cfg.data_root else "", cfg.max_per_class,
                      cfg.image_size, split, opts.n_real, inception_id,
                      [split_fingerprint(cfg, part) for part in split.split("+")]])
    folder = opts.stats_cache or os.path.join(
        os.environ.get("FASTEBM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fastebm")), "fid_stats")
    tag = "_random-inception" if opts.random_inception else ""
    cache = os.path.join(folder, f"fid_stats_{cfg.dataset}_{split}_{opts.n_real or 'all'}{tag}_"
                                 f"{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz")
    cached = read_cached_statistics(cache)
    if cached is not None:  # real images not even loaded
        return cached[0], cached[1], cache, True
    parts = [load_dataset(cfg.dataset, cfg.data_root, part, False, cfg.max_per_class, cfg.image_size)
             for part in split.split("+")]  # train+test: the period's reference, e.g. CIFAR-10's 60,000 images
    real = ImageSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                    parts[0].n_classes, parts[0].name).subset(opts.n_real, 0)
    pool, _ = inc.inception_outputs(inception, to_float(real.images), opts.batch_size, run.device,
                                        desc=f"{LOG}: fid: Inception features (real, {split})")
    stats = metrics.activation_statistics(pool)
    metrics.save_stats(cache, *stats)
    tmp = f"{cache}.json.tmp-{os.getpid()}"  # written whole, then renamed: never half a file
    with open(tmp, "w") as f:
        json.dump({"n_real": len(real), "dataset": cfg.dataset, "data_root": cfg.data_root, "split": split,
                   "inception": inception_id}, f, indent=2)
    os.replace(tmp, cache + ".json")
    return stats, len(real), cache, False


def read_cached_statistics(cache: str) -> tuple[tuple, int] | None:
    """((mu, sigma), n_real) of the FID statistics cache entry ``cache`` (its .npz and .json), None when there
    is none. A damaged entry (either file cut short or unreadable, arrays of wrong shapes or non-finite) is
    said on stderr, naming the file and why, and None is returned: the caller computes it again and rewrites it."""
    from . import metrics

    if not (os.path.isfile(cache) and os.path.isfile(cache + ".json")):
        return None
    try:
        with open(cache + ".json") as f:
            n_real = int(json.load(f)["n_real"])
        return metrics.load_stats(cache), n_real
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        where = "" if str(cache) in str(e) else f" ({cache + '.json'!r})"
        print(f"{LOG}: FID statistics cache entry {cache} cannot be read{where}: {' '.join(str(e).split())[:300]}; "
              f"computing it again", file=sys.stderr)
        return None


def fid_and_is(run: Run, opts: EvalOptions, tasks: tuple[str, ...] = ("fid", "is")) -> dict[str, dict]:
    """FID and / or Inception Score of generated images (the paper's Tables 1-4) from one Inception pass.

    Generated images: :func:`generated_images`. Real statistics: :func:`real_statistics`. FID:
    :func:`fastebm.evaluation.metrics.frechet_distance` (pytorch-fid); IS:
    :func:`fastebm.evaluation.metrics.inception_score` with ``opts.splits`` shuffled splits (seed ``opts.seed``; None:
    one per 5,000 images, as the authors).

    Writes ``<task>.json`` for each of ``tasks`` (``fid``, ``is``). Returns task -> record; both records hold
    every number computed (``fid``, ``is_mean``, ``is_std``, ``n_fake``, ``n_real``, ...) and differ in
    ``task``. Raises EvalError (bad input, no Inception weights file), DatasetError.
    """
    from . import inception as inc
    from . import metrics

    for task in tasks:
        check_task(run, opts, task)
    out = out_dir(run, opts)
    inception, inception_id = options_inception(opts, run.device)  # fail fast on missing weights
    fake, info = generated_images(run, opts)
    splits = opts.splits or max(1, len(fake) // IS_IMAGES_PER_SPLIT)
    if "is" in tasks and len(fake) < splits:
        raise EvalError(f"expected at most as many Inception Score splits as the {len(fake)} generated images, "
                        f"got {splits}", "splits")
    record = {**header(run, tasks[0]), **info, "inception": inception_id}
    pool, logits = inc.inception_outputs(inception, fake, opts.batch_size, run.device,
                                             desc=f"{LOG}: fid: Inception features (generated)")
    if "is" in tasks:
        record["is_mean"], record["is_std"] = metrics.inception_score(logits, splits, True, opts.seed)
        record["splits"] = splits
    if "fid" in tasks:
        real, n_real, cache, cached = real_statistics(run, opts, inception, inception_id)
        record.update(fid=metrics.frechet_distance(*real, *metrics.activation_statistics(pool)), n_real=n_real,
                      real_split=opts.fid_split, real_stats=cache, real_stats_cached=cached)
    if min(len(fake), record.get("n_real", 10**9)) < pool.shape[1]:
        record["note"] = (f"fewer samples than the {pool.shape[1]} Inception features: FID regularised and "
                          "strongly biased; use >= 10k samples for reported numbers")
    if opts.random_inception:
        record["meaningless"] = inc.RANDOM_INCEPTION_NOTE
    return {task: write_json(out, f"{task}.json", dict(record, task=task)) for task in tasks}


def task_fid(run: Run, opts: EvalOptions) -> dict:
    """FID of generated images against the real statistics (:func:`fid_and_is`); writes ``fid.json``."""
    return fid_and_is(run, opts, ("fid",))["fid"]


def task_is(run: Run, opts: EvalOptions) -> dict:
    """Inception Score of generated images (:func:`fid_and_is`); writes ``is.json``."""
    return fid_and_is(run, opts, ("is",))["is"]
