"""The paper's rows, one record each, so that a run can be set beside the row it reproduces.

Source of every number: Yang & Ji, "M-EBM: Towards Understanding the Manifolds of Energy-Based Models"
(PAKDD 2023, arXiv 2303.04343), read from the text extracted from its PDF (the tables there are flattened;
each value below was read off its table row and checked against the row's neighbours):

- Table 1: IS / FID of M-EBM on CIFAR-10 (K = 1, 2, 5, 10, 20) and of other generative models.
- Table 2: FID of M-EBM on CIFAR-100, CelebA-HQ 128 and ImageNet 32×32, and of other models.
- Table 3: accuracy / IS / FID of M-JEM on CIFAR-10 (K = 1, 2, 5, 10, 20) and other hybrid models.
- Table 4: the same on CIFAR-100 (M-JEM K = 1, 2, 5, 10; JEM K = 20, 30; ...).
- Table 6 (Appendix B): minutes per epoch on CIFAR-10, "on a single Titan GPU" (the exact Titan model is
  not named), one epoch = 390 iterations for every model (the JEM baseline included), p(x) batch 64; and its
  "Other" block, the training cost of five other methods as printed (``compute``).
- Fig. 2(b) (M-JEM against LSE-JEM on CIFAR-100) and Fig. 4(a) / 4(b) (t-SNE of CIFAR-10 models): the
  runs behind them. Their numbers are only in the plots, which the text does not carry: None here.

A :class:`PaperRow` with ``settings`` is a run fastebm can train: ``settings`` are the
:class:`fastebm.config.options.Config` fields the paper states for that row (model, dataset, K, the WRN of Appendix A,
the learning rate of Appendix A, the batches of Section 5, the informative p0 of Eq. 6, no injected data noise, Sections
3.2 and 4.1), and ``argv`` is the shortest ``python -m fastebm.train`` command line that resolves to them.
Settings the paper does not fix (λ, whose value Table 5 does not list; σ at K ≤ 2, where Table 5 and the
authors' scripts differ; the number of epochs, 200 in Table 5 and "150 at most" in Section 5) are left
out, so either choice matches the row. A row with ``settings=None`` is another method's result, printed for
comparison; ``needs`` says what fastebm would need to train it. ``ours=True`` marks a row that fastebm's
documentation offers but the paper does not have: it carries no paper numbers.

A runnable row also holds ``code``: the settings the paper does not state that the authors' code of a named
commit (``code_source``) fixes: the L2 form, BatchNorm momentum and mode, precision. :func:`match` ignores them
(fastebm's defaults differ there on purpose, docs/recipes.md); ``python -m fastebm.train --paper KEY`` sets them
with the row's settings (:func:`pinned_by`), and :func:`differences` / :func:`beside` name each one a run does not
hold, so that a run of a row's command is told which of its settings are not the authors'.

Accuracy is stored as a fraction in [0, 1] (the paper prints percent); IS and FID as printed; a value the
text does not give ("-" in a table, or not readable from the flattened text) is None, and the row's
``footnote`` says which.

The paper does not say how its FID / IS were computed. The authors' code (github sndnyang/mebm) evaluates
the replay buffer filtered per predicted class: ``train_maebm.py`` scores the FID of the most confident 90 % per
class and the IS of the most confident 10 % when p(y|x) is trained (M-JEM; 90 % otherwise, M-EBM ranked by its
untrained classifier head), and its README reports a CIFAR-10 model at ratio 0.9 (``Task/eval_buffer.py``
``cond_is_fid``). fastebm does the same for
classifier models: in training FID of 90 % and IS of 10 % (``--fid-keep-ratio``, ``--is-keep-ratio``; after the
first epoch, every ``--fid-every`` and the last, as the authors' loop) and 90 % in ``fastebm-eval``
(``--keep-ratio``); ``mebm`` has no classifier head and scores the whole buffer.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["PaperRow", "rows", "row", "match", "nearest", "differences", "beside", "what_differs", "pinned_by",
           "DATASET_NAMES"]

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet32": "ImageNet 32x32",
                 "celebahq128": "CelebA-HQ 128"}


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper (or of fastebm's own recipes, ``ours=True``).

    Attributes:
        key: unique id, ``<where>-<model>-<dataset>-k<K>`` (``t1`` = Table 1, ``fig4b`` = Fig. 4(b),
            ``ref`` = another method, ``ours`` = not in the paper).
        table: where the row is printed: ``"Table 1"`` ... ``"Table 6"``, ``"Fig. 2(b)"``, ``"ours"``.
        model: the model as the paper names it (``"M-EBM"``, ``"JEM++(M=5)"``, ...).
        dataset: fastebm's dataset name (``cifar10``, ``cifar100``, ``imagenet32``, ``celebahq128``).
        k: SGLD steps K per iteration; None where the paper does not state it (or the method has none).
        settings: Config fields that define the row (read-only mapping); None: fastebm cannot train it.
        argv: the ``python -m fastebm.train`` arguments that resolve to ``settings`` (no ``--data-root``).
        acc: test accuracy as a fraction in [0, 1]; IS: Inception Score; fid: Fréchet Inception Distance.
        minutes_per_epoch: Table 6, minutes per 390-iteration epoch on CIFAR-10 on one Titan GPU.
        compute: Table 6's "Other" block: another method's training cost as the paper prints it ("" elsewhere).
        footnote: the table's footnote for this row (its marker and text), and what the text leaves out.
        source: where the numbers and the settings come from.
        figures: other places the same run appears (``"Fig. 4(a)"``).
        needs: what fastebm lacks to reproduce the row exactly ("" when nothing).
        ours: True for a fastebm-only row (no paper numbers).
        code: Config fields that the paper does not state and the authors' code fixes (the L2 form, BatchNorm,
            precision), as the code of ``code_source`` runs them (read-only mapping; None: not runnable).
            ``--paper KEY`` sets them with ``settings``; a run without it is told which of them differ.
        code_source: the authors' files and commit that ``code`` comes from.
    """

    key: str
    table: str
    model: str
    dataset: str
    k: int | None
    settings: Mapping | None = field(default=None, hash=False)
    argv: tuple[str, ...] | None = None
    acc: float | None = None
    inception_score: float | None = None
    fid: float | None = None
    minutes_per_epoch: float | None = None
    compute: str = ""
    footnote: str = ""
    source: str = ""
    figures: tuple[str, ...] = ()
    needs: str = ""
    ours: bool = False
    code: Mapping | None = field(default=None, hash=False)
    code_source: str = ""

    @property
    def runnable(self) -> bool:
        """True when fastebm can train this row (it has ``settings`` and ``argv``)."""
        return self.settings is not None

    @property
    def command(self) -> str | None:
        """The full training command with a ``DATA`` placeholder for ``--data-root``; None if not runnable."""
        if self.argv is None:
            return None
        args = list(self.argv)
        at = args.index("--dataset") + 2
        return " ".join(["python -m fastebm.train", *args[:at], "--data-root DATA", *args[at:]])

    @property
    def label(self) -> str:
        """``"Table 1 M-EBM CIFAR-10 K=5"``: where (not for ``ours`` rows), what, on which data, with which K."""
        k = "" if self.k is None else f" K={self.k}"
        if self.k is None and self.settings is not None and "k" not in self.settings and self.settings["px_weight"]:
            k = " (K not stated)"
        where = "" if self.ours else f"{self.table} "
        return f"{where}{self.model} {DATASET_NAMES.get(self.dataset, self.dataset)}{k}"


