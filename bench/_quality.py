"""The machinery of the quality benchmark (bench/test_quality.py): train every configuration × seed interleaved,
score each run offline, and draw the figure.

Sizes. The embedded digits (1,437 training / 360 test images, every 5th image is a test image) at 16×16: their
content is 8×8, so 16×16 keeps all of it at a quarter of 32×32's cost. WRN-10-1, the digits demo's batches 32
(p(x)) / 64 (p(y|x)) and learning rate 0.05, replay buffer 500 (so that in ``ITERS`` iterations every chain is
continued ``ITERS·32/500`` times; the buffer size does not enter the iteration cost), one epoch of ``ITERS``
iterations with the linear warm-up over its first fifth, no decay. Full: 240 iterations, seeds 1, 2, 3, 512 fresh
chains; ``FASTEBM_BENCH_SIZE=small``: 60 iterations, seeds 1, 2, 256 fresh chains.

Interleaving. Every run is built first; then round r runs iteration r of every run, the order rotated each round,
so that the machine's load hits every configuration alike. Each run keeps its own torch RNG state (swapped in and
out around its step), so a run draws the same random numbers as it would alone.

Scores (:mod:`fastebm.evaluation.featurenet`, :func:`fastebm.evaluation.featurefd.sample_scores`): a :class:`FeatureNet`
trained on the training split (12 epochs, seed 0, a few seconds); the feature-FD against the test split of the
whole replay buffer (also at ``CURVE_POINTS`` points during training, for the curve against wall-clock time) and
of ``CHAINS`` fresh chains of the run's K steps from p0 (:func:`fastebm.evaluation.sample_chains`), the feature
network's agreement with the model's predicted classes and its confidence on the buffer, E(x+) (test split),
E(x−) (buffer), their gap, test accuracy, the largest |batch-mean E(x+)| over the run (energy drift).
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import torch

from bench import _common as C

SMALL = os.environ.get("FASTEBM_BENCH_SIZE", "") == "small"
IMAGE_SIZE = 16
ITERS, SEEDS = (60, (1, 2)) if SMALL else (240, (1, 2, 3))
BUFFER = 500
CURVE_POINTS = 6
CHAINS = 256 if SMALL else 512  # fresh chains per run, in batches of the run's p(x) batch (its BatchNorm statistics)
FEATURE_EPOCHS = 12

# label -> Config overrides on the digits preset (fastebm.data.datasets); JEM's K = 20 and recipe come from --model jem
CONFIGS = {
    "mebm-k1": dict(model="mebm", k=1),
    "mebm-k2": dict(model="mebm", k=2),
    "mebm-k5": dict(model="mebm", k=5),
    "mebm-k2-uniform": dict(model="mebm", k=2, p0="uniform"),
    "jem-k20": dict(model="jem"),
    "mjem-k5": dict(model="mjem", k=5),
    "classifier": dict(model="mjem", k=5, px_weight=0.0),  # the iteration of --px-weight 0: cross-entropy alone
    "mebm-k2-no-l2": dict(model="mebm", k=2, l2=0.0),
    "mebm-k2-fast": dict(model="mebm", k=2),  # + fast_flags() below
}
GENERATIVE = [label for label in CONFIGS if label != "classifier"]


def fast_flags() -> dict:
    """The fast path of this device: ``fast_flags('cuda')`` on CUDA; on the CPU, whose default is the plain path,
    the compiled network (``--compile default``), the CPU's fast path."""
    from fastebm.config.options import fast_flags as ff
    from fastebm.config.options import plain_flags

    return ff("cuda") if C.CUDA else dict(plain_flags(), compile="default")


def flags_of(label: str) -> dict:
    from fastebm.config.options import plain_flags

    return fast_flags() if label.endswith("-fast") else plain_flags()


class QualityRun:
    """One configuration at one seed: its trainer, RNG state, per-iteration times and energies, and scores."""

    def __init__(self, label: str, seed: int, trainer):
        self.label, self.seed, self.trainer = label, seed, trainer
        self.rng = torch.random.get_rng_state()
        self.times: list[float] = []
        self.e_pos: list[float] = []
        self.curve: list[tuple[int, float, float]] = []  # (iteration, seconds of training so far, buffer FD)
        self.diverged_at: int | None = None
        self.scores: dict = {}

    def step(self, it: int) -> None:
        from fastebm.run.trainer import lr_at

        tr = self.trainer
        torch.random.set_rng_state(self.rng)
        for g in tr.opt.param_groups:
            g["lr"] = lr_at(tr.cfg, it)
        dt, m = C.timed(tr.train_step, it)
        self.rng = torch.random.get_rng_state()
        self.times.append(dt)
        loss, e_pos = float(m["loss"]), float(m["e_pos"])
        self.e_pos.append(e_pos)
        if not (torch.isfinite(torch.tensor([loss, e_pos])).all() and bool(torch.isfinite(tr.buffer.samples).all())):
            self.diverged_at = it + 1

    @property
    def finite(self) -> bool:
        return self.diverged_at is None


