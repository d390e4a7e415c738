"""The paper's claims in miniature: does the engine *learn* what the paper says, at a scale one CPU thread runs in
minutes? (Yang & Ji, M-EBM, Sections 4–5, Tables 1–3 and 6, Figs. 2 and 4.)

Every configuration trains for the same iterations on the embedded digits at 16×16 with WRN-10-1, with the same
seeds, interleaved (bench/_quality.py: sizes, scores, timing). Sample quality is the **feature-FD**: the Fréchet
distance to the test split in the feature space of a small CNN trained on the training split
(:mod:`fastebm.evaluation.featurenet`; no Inception weights are needed, and it is not FID).

The claims, each a test whose margin is stated in the seeds' run-to-run spread: ``2SE`` = two standard errors of
the difference of the two means, 2·sqrt(s_a²/n + s_b²/n), over the seeds (3 full, 2 small):

0. training works: M-EBM K = 2's buffer feature-FD at the end is below its start (p0's samples) by more than 2SE
   (what a buffer written back wrong, a sign flipped in a branch or a fast path drifting over hundreds of steps
   would break while every formula's unit test passes);
1. informative p0 (Eq. 6) beats uniform p0 at K = 2: mean buffer feature-FD lower by more than 2SE, and the worst
   informative seed below the best uniform one (the reason M-EBM exists);
   with the informative p0, K = 1, 2, 5 train stably (every seed finite) and samples improve with K: K = 5's mean
   buffer feature-FD below K = 1's by more than 2SE (paper Table 1: FID 35.7 / 27.1 / 22.7);
2. M-EBM K = 2 reaches JEM K = 20's sample quality (paper Tables 1, 3: FID 27.1 vs 38.4): mean buffer feature-FD at
   most JEM's + 2SE, in at most 1/3 of JEM's time per iteration (Table 6: 4.87× faster; interleaved medians);
3. M-JEM K = 5's test accuracy is close to the classifier's alone (``--px-weight 0``, same network and batches):
   mean gap at most the paper's 2.7 points (Table 3: 93.1 vs 95.8) + 2SE;
4. the L2 term on the energy (Eq. 8) keeps energies bounded (Fig. 4(b)): the largest |batch-mean E(x+)| over the
   run is larger without it (``--l2 0``) by more than 2SE;
5. the fast path (CUDA: ``fast_flags('cuda')``; CPU: ``--compile default``) reaches the plain path's quality:
   mean buffer feature-FDs within 2SE of each other.

A claim that does not hold at this scale is marked xfail (:data:`NOT_AT_THIS_SCALE`) with the figures measured
when that was found and why; the test still computes and prints its figures, and an XPASS says it held this time.

Run: ``python -m pytest bench/test_quality.py --benchmark-only`` (full, ≤ 20 min on one CPU thread) or with
``FASTEBM_BENCH_SIZE=small`` (≤ 3 min). The table is printed at the end; the figure (sample grids, feature-FD
against seconds of training) and a JSON of every figure go to ``FASTEBM_QUALITY_OUT`` (default
``.benchmarks/quality/``). CIFAR-10 is not part of it: at 32×32 an iteration costs 4× a 16×16 one and the 27 runs
would not fit the 20 minutes of one CPU thread.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from bench import _common as C
from bench import _quality as Q

SIZE = "small" if Q.SMALL else "full"
OUT = os.environ.get("FASTEBM_QUALITY_OUT", os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                                         ".benchmarks", "quality"))
PAPER_ACC_GAP = 0.958 - 0.931  # paper Table 3: softmax classifier 95.8 %, M-JEM (K = 5) 93.1 %
TIME_FRACTION = 1 / 3  # of JEM K = 20's iteration (the issue's bound; Table 6 gives 1/4.87)

_SHORT = ("small: after 60 iterations each of the buffer's 500 chains has been continued about 4 times (60 x 32 / 500) "
          "and the model has had 48 iterations past its warm-up; the buffer is still mostly p0's samples")
# claim -> size -> why it is expected not to hold at that size, with the figures measured when that was found
NOT_AT_THIS_SCALE: dict[str, dict[str, str]] = {
    "training improves the samples (M-EBM K=2)": {
        "small": f"{_SHORT} (measured 2026-12-04: buffer feature-FD 74.4 at iteration 0, 72.2 at 60, 2SE 11.5)"},
    "samples improve with K (M-EBM K=1 -> 5)": {
        "small": f"{_SHORT} (measured 2026-12-04: K=1 73.1, K=2 72.2, K=5 74.5, 2SE 10.9)",
        "full": "the means fall with K as the paper's FIDs do (measured 2026-12-04: buffer feature-FD 29.2 / 24.6 / "
                "23.0 for K = 1 / 2 / 5; Table 1: 35.7 / 27.1 / 22.7), but K=1 and K=5 differ by 6.2, inside 2SE 6.9 "
                "(seeds 25.7 / 33.5 / 28.3 vs 19.1 / 21.9 / 27.9): in 240 iterations every K's buffer comes close to "
                "the same quality, and 3 seeds do not separate them"},
    "L2 keeps energies bounded (M-EBM K=2)": {
        "small": "small: in 60 iterations the energies without L2 have not drifted far yet (measured 2026-12-04: "
                 "largest |batch-mean E(x+)| 1.26 without L2 vs 0.37 with it, a difference of 0.89 inside 2SE 1.02)",
        "full": "every seed without L2 drifts further than every seed with it (measured 2026-12-04: largest "
                "|batch-mean E(x+)| 2.3 / 7.1 / 14.1 vs 1.3 / 1.3 / 1.5), but the drift without L2 is erratic "
                "(sd 5.9) and the mean difference 6.4 stays inside 2SE 6.8"},
}


@pytest.fixture(scope="session")
def quality(request):
    """Train and score every configuration × seed (bench/_quality.py), write the figure and the JSON, fill the
    summary table. Returns the :class:`~bench._quality.Session`."""
    s = Q.Session(Q.progress(request)).run()
    sec = C.summary_section(
        f"Quality in miniature (digits {Q.IMAGE_SIZE}x{Q.IMAGE_SIZE}, WRN-10-1, batches 32/64, {Q.ITERS} iterations, "
        f"seeds {', '.join(map(str, Q.SEEDS))}; mean ± sd over seeds)",
        ["config", "s/iter", "buffer feature-FD", "chains feature-FD", "classifiability", "confidence", "test acc",
         "E(x+)", "E(x-)", "gap", "max |E(x+)|", "finite"])
    for label, runs in s.runs.items():
        def col(source, key, digits=2, runs=runs):
            return Q.fmt([r.scores[source][key] for r in runs if source in r.scores
                          and r.scores[source].get(key) is not None], digits)
        finite = sum(r.finite for r in runs)
        sec["rows"].append([label, f"{s.s_per_iter(label):.3f}", Q.fmt(s.fd(label)), Q.fmt(s.fd(label, "chains")),
                            col("buffer", "agreement"), col("buffer", "confidence"), Q.fmt(s.accuracy(label), 3),
                            col("buffer", "e_pos"), col("buffer", "e_neg"), col("buffer", "energy_gap"),
                            Q.fmt(s.drift(label), 2),
                            f"{finite}/{len(runs)}" + ("" if finite == len(runs) else " (diverged at " + ", ".join(
                                str(r.diverged_at) for r in runs if not r.finite) + ")")])
    sec["notes"] += [
        f"feature-FD: Fréchet distance to the {len(s.test)} test images in a small CNN's feature space (not FID); "
        f"the feature network's test accuracy {s.net.meta['test_accuracy']:.3f}; the training split scores "
        f"{s.floor:.1f} (real images), the informative p0's samples {Q.mean_sd(s.start_fd('mebm-k2'))[0]:.1f} and "
        f"uniform noise {Q.mean_sd(s.start_fd('mebm-k2-uniform'))[0]:.0f} (the buffers at iteration 0).",
        f"buffer: the whole replay buffer ({Q.BUFFER}); chains: {Q.CHAINS} fresh chains of the run's K steps from p0; "
        "classifiability: the feature network's agreement with the model's predicted classes on the buffer "
        "(classifier models); confidence: its mean max_y p(y|x) on the buffer.",
        "E(x+): test split, E(x-): buffer, gap = E(x-) - E(x+) (energies low = likely); max |E(x+)|: largest "
        "|batch-mean E(x+)| over the run. s/iter: median of the interleaved iterations of every seed.",
        f"wall {s.wall / 60:.1f} min; 1-minute load {s.load[0][0]:.1f} at the start, {s.load[-1][0]:.1f} at the end; "
        f"torch threads {torch.get_num_threads()}, CPU capability {torch.backends.cpu.get_cpu_capability()}.",
    ]
    os.makedirs(OUT, exist_ok=True)
    png = Q.figure(s, os.path.join(OUT, f"quality-{SIZE}.png"))
    with open(os.path.join(OUT, f"quality-{SIZE}.json"), "w") as f:
        json.dump({"size": SIZE, "iters": Q.ITERS, "seeds": Q.SEEDS, "floor": s.floor, "wall_s": s.wall,
                   "load": s.load, "runs": {label: [dict(seed=r.seed, s_per_iter=C.median(r.times),
                                                         diverged_at=r.diverged_at, curve=r.curve,
                                                         **{k: v for k, v in r.scores.items() if k != "chains"},
                                                         chains={k: v for k, v in r.scores.get("chains", {}).items()})
                                                    for r in runs] for label, runs in s.runs.items()}},
                  f, indent=1, default=lambda o: None)
    sec["notes"].append(f"figure: {png}")
    return s


def _claim(request, benchmark, name: str, figures: dict) -> None:
    """Mark the claim xfail where :data:`NOT_AT_THIS_SCALE` says so, time the look-up of its figures (the
    benchmark fixture, so that ``--benchmark-only`` runs it) and record them in extra_info and the summary."""
    why = NOT_AT_THIS_SCALE.get(name, {}).get(SIZE)
    if why:
        request.node.add_marker(pytest.mark.xfail(reason=why, strict=False))
    benchmark.group = "quality-claims"
    benchmark.pedantic(lambda: dict(figures), rounds=1, iterations=1)
    benchmark.extra_info.update(claim=name, size=SIZE, **figures)
    C.summary_section("Quality claims (margins: 2SE = two standard errors of the difference over the seeds)",
                      ["claim", "figures"])["rows"].append(
        [name, "; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())])


@pytest.mark.parametrize("label", list(Q.CONFIGS))
def test_configuration(benchmark, quality, label):
    """One more training iteration of the configuration (seed 1), timed alone; every figure in extra_info. The
    informative-p0 configurations train stably: every seed finite (claim 1)."""
    runs = quality.runs[label]
    r = runs[0]
    benchmark.group = "quality-iteration"
    if r.finite:
        benchmark.pedantic(lambda: r.step(Q.ITERS), rounds=1, iterations=1)
    else:
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(label=label, s_per_iter=quality.s_per_iter(label), buffer_fd=quality.fd(label),
                                chains_fd=quality.fd(label, "chains"), test_acc=quality.accuracy(label),
                                drift=quality.drift(label), diverged_at=[x.diverged_at for x in runs])
    if label in ("mebm-k1", "mebm-k2", "mebm-k5", "mebm-k2-fast", "mjem-k5", "classifier"):
        assert all(x.finite for x in runs), f"{label}: diverged at {[x.diverged_at for x in runs]}"


def _claim_lower(request, benchmark, name: str, low: tuple, high: tuple, what: str, digits: int = 1) -> None:
    """The claim that ``low``'s seeds (label, values) sit below ``high``'s by more than two standard errors of
    the difference; ``what`` names the measure in the failure message."""
    (low_name, lo), (high_name, hi) = low, high
    margin = Q.two_se(lo, hi)
    _claim(request, benchmark, name, {low_name: Q.mean_sd(lo)[0], high_name: Q.mean_sd(hi)[0], "2SE": margin})
    assert Q.mean_sd(hi)[0] - Q.mean_sd(lo)[0] > margin, (
        f"{what}: {low_name} {Q.fmt(lo, digits)}, {high_name} {Q.fmt(hi, digits)} (2SE {margin:.2f})")


def test_claim_training_improves_the_samples(request, benchmark, quality):
    _claim_lower(request, benchmark, "training improves the samples (M-EBM K=2)",
                 ("FD end", quality.fd("mebm-k2")), ("FD start (p0)", quality.start_fd("mebm-k2")),
                 f"buffer feature-FD of M-EBM K=2 at iteration {Q.ITERS} and 0")


def test_claim_informative_p0_beats_uniform_at_k2(request, benchmark, quality):
    good, bad = quality.fd("mebm-k2"), quality.fd("mebm-k2-uniform")
    margin = Q.two_se(good, bad)
    _claim(request, benchmark, "informative p0 beats uniform p0 (K=2)",
           {"FD informative": Q.mean_sd(good)[0], "FD uniform": Q.mean_sd(bad)[0], "2SE": margin})
    if not bad:  # uniform p0 diverged on every seed: the informative p0 wins
        return
    assert Q.mean_sd(bad)[0] - Q.mean_sd(good)[0] > margin and max(good) < min(bad), (
        f"buffer feature-FD informative {Q.fmt(good)} vs uniform {Q.fmt(bad)} (2SE {margin:.2f})")


def test_claim_samples_improve_with_k(request, benchmark, quality):
    k1, k2, k5 = (quality.fd(f"mebm-k{k}") for k in (1, 2, 5))
    margin = Q.two_se(k1, k5)
    _claim(request, benchmark, "samples improve with K (M-EBM K=1 -> 5)",
           {"FD K=1": Q.mean_sd(k1)[0], "FD K=2": Q.mean_sd(k2)[0], "FD K=5": Q.mean_sd(k5)[0], "2SE": margin})
    assert Q.mean_sd(k1)[0] - Q.mean_sd(k5)[0] > margin, (
        f"buffer feature-FD K=1 {Q.fmt(k1)}, K=2 {Q.fmt(k2)}, K=5 {Q.fmt(k5)} (2SE K=1 vs K=5 {margin:.2f})")


def test_claim_mebm_k2_matches_jem_k20_in_a_third_of_the_time(request, benchmark, quality):
    mebm, jem = quality.fd("mebm-k2"), quality.fd("jem-k20")
    t_mebm, t_jem = quality.s_per_iter("mebm-k2"), quality.s_per_iter("jem-k20")
    margin = Q.two_se(mebm, jem) if jem else float("nan")
    _claim(request, benchmark, "M-EBM K=2 matches JEM K=20 in <= 1/3 of its time",
           {"FD M-EBM K=2": Q.mean_sd(mebm)[0], "FD JEM K=20": Q.mean_sd(jem)[0], "2SE": margin,
            "time ratio": t_mebm / t_jem})
    assert t_mebm <= TIME_FRACTION * t_jem, f"s/iter M-EBM K=2 {t_mebm:.3f} vs JEM K=20 {t_jem:.3f}"
    if jem:  # JEM diverged on every seed: M-EBM wins
        assert Q.mean_sd(mebm)[0] <= Q.mean_sd(jem)[0] + margin, (
            f"buffer feature-FD M-EBM K=2 {Q.fmt(mebm)} vs JEM K=20 {Q.fmt(jem)} (2SE {margin:.2f})")


def test_claim_mjem_accuracy_near_the_classifier(request, benchmark, quality):
    mjem, cls = quality.accuracy("mjem-k5"), quality.accuracy("classifier")
    margin = PAPER_ACC_GAP + Q.two_se(mjem, cls)
    gap = Q.mean_sd(cls)[0] - Q.mean_sd(mjem)[0]
    _claim(request, benchmark, "M-JEM K=5 accuracy near the classifier's",
           {"acc M-JEM": Q.mean_sd(mjem)[0], "acc classifier": Q.mean_sd(cls)[0], "gap": gap, "allowed": margin})
    assert gap <= margin, (f"test accuracy M-JEM K=5 {Q.fmt(mjem, 3)} vs classifier {Q.fmt(cls, 3)}: gap {gap:.3f} > "
                           f"{PAPER_ACC_GAP:.3f} (paper) + 2SE")


def test_claim_l2_keeps_energies_bounded(request, benchmark, quality):
    _claim_lower(request, benchmark, "L2 keeps energies bounded (M-EBM K=2)",
                 ("max|E+| with L2", quality.drift("mebm-k2")), ("max|E+| without", quality.drift("mebm-k2-no-l2")),
                 "largest |batch-mean E(x+)|", digits=2)


def test_claim_fast_path_reaches_the_plain_quality(request, benchmark, quality):
    plain, fast = quality.fd("mebm-k2"), quality.fd("mebm-k2-fast")
    margin = Q.two_se(plain, fast)
    active = quality.runs["mebm-k2-fast"][0].trainer.fast.active()
    _claim(request, benchmark, "fast path reaches the plain quality (M-EBM K=2)",
           {"FD plain": Q.mean_sd(plain)[0], "FD fast": Q.mean_sd(fast)[0], "2SE": margin,
            "speed fast/plain": quality.s_per_iter("mebm-k2") / quality.s_per_iter("mebm-k2-fast"),
            "fast components": ", ".join(k for k, v in active.items() if v not in (False, None, "off")) or "none"})
    assert any(v not in (False, None, "off") for v in active.values()), f"no fast component stayed on: {active}"
    assert abs(Q.mean_sd(fast)[0] - Q.mean_sd(plain)[0]) <= margin, (
        f"buffer feature-FD fast {Q.fmt(fast)} vs plain {Q.fmt(plain)} (2SE {margin:.2f})")