def _pct(percent: float) -> float:
    """The paper's accuracy in percent as a fraction (93.1 → 0.931)."""
    return round(percent / 100, 6)


# --- the settings the paper states (Config field names) ----------------------------------------------
# Appendix A: WRN-28-10 on CIFAR-10 / CIFAR-100, WRN-28-2 on ImageNet 32x32, WRN-28-5 on CelebA-HQ 128;
# lr 0.1 on CIFAR-10, 0.02 on CIFAR-100, CelebA-HQ and ImageNet 32x32.
_NET = {"cifar10": dict(depth=28, width=10, lr=0.1), "cifar100": dict(depth=28, width=10, lr=0.02),
        "imagenet32": dict(depth=28, width=2, lr=0.02), "celebahq128": dict(depth=28, width=5, lr=0.02)}
_MODEL_FLAG = {"M-EBM": "mebm", "M-JEM": "mjem", "LSE-JEM": "lse-jem", "JEM": "jem", "JEM++": "jempp",
               "softmax": "mjem", "Softmax": "mjem"}
_CLASSIFIER = ("softmax", "Softmax")  # the classifier-only rows (Tables 3, 4, 6): M-JEM's network, --px-weight 0
# Eq. 6 as the authors fitted it for the tables: at 32 px and repeated ×4 on CelebA-HQ 128 (mebm one_center.py
# @23b0813, train_maebm_celeba.py @32f98f9), on the images themselves elsewhere (train_maebm.py)
_P0 = {"celebahq128": dict(p0="gaussian-downsampled", p0_size=32)}


def _settings(model: str, dataset: str, k: int | None, **extra) -> MappingProxyType:
    """The Config fields of an M-EBM / M-JEM / LSE-JEM / JEM row.

    M-* rows: the WRN and lr of Appendix A, p(x) batch 64 (Section 5), informative p0 (Eq. 6, Algorithm 1;
    CelebA-HQ: the authors' 32-px form, :data:`_P0`),
    no noise added to data (Sections 3.2, 4.1); with a classifier also the augmented p(y|x) batch of 128
    (Section 5) and the unaugmented p(x) batch (Section 4.1, Fig. 2a). JEM rows: JEM's K and uniform p0
    (Section 2, Eq. 3; github wgrathwohl/JEM), the rest is JEM's recipe (:mod:`fastebm.config.recipes`); JEM++ rows: K
    and the per-class Gaussian p0, the rest JEM++'s recipe; classifier rows: M-JEM's network, lr and augmented
    batch of 128 without the p(x) term (``px_weight`` 0). Every row states ``px_weight``: 1 (both terms) or 0.
    """
    s: dict = {"model": _MODEL_FLAG[model], "dataset": dataset, "px_weight": 0.0 if model in _CLASSIFIER else 1.0}
    if k is not None:
        s["k"] = k
    if model == "JEM":
        s.update(p0="uniform")
    elif model == "JEM++":  # the informative p0 of JEM++: one Gaussian per class (paper Sections 2, 3.1)
        s.update(p0="gaussian-mixture")
    elif model in _CLASSIFIER:
        s.update(_NET[dataset], cls_batch_size=128, data_noise=0.0)
    else:
        s.update(_NET[dataset], batch_size=64, data_noise=0.0, **_P0.get(dataset, dict(p0="gaussian")))
        if model != "M-EBM":
            s.update(cls_batch_size=128, augment_px=False)
    s.update(extra)
    return MappingProxyType(s)


# --- the settings of the authors' code that the paper does not state --------------------------------------
# mebm train_maebm.py @20bbf21 (2022-03-10, its last version before f7ae2f1 changed the L2 form and the FID tool):
# l2_coeff * (fp ** 2 + fq ** 2) of the batch means ("squared-means"); sample_q keeps f in train mode ("# f.eval()"),
# so every forward updates the BatchNorm running statistics ("update"); models/norms.py @ab600eb get_norm:
# BatchNorm2d(n, momentum=0.9); no autocast anywhere (fp32). train_maebm_celeba.py @32f98f9 alike.
_MEBM_CODE = MappingProxyType(dict(reg_form="squared-means", bn_momentum=0.9, sgld_bn="update", amp="off",
                                   sgld_amp="off"))
_MEBM_SOURCE = "sndnyang/mebm train_maebm.py @20bbf21, models/norms.py @ab600eb"
_CELEBA_SOURCE = "sndnyang/mebm train_maebm_celeba.py @32f98f9, models/norms.py @ab600eb"
# JEM train_wrn_ebm.py @3d01161 (README command: --norm None): no BatchNorm, fp32
_JEM_CODE = MappingProxyType(dict(amp="off", sgld_amp="off"))
_JEM_SOURCE = "wgrathwohl/JEM train_wrn_ebm.py @3d01161"