def as_run(tr):
    """The trainer's model, p0 and buffer as an evaluation :class:`~fastebm.evaluation.Run` (nothing copied but
    the buffer), so that the bench scores with the evaluation task's own functions."""
    from fastebm.evaluation import Run

    return Run(tr.cfg, tr.model, tr.p0, tr.buffer.samples.detach().cpu(), tr.device, "(in memory)", 0)


class Session:
    """Everything the quality benchmark trains and measures (built once per pytest session by :meth:`run`)."""

    def __init__(self, say):
        self.say = say
        self.runs: dict[str, list[QualityRun]] = {}
        self.t_start = time.perf_counter()
        self.load = [os.getloadavg()]

    def run(self) -> Session:
        from fastebm.data.datasets import load_dataset
        from fastebm.evaluation.featurenet import FeatureScore, train_feature_net

        self.train = load_dataset("digits", split="train", image_size=IMAGE_SIZE)
        self.test = load_dataset("digits", split="test", image_size=IMAGE_SIZE)
        t0 = time.perf_counter()
        self.net = train_feature_net(self.train, epochs=FEATURE_EPOCHS, seed=0, test=self.test)
        self.score = FeatureScore(self.net, self.test.images)
        self.floor = self.score.fd(self.train.images)
        self.say(f"feature network: {time.perf_counter() - t0:.1f} s, test accuracy "
                 f"{self.net.meta['test_accuracy']:.3f}; feature-FD of the training split {self.floor:.1f}")
        self._build()
        self._train()
        self._score()
        self.load.append(os.getloadavg())
        self.wall = time.perf_counter() - self.t_start
        return self

    def _build(self) -> None:
        from fastebm.config.options import resolve
        from fastebm.run.trainer import Trainer

        out = tempfile.mkdtemp(prefix="fastebm-quality-")
        for label, over in CONFIGS.items():
            self.runs[label] = []
            for seed in SEEDS:
                cfg = resolve(dict(dataset="digits", image_size=IMAGE_SIZE, device=C.DEVICE, seed=seed, epochs=1,
                                   iters_per_epoch=ITERS, decay_epochs=[], buffer_size=BUFFER, progress=False,
                                   out=os.path.join(out, f"{label}-s{seed}"), **flags_of(label), **over))
                tr = Trainer(cfg, self.train, self.test)
                tr.model.train()
                self.runs[label].append(QualityRun(label, seed, tr))
        self.say(f"built {sum(map(len, self.runs.values()))} runs ({len(CONFIGS)} configurations × seeds "
                 f"{', '.join(map(str, SEEDS))}), {ITERS} iterations each")

    def _train(self) -> None:
        runs = [r for rs in self.runs.values() for r in rs]
        every = max(1, ITERS // CURVE_POINTS)
        for r in runs:  # iteration 0: the buffer as p0 filled it
            if r.label != "classifier":
                r.curve.append((0, 0.0, self.score.fd(r.trainer.buffer.samples)))
        t0 = time.perf_counter()
        for it in range(ITERS):
            shift = it % len(runs)
            for r in runs[shift:] + runs[:shift]:
                if r.finite:
                    r.step(it)
            if (it + 1) % every == 0 or it + 1 == ITERS:
                for r in runs:
                    if r.finite and r.label != "classifier":
                        r.curve.append((it + 1, sum(r.times), self.score.fd(r.trainer.buffer.samples)))
                k2 = [r.curve[-1][2] for r in self.runs["mebm-k2"] if r.curve]
                self.say(f"iteration {it + 1}/{ITERS}, {time.perf_counter() - t0:.0f} s, load "
                         f"{os.getloadavg()[0]:.1f}; buffer feature-FD of M-EBM K=2: "
                         f"{', '.join(f'{v:.1f}' for v in k2)}")

    def _score(self) -> None:
        from fastebm.evaluation import sample_chains
        from fastebm.evaluation.featurefd import sample_scores

        t0 = time.perf_counter()
        for label, rs in self.runs.items():
            for r in rs:
                tr = r.trainer
                s = {"test_acc": tr.evaluate().get("test_acc"), "drift": max(abs(e) for e in r.e_pos)}
                if label != "classifier" and r.finite:
                    run = as_run(tr)
                    s["buffer"] = sample_scores(run, self.score, run.buffer, 500, self.test.images)
                    with torch.random.fork_rng(devices=[tr.device] if tr.device.type == "cuda" else []):
                        torch.manual_seed(r.seed)
                        chains = sample_chains(run, CHAINS, tr.cfg.k, tr.cfg.batch_size, desc=f"{label} chains")
                    s["chains"] = sample_scores(run, self.score, chains, 500)
                r.scores = s
        self.say(f"scored every run in {time.perf_counter() - t0:.0f} s")

    # ------------------------------------------------------------------ figures of the runs
    def values(self, label: str, what) -> list[float]:
        """``what(run)`` of every finite seed of ``label`` (None values left out)."""
        vals = [what(r) for r in self.runs[label] if r.finite]
        return [float(v) for v in vals if v is not None]

    def s_per_iter(self, label: str) -> float:
        """Median seconds per training iteration over every seed's iterations (interleaved)."""
        return float(statistics.median(t for r in self.runs[label] for t in r.times))

    def fd(self, label: str, source: str = "buffer") -> list[float]:
        return self.values(label, lambda r: r.scores.get(source, {}).get("feature_fd"))

    def accuracy(self, label: str) -> list[float]:
        return self.values(label, lambda r: r.scores.get("test_acc"))

    def drift(self, label: str) -> list[float]:
        return self.values(label, lambda r: r.scores.get("drift"))

    def start_fd(self, label: str) -> list[float]:
        """Buffer feature-FD at iteration 0 (p0's samples) of every finite seed."""
        return self.values(label, lambda r: r.curve[0][2] if r.curve else None)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value) of the seeds' values."""
    if not values:
        return float("nan"), float("nan")
    return float(statistics.fmean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0


def two_se(a: list[float], b: list[float]) -> float:
    """Two standard errors of the difference of the means of ``a`` and ``b`` (seeds), sqrt(s_a²/n_a + s_b²/n_b)·2:
    the run-to-run spread a claim's margin is stated in."""
    return 2.0 * (mean_sd(a)[1] ** 2 / len(a) + mean_sd(b)[1] ** 2 / len(b)) ** 0.5


def fmt(values: list[float], digits: int = 1) -> str:
    """``mean ± sd`` of the seeds' values (``-`` for none)."""
    if not values:
        return "-"
    m, s = mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def progress(request):
    """A function printing one progress line on the terminal while pytest captures output (``-s`` not needed)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        with capman.global_and_fixture_disabled():
            sys.stderr.write(f"\n[quality] {line}")
            sys.stderr.flush()

    return say


def figure(session: Session, path: str) -> str:
    """The PNG at ``path``: the first seed's buffer samples (8×8) of every generative configuration side by side,
    then the buffer feature-FD against seconds of training of every configuration (the mean over seeds at each
    point; the paper's Fig. 2(b) in miniature). Needs matplotlib (the plots extra)."""
    from fastebm.data.imagefiles import make_grid
    from fastebm.data.imageset import to_uint8
    from fastebm.evaluation.metrics import pyplot

    plt = pyplot()
    labels = [label for label in GENERATIVE if session.runs[label][0].finite]
    fig = plt.figure(figsize=(2.0 * len(labels), 6.4))
    grid = fig.add_gridspec(2, len(labels), height_ratios=[1, 1.6])
    for i, label in enumerate(labels):
        ax = fig.add_subplot(grid[0, i])
        x = session.runs[label][0].trainer.buffer.samples[:64].cpu()
        ax.imshow(make_grid(to_uint8(x), nrow=8, pad_value=255).permute(1, 2, 0).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{label}\nbuffer FD {fmt(session.fd(label))}", fontsize=7)
    ax = fig.add_subplot(grid[1, :])
    for label in labels:
        curves = [r.curve for r in session.runs[label] if r.finite and r.curve]
        n = min(map(len, curves))
        ax.plot([statistics.fmean(c[j][1] for c in curves) for j in range(n)],
                [statistics.fmean(c[j][2] for c in curves) for j in range(n)], marker="o", label=label)
    ax.axhline(session.floor, color="k", linestyle=":", label="training split (real images)")
    ax.set(xlabel="seconds of training (sum of this configuration's iterations, interleaved, 1 CPU thread)"
           if not C.CUDA else "seconds of training", ylabel="buffer feature-FD vs test split (log)", yscale="log")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"digits {IMAGE_SIZE}×{IMAGE_SIZE}, WRN-10-1, {ITERS} iterations, seeds "
                 f"{', '.join(map(str, SEEDS))} (feature-FD: a small CNN's feature space, not FID)", fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
