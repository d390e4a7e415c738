"""The evaluation tasks other than FID / IS: samples, classifier metrics, OOD detection and the paper's figures.

Each is ``task_<name>(run, opts) -> dict``: it checks what it needs (:func:`~fastebm.evaluation.run.check_task`),
writes ``<name>.json`` (the returned record) and its figures into ``opts.out`` (default ``eval/`` next to the
checkpoint), and raises EvalError for bad input. Figures need matplotlib (``pip install 'fastebm[plots]'``).
Scores follow the package's sign: E(x) low = likely, log p(x) = -E(x) + const.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from ..data.datasets import load_dataset
from ..data.imagefiles import resize
from ..data.imageset import ImageSet, to_float
from .options import EvalError, EvalOptions
from .records import header, out_dir, run_name, save_npz_images, write_json
from .run import Run, check_task, grad_norms, load_split, outputs, sample_chains, subsample


def task_gen(run: Run, opts: EvalOptions) -> dict:
    """Fresh samples after ``opts.sgld_steps`` (default: the training K) SGLD steps from p0.

    Writes ``gen_uncond.png`` and ``gen_uncond.npz`` (``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,):
    the classifier's prediction, -1 for mebm; ``energy`` (N,)), N = ``opts.n_samples`` (default 64).
    Classifier models also get class-conditional samples (E(x, y) = -f(x)[y]): ``gen_cond.png`` (one row per
    class) and ``gen_cond.npz``, max(1, N // n_classes) per class. Writes ``gen.json``.
    """
    from .plots import save_grid

    check_task(run, opts, "gen")
    out = out_dir(run, opts)
    n, steps = opts.n_samples or 64, opts.sgld_steps or run.cfg.k
    torch.manual_seed(opts.seed)
    x = sample_chains(run, n, steps, opts.batch_size, desc="gen: SGLD chains")
    energy, logits = outputs(run, x, opts.batch_size, "gen: scoring samples")
    pred = logits.argmax(1) if logits is not None else torch.full((n,), -1, dtype=torch.long)
    record = {**header(run, "gen"), "sgld_steps": steps, "n_uncond": n, "energy_uncond_mean": float(energy.mean()),
              "grid_uncond": save_grid(os.path.join(out, "gen_uncond.png"), x, nrow=math.ceil(n ** 0.5)),
              "npz_uncond": save_npz_images(os.path.join(out, "gen_uncond.npz"), x, pred, energy=energy.numpy())}
    if run.has_classifier:
        per = max(1, n // run.cfg.n_classes)
        y = torch.arange(run.cfg.n_classes).repeat_interleave(per)
        xc = sample_chains(run, len(y), steps, opts.batch_size, labels=y, desc="gen: class-conditional chains")
        _, logits_c = outputs(run, xc, opts.batch_size, "gen: scoring samples")
        record.update(n_per_class=per, n_cond=len(y), cond_accuracy=float((logits_c.argmax(1) == y).float().mean()),
                      grid_cond=save_grid(os.path.join(out, "gen_cond.png"), xc, nrow=per),
                      npz_cond=save_npz_images(os.path.join(out, "gen_cond.npz"), xc, y))
    return write_json(out, "gen.json", record)


def task_acc(run: Run, opts: EvalOptions) -> dict:
    """Test accuracy and mean cross-entropy on the test split (``opts.test_subset`` images; classifier
    models). Writes ``acc.json``: ``accuracy`` in [0, 1], ``loss`` (nats), ``n``, ``per_class_accuracy``
    (null for a class absent from the subset)."""
    check_task(run, opts, "acc")
    data = load_split(run, "test", opts.test_subset)
    _, logits = outputs(run, data.images, opts.batch_size, "acc: test images")
    y = data.labels
    correct = (logits.argmax(1) == y).double()
    per_class = [float(correct[y == c].mean()) if bool((y == c).any()) else float("nan")
                 for c in range(run.cfg.n_classes)]
    record = {**header(run, "acc"), "n": len(y), "accuracy": float(correct.mean()),
              "loss": float(torch.nn.functional.cross_entropy(logits.double(), y)), "per_class_accuracy": per_class}
    return write_json(out_dir(run, opts), "acc.json", record)


def task_ece(run: Run, opts: EvalOptions) -> dict:
    """Expected calibration error (Guo et al. 2017) on the test split with ``opts.ece_bins`` equal-width
    confidence bins (:func:`fastebm.evaluation.metrics.expected_calibration_error`); writes ``ece.json`` (``ece`` in
    [0, 1], ``accuracy``, ``bins``) and ``reliability.png``. Classifier models."""
    from . import metrics

    check_task(run, opts, "ece")
    out = out_dir(run, opts)
    data = load_split(run, "test", opts.test_subset)
    _, logits = outputs(run, data.images, opts.batch_size, "ece: test images")
    probs = torch.softmax(logits.double(), 1).numpy()
    ece, bins = metrics.expected_calibration_error(probs, data.labels.numpy(), n_bins=opts.ece_bins)
    png = metrics.reliability_diagram(bins, os.path.join(out, "reliability.png"),
                                      title=f"{run.cfg.model} {run.cfg.dataset}  ECE {ece:.4f}")
    record = {**header(run, "ece"), "n": len(data), "ece": ece,
              "accuracy": float((probs.argmax(1) == data.labels.numpy()).mean()), "bins": bins, "png": png}
    return write_json(out, "ece.json", record)


def ood_images(run: Run, opts: EvalOptions) -> ImageSet:
    """The test split of ``opts.ood_dataset`` (``opts.ood_subset`` images), resized to the model's size."""
    data = load_dataset(opts.ood_dataset, opts.ood_root, "test", False, opts.ood_max_per_class)
    data = data.subset(opts.ood_subset, 0)
    if data.image_size != run.cfg.image_size:  # e.g. 128 px CelebA-HQ vs 32 px CIFAR: resize
        data = ImageSet(resize(data.images, run.cfg.image_size), data.labels, data.n_classes, data.name)
    return data


def task_ood(run: Run, opts: EvalOptions) -> dict:
    """OOD detection: AUROC (:func:`fastebm.evaluation.metrics.auroc`, scikit-learn) between the test split (positives)
    and ``opts.ood_dataset`` for ``logpx`` = -E(x), ``max_softmax`` = max_y p(y|x) (classifier models;
    Hendrycks & Gimpel 2017) and ``grad_norm`` = -||dE/dx||_2 (JEM's OOD code); every score is oriented so
    that in-distribution inputs score higher. Writes ``ood.json`` and ``ood_hist.png`` (score histograms)."""
    from . import metrics, plots

    check_task(run, opts, "ood")
    out = out_dir(run, opts)
    data_in, data_out = load_split(run, "test", opts.test_subset), ood_images(run, opts)
    e_in, l_in = outputs(run, data_in.images, opts.batch_size, "ood: test images")
    e_out, l_out = outputs(run, data_out.images, opts.batch_size, f"ood: {opts.ood_dataset} images")
    scores = {"logpx": (-e_in.numpy(), -e_out.numpy())}
    if run.has_classifier:
        scores["max_softmax"] = tuple(torch.softmax(v.double(), 1).max(1)[0].numpy() for v in (l_in, l_out))
    scores["grad_norm"] = (-grad_norms(run, data_in.images, opts.batch_size, "ood: gradients, test").numpy(),
                           -grad_norms(run, data_out.images, opts.batch_size, "ood: gradients, OOD").numpy())
    record = {**header(run, "ood"), "ood_dataset": opts.ood_dataset, "ood_root": opts.ood_root,
              "n_in": len(data_in), "n_out": len(data_out),
              "score_convention": "higher = more in-distribution: logpx=-E(x), max_softmax=max_y p(y|x), "
                                  "grad_norm=-||dE/dx||_2",
              "auroc": {k: metrics.auroc(*v) for k, v in scores.items()},
              "mean_in": {k: float(v[0].mean()) for k, v in scores.items()},
              "mean_out": {k: float(v[1].mean()) for k, v in scores.items()}}
    record["png"] = plots.histograms(
        os.path.join(out, "ood_hist.png"),
        [(f"{k}  AUROC {record['auroc'][k]:.3f}", {run.cfg.dataset: v[0], opts.ood_dataset: v[1]})
         for k, v in scores.items()], bins=opts.bins, cols=len(scores))
    return write_json(out, "ood.json", record)


def task_logpx(run: Run, opts: EvalOptions) -> dict:
    """log p(x) = -E(x) (up to log Z) per class — the paper's Fig. 6: test data by true label and replay-buffer
    samples (``opts.n_samples`` of them, default all) by predicted class argmax p(y|x) (mebm: the buffer as
    one extra panel).

    Writes ``logpx.png`` (one panel per class, both series as densities, ``opts.bins`` bins) and
    ``logpx.json`` (per class: n, mean, std of each series; null when empty).
    """
    from . import plots

    check_task(run, opts, "logpx")
    out = out_dir(run, opts)
    data = load_split(run, "test", opts.test_subset)
    energy, _ = outputs(run, data.images, opts.batch_size, "logpx: test images")
    test_lp, labels = -energy.double().numpy(), data.labels.numpy()
    buf_lp, buf_pred = np.zeros(0), np.zeros(0, np.int64)
    if run.buffer is not None:
        e_b, l_b = outputs(run, subsample(run.buffer, opts.n_samples, opts.seed), opts.batch_size,
                           "logpx: buffer images")
        buf_lp = -e_b.double().numpy()
        buf_pred = l_b.argmax(1).numpy() if l_b is not None else np.full(len(buf_lp), -1)

    def stats(v):
        n = int(len(v))
        return {"n": n, "mean": float(v.mean()) if n else None, "std": float(v.std()) if n else None}

    per_class, panels = {}, []
    for c in range(data.n_classes):
        series = {"test data": test_lp[labels == c], "buffer (predicted)": buf_lp[buf_pred == c]}
        per_class[str(c)] = {k: stats(v) for k, v in series.items()}
        panels.append((f"class {c}", series))
    if run.buffer is not None and not run.has_classifier:
        panels.append(("all classes", {"test data": test_lp, "buffer": buf_lp}))
    record = {**header(run, "logpx"), "n_test": len(data), "n_buffer": len(buf_lp), "per_class": per_class,
              "test": stats(test_lp), "buffer": stats(buf_lp),
              "png": plots.histograms(os.path.join(out, "logpx.png"), panels, bins=opts.bins,
                                      xlabel="log p(x) = -E(x)")}
    return write_json(out, "logpx.json", record)


def three_sets(run: Run, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n real training images x+, n p0 samples x0 and n buffer samples x-: (n, 3, H, W) float32 in [-1, 1],
    CPU (fewer when the split or the buffer is smaller)."""
    real = to_float(load_split(run, "train", n, seed=seed).images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x0 = run.p0.sample(n, device=run.device).cpu().clamp(-1, 1)
    return real, x0, subsample(run.buffer, n, seed)


def task_tsne(run: Run, opts: EvalOptions, more_runs: Sequence[Run] = ()) -> dict:
    """One joint 2-D t-SNE (scikit-learn) of penultimate features h(x) — the paper's Fig. 4 — of real x+
    (training split), x0 ~ p0 and buffer x- of ``run`` and of each of ``more_runs``; the features of all
    points come from ``run``'s network, so several checkpoints (e.g. K = 1, 2, 5) share one space.
    ``opts.n_samples`` per set (default 500); perplexity ``opts.perplexity``, capped at (points - 1) / 3.

    Writes ``tsne.png`` (one colour per set, legend), ``tsne.npz`` (``coords`` float32 (M, 2), ``group``
    int64 (M,), ``names``) and ``tsne.json``.
    """
    from sklearn.manifold import TSNE

    from . import plots

    runs = [run, *more_runs]
    for r in runs:
        check_task(r, opts, "tsne")
    out = out_dir(run, opts)
    n = opts.n_samples or 500
    real, x0, buf = three_sets(run, n, opts.seed)
    sets = [("x+ data", real), ("x0 p0", x0)]
    label = (lambda r: f"x- {run_name(r)}") if more_runs else (lambda r: "x- buffer")
    sets += [(label(run), buf)] + [(label(r), subsample(r.buffer, n, opts.seed)) for r in more_runs]
    feats = np.concatenate([outputs(run, x, opts.batch_size, f"tsne: features of {name}", features=True)[2]
                            .double().numpy() for name, x in sets])
    groups = np.concatenate([np.full(len(x), i, dtype=np.int64) for i, (_, x) in enumerate(sets)])
    if len(feats) < 4:
        raise EvalError(f"task 'tsne' needs at least 4 points, got {len(feats)}; raise it", "n_samples")
    perplexity = float(min(opts.perplexity, (len(feats) - 1) / 3))
    coords = TSNE(2, perplexity=perplexity, init="pca", random_state=opts.seed).fit_transform(feats).astype(np.float32)
    names = [name for name, _ in sets]
    npz = os.path.join(out, "tsne.npz")
    np.savez_compressed(npz, coords=coords, group=groups, names=np.array(names))
    record = {"task": "tsne", "checkpoints": [r.ckpt for r in runs], "features_of": run.ckpt, "names": names,
              "counts": np.bincount(groups).tolist(), "perplexity": perplexity, "npz": npz,
              "png": plots.scatter(os.path.join(out, "tsne.png"), coords, groups, names,
                                   title="t-SNE of penultimate features")}
    return write_json(out, "tsne.json", record)


def task_extremes(run: Run, opts: EvalOptions) -> dict:
    """Per class, the replay-buffer samples with the highest / lowest log p(x) = -E(x) and the highest /
    lowest p(y|x) — the paper's Figs. 5, 9-17. Buffer samples are grouped by predicted class
    argmax p(y|x) (mebm: one group, p(x) rows only); ``opts.n_show`` images per row.

    Writes ``extremes/class_<c>.png`` (the labelled rows of a class), ``extremes.png`` (the overview: classes ×
    the selections) and ``extremes.json`` (buffer indices and scores of each selection).
    """
    from . import plots

    check_task(run, opts, "extremes")
    out = out_dir(run, opts)
    buf = run.buffer
    energy, logits = outputs(run, buf, opts.batch_size, "extremes: buffer images")
    logpx = -energy.double()
    if logits is not None:
        probs = torch.softmax(logits.double(), 1)
        conf, pred = probs.max(1)
        classes = list(range(run.cfg.n_classes))
    else:
        conf, pred, classes = None, torch.zeros(len(buf), dtype=torch.long), [0]
    k = opts.n_show
    folder = os.path.join(out, "extremes")
    os.makedirs(folder, exist_ok=True)
    record = {**header(run, "extremes"), "n_buffer": len(buf), "n_show": k, "per_class": {}}
    table, labels = [], []
    for c in classes:
        idx = torch.nonzero(pred == c).flatten()
        picks = {"highest p(x)": idx[logpx[idx].argsort(descending=True)[:k]],
                 "lowest p(x)": idx[logpx[idx].argsort()[:k]]}
        if conf is not None:
            picks["highest p(y|x)"] = idx[conf[idx].argsort(descending=True)[:k]]
            picks["lowest p(y|x)"] = idx[conf[idx].argsort()[:k]]
        name = f"class {c}" if logits is not None else "all"
        rows = [(label, buf[i]) for label, i in picks.items()]
        png = plots.image_rows(os.path.join(folder, f"class_{c}.png"), rows, title=f"{name}: {len(idx)} buffer samples")
        record["per_class"][str(c)] = {"n": len(idx), "png": png, **{
            label: {"index": i.tolist(), "logpx": logpx[i].tolist(),
                    **({"p_y_given_x": conf[i].tolist()} if conf is not None else {})} for label, i in picks.items()}}
        table.append([x for _, x in rows])
        labels.append(name)
    record["png"] = plots.image_table(os.path.join(out, "extremes.png"), table, labels, list(picks))
    return write_json(out, "extremes.json", record)


def task_energy(run: Run, opts: EvalOptions) -> dict:
    """Distributions of the energies E(x+) of real training images, E(x0) of p0 samples and E(x-) of
    buffer samples (``opts.n_samples`` each, default 500). Writes ``energy.png`` (violins),
    ``energy_hist.png`` (overlaid histograms) and ``energy.json`` (mean, std, quantiles per set)."""
    from . import plots

    check_task(run, opts, "energy")
    out = out_dir(run, opts)
    sets = dict(zip(("x+ data", "x0 p0", "x- buffer"), three_sets(run, opts.n_samples or 500, opts.seed)))
    energies = {k: outputs(run, x, opts.batch_size, f"energy: {k}")[0].double().numpy() for k, x in sets.items()}
    q = (0.05, 0.25, 0.5, 0.75, 0.95)
    record = {**header(run, "energy"), "sets": {k: {"n": len(v), "mean": float(v.mean()), "std": float(v.std()),
                                                    "quantiles": dict(zip(map(str, q), np.quantile(v, q)))}
                                                for k, v in energies.items()},
              "png": plots.violins(os.path.join(out, "energy.png"), energies, ylabel="E(x)",
                                   title=f"{run.cfg.model} {run.cfg.dataset}, iteration {run.iteration}"),
              "png_hist": plots.histograms(os.path.join(out, "energy_hist.png"), [("energies", energies)],
                                           bins=opts.bins, xlabel="E(x)", cols=1)}
    return write_json(out, "energy.json", record)


def task_p0(run: Run, opts: EvalOptions) -> dict:
    """μ of p0 and a grid of 64 p0 samples (the paper's Fig. 7): ``p0_mean.png``, ``p0_samples.png``,
    ``p0.json``."""
    from .plots import save_p0_pictures

    check_task(run, opts, "p0")
    out = out_dir(run, opts)
    mean, samples = save_p0_pictures(run.p0, out, device=run.device, seed=opts.seed)
    record = {**header(run, "p0"), "kind": run.p0.kind, "mean_png": mean, "samples_png": samples}
    return write_json(out, "p0.json", record)