# JEMPP train_jempp.py @fba6ba5: sample_q '# f.eval()' (BatchNorm in train mode for every forward), models/norms.py
# @fba6ba5 get_norm: BatchNorm2d(n, momentum=0.9); fp32. No L2 term, so no L2 form.
_JEMPP_CODE = MappingProxyType(dict(bn_momentum=0.9, sgld_bn="update", amp="off", sgld_amp="off"))
_JEMPP_SOURCE = "sndnyang/JEMPP train_jempp.py @fba6ba5, models/norms.py @fba6ba5"
# the classifier of --px 0: no SGLD and no L2 term; BatchNorm momentum 0.9, fp32
_CLASSIFIER_CODE = MappingProxyType(dict(bn_momentum=0.9, amp="off", sgld_amp="off"))


def _code(model: str, dataset: str) -> tuple[MappingProxyType, str]:
    """(code, code_source) of a runnable row: see :data:`_MEBM_CODE`, :data:`_JEM_CODE`, :data:`_JEMPP_CODE`,
    :data:`_CLASSIFIER_CODE`."""
    if model == "JEM":
        return _JEM_CODE, _JEM_SOURCE
    if model == "JEM++":
        return _JEMPP_CODE, _JEMPP_SOURCE
    if model in _CLASSIFIER:
        return _CLASSIFIER_CODE, _MEBM_SOURCE
    return _MEBM_CODE, _CELEBA_SOURCE if dataset == "celebahq128" else _MEBM_SOURCE


def _argv(model: str, dataset: str, k: int | None, *more: str) -> tuple[str, ...]:
    ks = () if k is None else ("--k", str(k))
    px = ("--px-weight", "0") if model in _CLASSIFIER else ()
    return ("--dataset", dataset, "--model", _MODEL_FLAG[model], *ks, *px, *more)


def _run(key, table, model, dataset, k, *, more=(), extra=None, **kw) -> PaperRow:
    """A row fastebm can train: settings and command line from model, dataset, K (+ ``extra`` fields)."""
    code, source = _code(model, dataset)
    return PaperRow(key, table, model, dataset, k, settings=_settings(model, dataset, k, **(extra or {})),
                    argv=_argv(model, dataset, k, *more), code=code, code_source=source, **kw)


def _ref(key, table, model, dataset, k, needs, **kw) -> PaperRow:
    """Another method's row, printed in the paper for comparison: not trained by fastebm."""
    return PaperRow(key, table, model, dataset, k, needs=needs, **kw)


# footnotes, as the paper prints them
_T1_STAR = "*: M-EBM diverges with K = 1, and we report the best FID before diverging (Table 1 footnote)"
_T2_STAR = ("*: Our models diverge during training with given K, and we report the best FID before diverging "
            "(Table 2 footnote)")
_T3_STAR = "*: We report the best performance before the diverging of training (Table 3 footnote)"
_T3_PLUS = "+: They suffer from high instability and regularly diverge (Table 3 footnote)"
_T4_STAR = "*: No official IS and FID scores are reported (Table 4 footnote)"
_T4_PLUS = ("+: footnote only partly readable in the extracted text: '... we report the best FID before "
            "diverging' (Table 4)")
_T6_STABLE = ("Appendix B, footnote 4: 'We can't guarantee the stability. M-EBM(K=2)/M-JEM(K=5) sometimes can "
              "train without failure, while other EBMs always diverge before 100 epochs'")
_T6_JEM = "Table 6 *: JEM(K=20) is much less stable than M-EBM(K=2) and M-JEM(K=5)"
_SMALL_K = ("fastebm resolves σ = 0, λ = 0.1 at K <= 2 (mebm scripts/maebm_cifar10.sh @da79aff); Table 5 lists "
            "σ = 0.001 (--noise 0.001); both match this row")
_PLOT = "numbers only in the figure's plot, not in the text"
_OTHER = "another method, not trained by fastebm"
_JEMPP = ("JEM++'s code (github sndnyang/JEMPP train_jempp.py @fba6ba5, scripts/jempp_cifar10.sh; "
          "fastebm.config.recipes 'jempp', the paper's M and K being its --n_steps) differs in three places: it "
          "holds out 5,000 training images (--n_valid 5000; fastebm trains on all and keeps the 703-iteration "
          "epoch), fills the buffer with "
          "10,000 // C draws of each class (fastebm: classes drawn uniformly, as its restarts) and reads the class "
          "means and covariances from files (fastebm fits them on the training images)")
_T6_EPOCH = "Table 6 times every model over 390 iterations (fastebm's JEM++ epoch, as JEM++'s, is 703)"
_SOFTMAX = ("a classifier only: the M-JEM network and recipe without the p(x) term (mebm train_maebm.py --px 0, "
            "no SGLD); the paper gives no recipe for this row")
_FID_E = ("the authors' FID filter: top 90 % per class as predicted by the untrained classifier head of their "
          "M-EBM (mebm train_maebm.py 'ratio = 0.1 if arg.pyx else 0.9'); fastebm's mebm has no classifier head, "
          "its FID uses the whole buffer")
_CELEBA = ("2 GPUs (Appendix A): torchrun --nproc-per-node 2 -m fastebm.train ...; p0: the authors' (the preset "
           "--p0 gaussian-downsampled: full covariance of 4x4-block means at 32x32, pixels repeated x4; mebm "
           "one_center.py @23b0813, train_maebm_celeba.py @32f98f9); " + _FID_E)

