"""Shared helpers of the benchmark suite: device and sizes, timing, FLOP counting, the summary table.

Sizes by device (``SIZES``):

- CUDA: the paper's setting, WRN-28-10 at 32×32, p(x) batch 64, classifier batch 128, buffer 10,000
  (2,000 real CIFAR-10 JPEGs, 200 per class: decoding all 50,000 would cost the GPU check a minute).
- CPU: WRN-10-1 at 32×32 (real CIFAR-10 JPEGs, 50 per class), the paper's batches 64 / 128, buffer 1,000
  (the buffer size does not enter the iteration cost), one intra-op thread (the 2-core machine is shared;
  with 2 threads on oversubscribed cores OpenMP barriers made iterations 3–4× slower and far noisier). Override the CPU
  sizes with FASTEBM_BENCH_SIZE=full (the CUDA sizes) if you have time.

Timing: CUDA is synchronized after every timed call. The epoch-speed and engine-speed benchmarks measure
all their configurations *interleaved* (round r runs one iteration of every configuration, in a rotating
order) so that a change of machine load hits all configurations alike; the ratios come from those
medians. Each parametrized test then also times its configuration alone with pytest-benchmark's
``benchmark.pedantic`` (for the JSON/history); both medians are in ``extra_info``.

Environment knobs: FASTEBM_BENCH_SIZE=full (paper sizes on CPU), FASTEBM_BENCH_THREADS (CPU threads, 1),
FASTEBM_BENCH_FLAGS=fast (epoch-speed runs with fast_flags(device) instead of plain_flags()),
FASTEBM_BENCH_CPU_FACTOR (the CPU speedup assertion factor, 0.5), FASTEBM_CIFAR_JPG (data folder).
"""
from __future__ import annotations

import atexit
import os
import shutil
import statistics
import tempfile
import time

import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
FULL = CUDA or os.environ.get("FASTEBM_BENCH_SIZE", "") == "full"

SIZES = (dict(depth=28, width=10, batch_size=64, cls_batch_size=128, buffer_size=10_000, max_per_class=200)
         if FULL else
         dict(depth=10, width=1, batch_size=64, cls_batch_size=128, buffer_size=1_000, max_per_class=50))

ITERS_PER_EPOCH = 390  # the paper's epochs: 50,000 / 128
H200_BF16_PEAK_TFLOPS = 990.0  # dense bf16 spec of the H200 SXM (no sparsity)
CIFAR_JPG = os.environ.get("FASTEBM_CIFAR_JPG", os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpg")))


def device_peak_tflops() -> float | None:
    """Dense bf16 peak of the CUDA device in TFLOP/s, when known (H100/H200: 990); None otherwise."""
    if not CUDA:
        return None
    name = torch.cuda.get_device_name()
    if "H200" in name or "H100" in name:
        return H200_BF16_PEAK_TFLOPS
    return None


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed(fn, *args):
    """Wall time of one call of fn(*args) (CUDA synchronized before and after)."""
    sync()
    t0 = time.perf_counter()
    out = fn(*args)
    sync()
    return time.perf_counter() - t0, out


def interleaved_medians(steps: dict, rounds: int, warmup: int) -> dict:
    """Run every ``steps[name]()`` ``warmup`` times, then ``rounds`` rounds of one call each, the order
    rotated every round; returns name → list of wall times (seconds) of the measured rounds."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            timed(steps[n])
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            dt, _ = timed(steps[n])
            times[n].append(dt)
    return times


def median(xs) -> float:
    return float(statistics.median(xs))


def bench_median(benchmark) -> float | None:
    """Median seconds of the pytest-benchmark run just done (None when benchmarks are disabled)."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    return None if stats is None else float(stats.median)


# ---------------------------------------------------------------------------------------------- FLOPs
class _GlobalOnlyTracker:
    """Stand-in for FlopCounterMode's module tracker: attributes every FLOP to 'Global'.

    FlopCounterMode's ModuleTracker installs multi-grad hooks that raise inside
    ``torch.autograd.grad(E(x).sum(), x)`` with a leaf x ("A leaf node was passed to
    _will_engine_execute_node but we are currently running autograd.grad()"), which is exactly what SGLD
    does; per-module attribution is not needed here, only the total.
    """

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def count_flops(fn, *args) -> int:
    """Total FLOPs (torch.utils.flop_counter.FlopCounterMode: matmul/conv/… forward and backward) of fn(*args).

    Replaces the counter's ``mod_tracker`` (not public API; present with the same role in torch 2.11 and
    2.14, checked on both by tests/test_bench_flops.py, which CI runs on each)."""
    from torch.utils.flop_counter import FlopCounterMode

    fc = FlopCounterMode(display=False)
    if hasattr(fc, "mod_tracker"):
        fc.mod_tracker = _GlobalOnlyTracker()
    with fc:
        fn(*args)
    return int(fc.get_total_flops())


def forward_flops_per_image(model, image_size: int, device) -> float:
    """FLOPs of one forward pass of one image through the backbone + heads (batch of 8, divided by 8)."""
    x = torch.zeros(8, 3, image_size, image_size, device=device)
    was = model.training
    model.eval()
    with torch.no_grad():
        f = count_flops(model, x)
    model.train(was)
    return f / 8


# ---------------------------------------------------------------------------------------------- data
_DATA = {}


def cifar_root() -> str | None:
    """The CIFAR-10 JPEG folder the bench reads (with ``train/``), None where absent (digits instead)."""
    for root in (CIFAR_JPG, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         "shared", "data", "cifar10-jpg")):
        if os.path.isdir(os.path.join(root, "train")):
            return root
    return None