_ROWS: tuple[PaperRow, ...] = (
    # ---- Table 1: M-EBM on CIFAR-10 (IS, FID); Table 6: minutes per epoch ----
    _run("t1-mebm-cifar10-k1", "Table 1", "M-EBM", "cifar10", 1, inception_score=6.02, fid=35.7,
         minutes_per_epoch=2.4, footnote=_T1_STAR + "; " + _SMALL_K, needs=_FID_E,
         source="paper Table 1 (IS, FID), Table 6 (minutes), Appendix A (settings)"),
    _run("t1-mebm-cifar10-k2", "Table 1", "M-EBM", "cifar10", 2, inception_score=6.72, fid=27.1,
         minutes_per_epoch=3.1, footnote=_T6_STABLE + "; " + _SMALL_K, needs=_FID_E,
         source="paper Table 1 (IS, FID), Table 6 (minutes), Appendix A (settings)"),
    _run("t1-mebm-cifar10-k5", "Table 1", "M-EBM", "cifar10", 5, inception_score=7.14, fid=22.7,
         minutes_per_epoch=5.4, figures=("Fig. 4(b), with L2",), needs=_FID_E,
         source="paper Table 1 (IS, FID), Table 6 (minutes), Appendix A (settings), Section 5.3 (Fig. 4b)"),
    _run("t1-mebm-cifar10-k10", "Table 1", "M-EBM", "cifar10", 10, inception_score=7.08, fid=20.4,
         minutes_per_epoch=9.0, figures=("Fig. 4(a)",), needs=_FID_E,
         source="paper Table 1 (IS, FID), Table 6 (minutes), Appendix A (settings), Section 5.3 (Fig. 4a)"),
    _run("t1-mebm-cifar10-k20", "Table 1", "M-EBM", "cifar10", 20, inception_score=7.20, fid=21.1,
         footnote="Table 6 has no M-EBM K = 20 time", needs=_FID_E,
         source="paper Table 1 (IS, FID), Appendix A (settings)"),
    # ---- Table 2: M-EBM FID on CIFAR-100, CelebA-HQ 128, ImageNet 32x32 ----
    _run("t2-mebm-cifar100-k1", "Table 2", "M-EBM", "cifar100", 1, fid=45.5, footnote=_T2_STAR + "; " + _SMALL_K,
         needs=_FID_E, source="paper Table 2 (FID), Appendix A (settings)"),
    _run("t2-mebm-cifar100-k2", "Table 2", "M-EBM", "cifar100", 2, fid=26.2, footnote=_SMALL_K, needs=_FID_E,
         source="paper Table 2 (FID), Appendix A (settings)"),
    _run("t2-mebm-cifar100-k5", "Table 2", "M-EBM", "cifar100", 5, fid=27.2, needs=_FID_E,
         source="paper Table 2 (FID), Appendix A (settings)"),
    _run("t2-mebm-cifar100-k10", "Table 2", "M-EBM", "cifar100", 10, fid=26.9, needs=_FID_E,
         source="paper Table 2 (FID), Appendix A (settings)"),
    _run("t2-mebm-celebahq128-k5", "Table 2", "M-EBM", "celebahq128", 5, fid=57.76, footnote=_T2_STAR,
         needs=_CELEBA, source="paper Table 2 (FID), Appendix A (WRN-28-5, lr 0.02, 2 GPUs)"),
    _run("t2-mebm-celebahq128-k10", "Table 2", "M-EBM", "celebahq128", 10, fid=39.87, needs=_CELEBA,
         footnote="the authors' script for it (mebm scripts/maebm_celeba.sh) uses WRN-28-2, λ = 0 and σ = 0, the "
                  "paper WRN-28-5 (Appendix A); its energy is the log-sum-exp of 10 logits no cross-entropy trains "
                  "(no --uncond: models/jem_models.py CCF), which fastebm's mebm (one energy head) does not reproduce",
         source="paper Table 2 (FID), Appendix A (WRN-28-5, lr 0.02, 2 GPUs)"),
    _run("t2-mebm-imagenet32-k2", "Table 2", "M-EBM", "imagenet32", 2, fid=54.52, needs=_FID_E,
         footnote="Section 5.1: 'incredibly stable and achieves FID 54.52 within 30 epochs'; " + _SMALL_K,
         source="paper Table 2 (FID), Section 5 (50 epochs), Appendix A (WRN-28-2, lr 0.02)"),
    _run("t2-mebm-imagenet32-k5", "Table 2", "M-EBM", "imagenet32", 5, fid=52.71, needs=_FID_E,
         source="paper Table 2 (FID), Section 5 (50 epochs), Appendix A (WRN-28-2, lr 0.02)"),
    # ---- Table 3: M-JEM on CIFAR-10 (accuracy, IS, FID); Table 6 ----
    _run("t3-mjem-cifar10-k1", "Table 3", "M-JEM", "cifar10", 1, acc=_pct(78.4), inception_score=7.91, fid=29.8,
         minutes_per_epoch=3.8, footnote=_T3_STAR + "; " + _SMALL_K,
         source="paper Table 3, Table 6 (minutes), Section 5 / Appendix A (settings)"),
    _run("t3-mjem-cifar10-k2", "Table 3", "M-JEM", "cifar10", 2, acc=_pct(86.5), inception_score=8.64, fid=19.3,
         minutes_per_epoch=4.6, footnote=_T3_STAR + "; " + _SMALL_K,
         source="paper Table 3, Table 6 (minutes), Section 5 / Appendix A (settings)"),
    _run("t3-mjem-cifar10-k5", "Table 3", "M-JEM", "cifar10", 5, acc=_pct(93.1), inception_score=8.71, fid=12.1,
         minutes_per_epoch=6.8, footnote=_T6_STABLE,
         source="paper Table 3, Table 6 (minutes), Section 5 / Appendix A (settings)"),
    _run("t3-mjem-cifar10-k10", "Table 3", "M-JEM", "cifar10", 10, acc=_pct(93.8), inception_score=8.52, fid=11.5,
         minutes_per_epoch=10.5, figures=("Fig. 4(a)",),
         source="paper Table 3, Table 6 (minutes), Section 5 / Appendix A (settings), Section 5.3 (Fig. 4a)"),
    _run("t3-mjem-cifar10-k20", "Table 3", "M-JEM", "cifar10", 20, acc=_pct(94.2), inception_score=8.72, fid=12.2,
         footnote="Table 6 has no M-JEM K = 20 time",
         source="paper Table 3, Section 5 / Appendix A (settings)"),
    _run("t3-jem-cifar10-k20", "Table 3", "JEM", "cifar10", 20, acc=_pct(92.9), inception_score=8.76, fid=38.4,
         minutes_per_epoch=15.1, footnote=_T3_PLUS + "; " + _T6_JEM + "; Table 6 times JEM over 390 iterations "
         "(fastebm's JEM epoch is 703)",
         source="paper Table 3 (citing JEM [7]), Table 6 (minutes); recipe: github wgrathwohl/JEM README"),
    _run("t3-jempp-cifar10-k5", "Table 3", "JEM++", "cifar10", 5, acc=_pct(91.1), inception_score=7.81, fid=37.9,
         minutes_per_epoch=6.3, footnote="printed 'JEM++(M=5)+ [21]'; " + _T3_PLUS + "; " + _T6_EPOCH,
         needs=_JEMPP, source="paper Table 3 (citing JEM++ [21]), Table 6 (minutes); recipe: github sndnyang/JEMPP"),
    _run("t3-jempp-cifar10-k10", "Table 3", "JEM++", "cifar10", 10, acc=_pct(93.5), inception_score=8.29,
         fid=37.1, minutes_per_epoch=10.2, footnote="printed 'JEM++(M=10)'; " + _T6_EPOCH, needs=_JEMPP,
         source="paper Table 3, Table 6 (minutes); recipe: github sndnyang/JEMPP"),
    _run("t3-jempp-cifar10-k20", "Table 3", "JEM++", "cifar10", 20, acc=_pct(94.1), inception_score=8.11,
         fid=38.0, footnote="printed 'JEM++(M=20)'", needs=_JEMPP,
         source="paper Table 3; recipe: github sndnyang/JEMPP"),
    _run("t3-classifier-cifar10", "Table 3", "softmax", "cifar10", None, acc=_pct(95.8), minutes_per_epoch=0.77,
         footnote="IS, FID '-' in the table; Table 6 'Classifier' 0.77 min per 390 iterations", needs=_SOFTMAX,
         source="paper Table 3 (accuracy), Table 6 (minutes); --px 0: mebm train_maebm.py @20bbf21"),
    # ---- Table 4: M-JEM on CIFAR-100; the JEM baselines ----
    _run("t4-mjem-cifar100-k1", "Table 4", "M-JEM", "cifar100", 1, acc=_pct(46.5), inception_score=8.71, fid=26.2,
         footnote=_T4_PLUS + "; " + _SMALL_K, source="paper Table 4, Appendix A (settings)"),
    _run("t4-mjem-cifar100-k2", "Table 4", "M-JEM", "cifar100", 2, acc=_pct(63.5), inception_score=11.22, fid=15.1,
         footnote=_T4_PLUS + "; " + _SMALL_K, source="paper Table 4, Appendix A (settings)"),
    _run("t4-mjem-cifar100-k5", "Table 4", "M-JEM", "cifar100", 5, acc=_pct(73.5), inception_score=11.95, fid=13.5,
         source="paper Table 4, Appendix A (settings)"),
    _run("t4-mjem-cifar100-k10", "Table 4", "M-JEM", "cifar100", 10, acc=_pct(75.1), inception_score=11.72,
         fid=12.7, source="paper Table 4, Appendix A (settings)"),
    _run("t4-jem-cifar100-k20", "Table 4", "JEM", "cifar100", 20, acc=_pct(70.4), inception_score=10.32, fid=51.7,
         footnote=_T4_STAR + "; the paper does not give the JEM recipe it ran on CIFAR-100 (fastebm: JEM's "
                             "CIFAR-10 recipe on CIFAR-100)",
         source="paper Table 4; recipe: github wgrathwohl/JEM README"),
    _run("t4-jem-cifar100-k30", "Table 4", "JEM", "cifar100", 30, acc=_pct(72.8), inception_score=10.84, fid=34.2,
         footnote=_T4_STAR + "; the paper does not give the JEM recipe it ran on CIFAR-100 (fastebm: JEM's "
                             "CIFAR-10 recipe on CIFAR-100)",
         source="paper Table 4; recipe: github wgrathwohl/JEM README"),
    _run("t4-jempp-cifar100-k5", "Table 4", "JEM++", "cifar100", 5, acc=_pct(72.0), inception_score=8.19, fid=37.7,
         footnote=_T4_STAR + "; the name reads 'JEM+(K=5)' in the extracted text; the paper does not give the "
                             "JEM++ recipe it ran on CIFAR-100 (fastebm: JEM++'s CIFAR-10 recipe)", needs=_JEMPP,
         source="paper Table 4; recipe: github sndnyang/JEMPP"),
    _run("t4-jempp-cifar100-k10", "Table 4", "JEM++", "cifar100", 10, acc=_pct(74.5), inception_score=10.23,
         fid=32.9, footnote=_T4_STAR + "; the paper does not give the JEM++ recipe it ran on CIFAR-100 (fastebm: "
                                       "JEM++'s CIFAR-10 recipe)", needs=_JEMPP,
         source="paper Table 4; recipe: github sndnyang/JEMPP"),
    _run("t4-classifier-cifar100", "Table 4", "Softmax", "cifar100", None, acc=_pct(78.9),
         footnote="IS, FID '-' in the table", needs=_SOFTMAX,
         source="paper Table 4; --px 0: mebm train_maebm.py @20bbf21"),
    # ---- the runs behind the figures ----
    _run("fig2b-lsejem-cifar100", "Fig. 2(b)", "LSE-JEM", "cifar100", None,
         footnote=_PLOT + "; K is not stated (the command uses fastebm's default K = 5); Section 5.3: M-JEM has "
                          "'much higher classification accuracy, comparable FID but a lower Inception Score than "
                          "LSE-JEM', LSE-JEM 'is less stable than M-JEM after 40 epochs'; the M-JEM of Fig. 2(b) "
                          "has no stated K either (Table 4 has K = 1, 2, 5, 10)",
         source="paper Fig. 2(b), Section 5.3; settings: Appendix A"),
    _run("fig4a-lsejem-cifar10-k10", "Fig. 4(a)", "LSE-JEM", "cifar10", 10,
         footnote="t-SNE only (Section 5.3): no accuracy, IS or FID in the paper",
         source="paper Section 5.3 ('three CIFAR10-trained M-EBM, M-JEM, and LSE-JEM with K = 10'); "
                "settings: Appendix A"),
    _run("fig4b-mebm-cifar10-k5-nol2", "Fig. 4(b)", "M-EBM", "cifar10", 5, more=("--l2", "0"),
         extra={"l2": 0.0},
         footnote="t-SNE only (Sections 3.2, 5.3: 'M-EBMs(K = 5) with and without energy L2 regularization'): no "
                  "IS or FID in the paper; the with-L2 run is t1-mebm-cifar10-k5",
         source="paper Sections 3.2, 5.3, Fig. 4(b); settings: Appendix A", needs=_FID_E),
    # ---- fastebm's own rows (not in the paper) ----
    PaperRow("ours-mebm-imagenet32-k10", "ours", "M-EBM", "imagenet32", 10,
             settings=_settings("M-EBM", "imagenet32", 10), argv=_argv("M-EBM", "imagenet32", 10), ours=True,
             code=_MEBM_CODE, code_source=_MEBM_SOURCE,
             footnote="not in the paper: Table 2 has ImageNet 32x32 at K = 2 and 5 only",
             source="fastebm docs/recipes.md (earlier versions)"),
    PaperRow("ours-mebm-cifar10-k5-mixture", "ours", "M-EBM", "cifar10", 5,
             settings=_settings("M-EBM", "cifar10", 5, p0="gaussian-mixture"),
             argv=_argv("M-EBM", "cifar10", 5, "--p0", "gaussian-mixture"), ours=True, code=_MEBM_CODE,
             code_source=_MEBM_SOURCE,
             footnote="not in the paper: t1-mebm-cifar10-k5 with JEM++'s p0, one Gaussian per class drawn uniformly "
                      "(JEMPP train_jempp.py @0fd76f0), for Section 3.1's claim that one Gaussian is 'comparable' "
                      "to it",
             source="paper Section 3.1; JEMPP train_jempp.py category_mean / init_from_centers / init_random"),
    # ---- other methods, Table 1 (CIFAR-10, IS / FID) ----
    _ref("t1-ref-shortrun-k100", "Table 1", "ShortRun [16]", "cifar10", 100, _OTHER, inception_score=6.72,
         fid=32.1, source="paper Table 1"),
    _ref("t1-ref-igebm-k60", "Table 1", "IGEBM [4]", "cifar10", 60, _OTHER, inception_score=6.78, fid=38.2,
         source="paper Table 1"),
    _ref("t1-ref-febm-k60", "Table 1", "f-EBM [22]", "cifar10", 60, _OTHER, inception_score=8.61, fid=30.8,
         source="paper Table 1"),
    _ref("t1-ref-cfebm-k50", "Table 1", "CF-EBM [24]", "cifar10", 50, _OTHER, fid=16.7,
         footnote="IS '-' in the table", source="paper Table 1"),
    _ref("t1-ref-klebm-k40", "Table 1", "KL-EBM [3]", "cifar10", 40, _OTHER, inception_score=7.85, fid=25.1,
         source="paper Table 1"),
    _ref("t1-ref-diffurecov-k30", "Table 1", "DiffuRecov [5]", "cifar10", 30, _OTHER, inception_score=8.31,
         fid=9.58, source="paper Table 1"),
    _ref("t1-ref-gebm", "Table 1", "GEBM [1]", "cifar10", None, _OTHER, fid=23.02, footnote="IS '-' in the table",
         source="paper Table 1"),
    _ref("t1-ref-vaebm-k6", "Table 1", "VAEBM [20]", "cifar10", 6, _OTHER, inception_score=8.43, fid=12.19,
         source="paper Table 1"),
    _ref("t1-ref-sngan", "Table 1", "SNGAN [14]", "cifar10", None, _OTHER, inception_score=8.59, fid=21.7,
         source="paper Table 1"),
    _ref("t1-ref-ncsn", "Table 1", "NCSN [18]", "cifar10", None, _OTHER, inception_score=8.91, fid=25.3,
         source="paper Table 1"),
    _ref("t1-ref-stylegan2ada", "Table 1", "StyleGAN2-ADA [12]", "cifar10", None, _OTHER, inception_score=9.74,
         fid=2.92, source="paper Table 1"),
    _ref("t1-ref-ddpm", "Table 1", "DDPM [11]", "cifar10", None, _OTHER, inception_score=9.46, fid=3.17,
         source="paper Table 1"),
    # ---- other methods, Table 2 (FID) ----
    _ref("t2-ref-sngan-cifar100", "Table 2", "SNGAN [14]", "cifar100", None, _OTHER, fid=22.4,
         source="paper Table 2"),
    _ref("t2-ref-klebm-celebahq128-k40", "Table 2", "KL-EBM [3]", "celebahq128", 40, _OTHER, fid=28.78,
         source="paper Table 2"),
    _ref("t2-ref-sngan-celebahq128", "Table 2", "SNGAN [14]", "celebahq128", None, _OTHER, fid=24.36,
         source="paper Table 2"),
    _ref("t2-ref-igebm-imagenet32-k60", "Table 2", "IGEBM [4]", "imagenet32", 60, _OTHER, fid=62.23,
         source="paper Table 2"),
    _ref("t2-ref-klebm-imagenet32-k40", "Table 2", "KL-EBM [3]", "imagenet32", 40, _OTHER, fid=32.48,
         source="paper Table 2"),
    # ---- other methods, Table 3 (CIFAR-10, accuracy / IS / FID) ----
    _ref("t3-ref-resflow", "Table 3", "Residual Flow [2]", "cifar10", None, _OTHER, acc=_pct(70.3),
         inception_score=3.60, fid=46.4, source="paper Table 3"),
    _ref("t3-ref-igebm-k60", "Table 3", "IGEBM [4]", "cifar10", 60, _OTHER, acc=_pct(49.1), inception_score=8.30,
         fid=37.9, source="paper Table 3"),
    _ref("t3-ref-jeat", "Table 3", "JEAT [25]", "cifar10", None, _OTHER, acc=_pct(85.2), inception_score=8.80,
         fid=38.2, source="paper Table 3"),
    _ref("t3-ref-vera-a100", "Table 3", "VERA(α=100)", "cifar10", None, _OTHER, acc=_pct(93.2),
         inception_score=8.11, fid=30.5, source="paper Table 3"),
    _ref("t3-ref-vera-a1", "Table 3", "VERA(α=1) [6]", "cifar10", None, _OTHER, acc=_pct(76.1),
         inception_score=8.00, fid=27.5, source="paper Table 3"),
    # ---- other methods, Table 4 (CIFAR-100) ----
    _ref("t4-ref-unnamed", "Table 4", "(name not readable)", "cifar100", None, _OTHER, inception_score=9.30,
         fid=15.6, footnote="the model's name is lost in the extracted text (the row between Softmax and "
                            "BigGAN(Cond)); accuracy '-'", source="paper Table 4"),
    _ref("t4-ref-biggan-cond", "Table 4", "BigGAN(Cond)", "cifar100", None, _OTHER, inception_score=11.0,
         fid=11.73, footnote="accuracy '-' in the table", source="paper Table 4"),
    _ref("t4-ref-vera-a100", "Table 4", "VERA(α=100)", "cifar100", None, _OTHER, acc=_pct(69.3),
         inception_score=8.14, fid=28.2, footnote=_T4_STAR, source="paper Table 4"),
    _ref("t4-ref-vera-a1", "Table 4", "VERA(α=1)", "cifar100", None, _OTHER, acc=_pct(48.7), inception_score=7.97,
         fid=26.6, footnote=_T4_STAR, source="paper Table 4"),
    # ---- other methods, Table 6 (CIFAR-10, minutes per epoch) ----
    _ref("t6-ref-vera", "Table 6", "VERA", "cifar10", None, _OTHER, minutes_per_epoch=9.6,
         footnote="Table 6 †: VERA reports a 2.8x speedup; the authors ran the official code", source="paper Table 6"),
    # Table 6's "Other" block: training costs as printed, no minutes per epoch
    _ref("t6-ref-igebm", "Table 6", "IGEBM", "cifar10", None, _OTHER, compute="1 GPU for 2 days",
         source="paper Table 6 ('Other')"),
    _ref("t6-ref-klebm", "Table 6", "KL-EBM", "cifar10", None, _OTHER, compute="1 GPU for 1 days",
         source="paper Table 6 ('Other')"),
    _ref("t6-ref-ddpm", "Table 6", "DDPM", "cifar10", None, _OTHER, compute="800k iter, 8 TPUs, 10.6 hours",
         source="paper Table 6 ('Other')"),
    _ref("t6-ref-diffurecov", "Table 6", "DiffuRecov", "cifar10", None, _OTHER,
         compute="240k iterations, 8 TPUs, 40+ hours", source="paper Table 6 ('Other')"),
    _ref("t6-ref-vaebm", "Table 6", "VAEBM", "cifar10", None, _OTHER, compute="400 epochs, 8 GPUs, 55 hours",
         footnote="Table 6 +: 'The runtime is for pretraining NVAE only. For VAEBM, they report the training takes "
                  "around 25,000 iterations (or 16 epochs) on CIFAR-10 using one 32-GB V100 GPU'",
         source="paper Table 6 ('Other')"),
)