def cifar_train():
    """Real CIFAR-10 training JPEGs (``max_per_class`` by device), loaded once per session.

    Fallback when the JPEGs are not there (FASTEBM_CIFAR_JPG, ../shared/data/cifar10-jpg or
    ./shared/data/cifar10-jpg): scikit-learn's bundled digits at 32×32 (same tensor shapes, so the same
    timings up to data loading); ``DATA_NAME`` says which was used and the summary reports it.
    """
    global DATA_NAME
    if "train" not in _DATA:
        from fastebm.data.datasets import load_dataset

        root = cifar_root()
        if root is not None:
            _DATA["train"] = load_dataset("folder", root, "train", max_per_class=SIZES["max_per_class"])
            DATA_NAME = f"CIFAR-10 JPEGs ({len(_DATA['train'])} images from {root})"
        else:
            _DATA["train"] = load_dataset("digits", split="train")
            DATA_NAME = "digits at 32x32 (CIFAR-10 JPEGs not found)"
    return _DATA["train"]


DATA_NAME = "not loaded"


_RUN_DIR = tempfile.mkdtemp(prefix="fastebm-bench-")  # run folder (p0 cache) of every Trainer, removed at exit
atexit.register(shutil.rmtree, _RUN_DIR, ignore_errors=True)


def make_trainer(model: str, k: int, flags: dict | None = None, **extra):
    """A :class:`fastebm.run.trainer.Trainer` at the bench sizes. ``flags``: fast-path flags (plain when None).

    The p0 cache (``p0.pt``) is shared by all runs of the session, so the full-covariance fit is done once.
    """
    from fastebm.config.options import plain_flags, resolve
    from fastebm.run.trainer import Trainer

    over = dict(dataset="folder", model=model, k=k, device=DEVICE, out=_RUN_DIR, progress=False,
                depth=SIZES["depth"], width=SIZES["width"], batch_size=SIZES["batch_size"],
                buffer_size=SIZES["buffer_size"])
    if model not in ("jem", "jempp"):  # JEM's and JEM++'s labelled batch is their p(x) batch (config.resolve)
        over["cls_batch_size"] = SIZES["cls_batch_size"]
    over.update(plain_flags() if flags is None else flags)
    over.update(extra)
    cfg = resolve(over)
    tr = Trainer(cfg, cifar_train())
    tr.model.train()
    return tr


class TrainStep:
    """Callable: one full training iteration ``Trainer.train_step(it)`` with the lr schedule of ``fit``
    (warm-up, so the short benchmark stays in the stable regime) and an advancing iteration counter."""

    def __init__(self, trainer):
        self.trainer, self.it, self.last = trainer, 0, None

    def __call__(self):
        from fastebm.run.trainer import lr_at

        for g in self.trainer.opt.param_groups:
            g["lr"] = lr_at(self.trainer.cfg, self.it)
        self.last = self.step(self.it)
        self.it += 1
        return self.last

    def step(self, it: int) -> dict:
        return self.trainer.train_step(it)

    def finite(self) -> bool:
        return self.last is None or bool(torch.isfinite(self.last["loss"]))


# ---------------------------------------------------------------------------------------------- memory
_RSS_SCRIPT = r"""
import json, os, sys, threading, time, torch
torch.set_num_threads(1)
from fastebm.p0.gaussian import fit_gaussian
side, n, form = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(side))
fit_gaussian(torch.randint(0, 256, (16, 3, 4, 4), dtype=torch.uint8), form=form, rank=4)  # first-call setup, tiny D
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
base = peak = rss()
stop = threading.Event()
def sample():
    global peak
    while not stop.is_set():
        peak = max(peak, rss())
        time.sleep(0.002)
th = threading.Thread(target=sample, daemon=True)
th.start()
t0 = time.perf_counter()
fit_gaussian(images, form=form, rank=100, device="cpu")
dt = time.perf_counter() - t0
stop.set(); th.join()
peak = max(peak, rss())
print(json.dumps({"growth_bytes": peak - base, "s": dt}))
"""


def fit_peak_rss_subprocess(side: int, n: int, form: str) -> dict:
    """Peak-RSS growth (bytes) of one CPU ``fit_gaussian`` in a fresh process: resident set sampled from
    /proc/self/statm every 2 ms during the fit, minus the RSS just before it. In a fresh process the heap
    holds no freed multi-MB chunks from earlier benchmarks (which the fit would reuse without any RSS growth;
    ru_maxrss does not work either: importing torch sets a higher high-water mark than a 3k fit)."""
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(side), str(n), form], env=env, cwd=root,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- summary
SUMMARY: dict[str, dict] = {}  # section title → {"header": [...], "rows": [...], "notes": [...]}


def summary_section(title: str, header: list[str]) -> dict:
    return SUMMARY.setdefault(title, {"header": header, "rows": [], "notes": []})


def format_table(header, rows) -> list[str]:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]]