_BY_KEY = {r.key: r for r in _ROWS}
assert len(_BY_KEY) == len(_ROWS), "duplicate PaperRow keys"


def rows() -> tuple[PaperRow, ...]:
    """Every registered row: the paper's Tables 1–4 and 6, the runs behind Figs. 2(b) / 4(a) / 4(b), and
    fastebm's own rows (``ours``), in the paper's order."""
    return _ROWS


def row(key: str) -> PaperRow:
    """The row with this key; KeyError naming the known keys otherwise."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"no paper row {key!r}; known keys: {', '.join(_BY_KEY)}") from None


def _value(cfg, name: str):
    return cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)


def _matches(r: PaperRow, cfg) -> bool:
    try:
        return all(_value(cfg, name) == want for name, want in r.settings.items())
    except (KeyError, AttributeError):
        return False


def match(cfg) -> PaperRow | None:
    """The row a run reproduces: the runnable row whose ``settings`` all equal the fields of ``cfg``.

    Args:
        cfg: a resolved :class:`fastebm.config.options.Config`, or a mapping of its fields (a run's config.json).

    Returns:
        the matching row; when several match (Fig. 4(b)'s no-L2 run also has every setting of Table 1's
        K = 5 row), the one with the most settings; None when no row's settings all hold.
    """
    found = [r for r in _ROWS if r.runnable and _matches(r, cfg)]
    if not found:
        return None
    best = max(len(r.settings) for r in found)
    top = [r for r in found if len(r.settings) == best]
    if len(top) > 1:  # tests/test_paper.py keeps the registry free of such ties
        raise ValueError(f"ambiguous paper rows {[r.key for r in top]}")
    return top[0]


def pinned_by(key: str | None, given: Mapping) -> dict:
    """``--paper KEY`` (:func:`fastebm.config.options.resolve`): the Config fields the row of ``key`` pins, its
    ``settings`` and its authors' ``code``; {} when ``key`` is None. ``given``: the options given beside it.

    Raises:
        ValueError: no runnable row has that key, or ``given`` names another dataset, model or K than the row's.
    """
    if key is None:
        return {}
    runnable = [r.key for r in _ROWS if r.runnable]
    if key not in runnable:
        raise ValueError(f"--paper: expected a row fastebm trains (docs/recipes.md), one of {', '.join(runnable)}; "
                         f"got {key!r}")
    r = _BY_KEY[key]
    other = [f"--{k} {given[k]}" for k in ("dataset", "model", "k") if k in given and k in r.settings
             and given[k] != r.settings[k]]
    if other:
        raise ValueError(f"--paper {key} is {' '.join(r.argv)}; got {', '.join(other)} (drop it, or give the key of "
                         f"that experiment's row)")
    return {**r.settings, **r.code}


_IDENTITY = ("model", "dataset", "k", "px_weight")  # what a run aims at: a row with other values is another experiment


def _get(cfg, name: str):
    try:
        return _value(cfg, name)
    except (KeyError, AttributeError):
        return None


def differences(r: PaperRow, cfg, code: bool = True) -> dict[str, tuple]:
    """The settings of row ``r`` that ``cfg`` does not hold: Config field → (this run's value, the row's), first
    those the paper states (``r.settings``), then, with ``code``, those of the authors' code (``r.code``: L2 form,
    BatchNorm, precision; compare a configuration resolved for its device, where ``amp`` is no longer ``auto``).

    Args:
        r: a runnable row. cfg: a resolved :class:`fastebm.config.options.Config` or a mapping of its fields.

    Returns:
        an empty dict when ``cfg`` holds every setting of the row and of the authors' code (``--paper KEY``).
    """
    wanted = {**(r.settings or {}), **((r.code or {}) if code else {})}
    return {name: (_get(cfg, name), want) for name, want in wanted.items() if _get(cfg, name) != want}


def nearest(cfg) -> PaperRow | None:
    """The row a run aims at: the row of its ``paper`` field (``--paper KEY``), else :func:`match` when every
    setting holds, else the runnable row with the same model, dataset and K (where the row states K) whose settings
    differ least (:func:`differences`; ties: the row with more settings), so that a smaller run of a paper command
    (``--depth 10 --width 1``) is still set beside its row, with what differs named. None when no row has that
    model, dataset and K."""
    if _get(cfg, "paper"):
        return row(_get(cfg, "paper"))
    exact = match(cfg)
    if exact is not None:
        return exact
    same = [r for r in _ROWS if r.runnable and all(_get(cfg, n) == r.settings[n] for n in _IDENTITY
                                                    if n in r.settings)]
    return min(same, key=lambda r: (len(differences(r, cfg, code=False)), -len(r.settings)), default=None)


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "(none)"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _flags(diff: Mapping, whose: str) -> str:
    return ", ".join(f"--{k.replace('_', '-')} {_shown(ours)} ({whose} {_shown(want)})"
                     for k, (ours, want) in diff.items())


# measured-dict names accepted by beside(), first the canonical one (fastebm's record names after it)
_METRICS = (("acc", ("acc", "accuracy", "test_acc"), ".3f"),
            ("IS", ("inception_score", "is_mean", "is"), ".2f"),
            ("FID", ("fid",), ".2f"),
            ("min/epoch", ("minutes_per_epoch",), ".2f"))
_PAPER_ATTR = {"acc": "acc", "IS": "inception_score", "FID": "fid", "min/epoch": "minutes_per_epoch"}


def beside(r: PaperRow, measured: Mapping, cfg=None, before: Mapping | None = None) -> str:
    """One line setting a run's numbers beside the paper's, e.g.
    ``paper Table 3 M-JEM CIFAR-10 K=5: acc 0.931 (ours 0.925), IS 8.71 (ours 8.40), FID 12.1 (ours 13.02)``.

    Args:
        r: the paper row (:func:`match`, :func:`nearest`, :func:`row`).
        measured: the run's numbers: ``acc`` (also ``accuracy``, ``test_acc``; a fraction in [0, 1]),
            ``inception_score`` (also ``is_mean``, ``is``), ``fid``, ``minutes_per_epoch``. A side that lacks
            a metric is left out of it (``FID 27.2`` alone, or ``acc (ours 0.500)``); a metric neither side has
            is not shown; Table 6's minutes per epoch only when ``measured`` has a time.
        cfg: the run's configuration (Config or mapping, resolved for its device); when given, the line ends with
            every setting of the row that it does not hold (``; differs from the row: --depth 10 (row 28)``) and
            every setting of the authors' code (``; differs from the authors' code (...): --reg-form eq8 (theirs
            reference)``), :func:`differences`.
        before: the run's best before its first divergence (``iter``, ``test_acc``, ``fid``; the summary's
            ``best_before_divergence``), set beside the paper's numbers too: the paper reports the best before
            diverging for the rows its footnotes mark.

    Raises:
        ValueError: an accuracy outside [0, 1] (a percentage passed by mistake).
    """
    line = f"{_head(r)}: {_numbers(r, measured)}"
    if before:
        line += f"; best before divergence (iteration {before.get('iter')}): {_numbers(r, before)}"
    what = "" if cfg is None else what_differs(r, cfg)
    return line + (f"; {what}" if what else "")


def what_differs(r: PaperRow, cfg) -> str:
    """:func:`differences` in words, e.g. ``differs from the row: --depth 10 (row 28); differs from the authors'
    code (<code_source>): --reg-form eq8 (theirs squared-means)``; "" when nothing differs."""
    diff = differences(r, cfg)
    stated = {k: v for k, v in diff.items() if k in r.settings}
    code = {k: v for k, v in diff.items() if k not in r.settings}
    parts = [f"differs from the row: {_flags(stated, 'row')}"] if stated else []
    if code:
        parts.append(f"differs from the authors' code ({r.code_source}): {_flags(code, 'theirs')}")
    return "; ".join(parts)


def _head(r: PaperRow) -> str:
    return f"ours, not in the paper: {r.label}" if r.ours else f"paper {r.label}"


def _numbers(r: PaperRow, measured: Mapping) -> str:
    parts = []
    for name, keys, fmt in _METRICS:
        ours = next((measured[k] for k in keys if measured.get(k) is not None and math.isfinite(measured[k])), None)
        paper = getattr(r, _PAPER_ATTR[name])
        if name == "acc" and ours is not None and not 0 <= ours <= 1:
            raise ValueError(f"beside: accuracy is a fraction in [0, 1], got {ours}")
        if (paper is None and ours is None) or (name == "min/epoch" and ours is None):
            continue  # Table 6's minutes (a Titan GPU) only beside a measured time
        text = name if paper is None else f"{name} {paper:g}"
        parts.append(text if ours is None else f"{text} (ours {ours:{fmt}})")
    return ", ".join(parts) if parts else "no numbers on either side"
