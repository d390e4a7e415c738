"""The paper's rows (fastebm/config/paper.py): every command resolves, through fastebm's own CLI, to a Config that
match() maps back to its row; keys are unique; numbers are plausible and appear in the paper's text;
docs/recipes.md lists every row."""
import dataclasses
import json
import os
import re

import pytest

from fastebm.config import paper
from fastebm.config.options import Config
from fastebm.train import build_parser, config_from_args, main

ROOT = os.path.join(os.path.dirname(__file__), "..")
PAPER_TXT = os.path.join(ROOT, "..", "shared", "paper", "m-ebm-yang-ji-2023.txt")
RUNNABLE = [r for r in paper.rows() if r.runnable]
FIELDS = {f.name for f in dataclasses.fields(Config)}


def resolve_cli(argv):
    """The Config that ``python -m fastebm.train ARGV`` trains, by the CLI's own parsing."""
    args = build_parser(list(argv)).parse_args(list(argv))
    return config_from_args(args)[0]


@pytest.mark.parametrize("r", RUNNABLE, ids=lambda r: r.key)
def test_command_resolves_back_to_its_row(r):
    assert set(r.settings) <= FIELDS, f"{r.key}: settings name no Config field {set(r.settings) - FIELDS}"
    cfg = resolve_cli(r.argv)
    assert paper.match(cfg) is r, f"{r.key}: {r.command} resolves to {paper.match(cfg)}"


@pytest.mark.parametrize("r", RUNNABLE, ids=lambda r: r.key)
def test_print_config_matches_its_row(r, capsys):
    """The same through ``--print-config`` (the JSON a user sees), read back as a mapping."""
    assert main([*r.argv, "--data-root", "DATA", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert paper.match(printed) is r


def _for_cuda(cfg):
    from fastebm.run.completion import for_device

    return for_device(cfg, "cuda")  # where --amp auto means bf16: the precision the authors' fp32 is compared with


@pytest.mark.parametrize("r", RUNNABLE, ids=lambda r: r.key)
def test_paper_option_sets_the_row_and_its_authors_code(r, capsys):
    """``--paper KEY`` resolves to every setting of the row and of the authors' code it names (L2 form, BatchNorm
    momentum and mode, fp32), on any device; the row's own command keeps fastebm's choices and its run names
    each of them beside the row."""
    assert r.code and r.code_source and set(r.code) >= {"amp", "sgld_amp"}
    cfg = _for_cuda(resolve_cli(["--paper", r.key]))
    assert paper.differences(r, cfg) == {} and paper.nearest(cfg) is r and paper.match(cfg) is not None
    assert (cfg.amp, cfg.sgld_amp) == ("off", "off")  # fp32, as every authors' code
    # the L2 form, BatchNorm and SGLD's BatchNorm mode of each code (the networks without BatchNorm: JEM's)
    code = CODE[cfg.model if cfg.px_weight else "classifier"]
    assert {k: getattr(cfg, k) for k in code} == code and set(r.code) == set(code) | {"amp", "sgld_amp"}
    assert main(["--paper", r.key, "--print-config"]) == 0
    assert paper.differences(r, json.loads(capsys.readouterr().out), code=False) == {}
    plain = _for_cuda(resolve_cli(r.argv))
    diff = paper.differences(r, plain)
    assert set(diff) == {k for k, v in r.code.items() if getattr(plain, k) != v} == set(code) | {"amp"}
    line = paper.beside(r, {}, plain)
    assert f"differs from the authors' code ({r.code_source}):" in line and "--amp bf16 (theirs off)" in line
    shown = {"reg_form": "--reg-form eq8 (theirs squared-means)", "bn_momentum": "--bn-momentum 0.1 (theirs 0.9)",
             "sgld_bn": "--sgld-bn batch (theirs update)"}
    assert all(shown[k] in line for k in code)


# each authors' code beside fastebm's defaults: mebm train_maebm.py @20bbf21 (batch means squared; BatchNorm
# momentum 0.9, every forward in train mode), its --px 0 classifier, JEMPP train_jempp.py @fba6ba5 (no L2 term),
# JEM (no BatchNorm): what --paper sets beyond fp32
_MEBM = dict(reg_form="squared-means", bn_momentum=0.9, sgld_bn="update")
CODE = {"mebm": _MEBM, "mjem": _MEBM, "lse-jem": _MEBM, "jempp": dict(bn_momentum=0.9, sgld_bn="update"),
        "classifier": dict(bn_momentum=0.9), "jem": {}}


def test_paper_option_refuses_another_experiment_and_unknown_keys():
    with pytest.raises(ValueError, match=r"--paper t2-mebm-imagenet32-k2 is --dataset imagenet32 --model mebm --k 2; "
                                         r"got --k 5"):
        resolve_cli(["--paper", "t2-mebm-imagenet32-k2", "--k", "5"])
    with pytest.raises(ValueError, match="--paper: expected a row fastebm trains .*got 't9-none'"):
        resolve_cli(["--paper", "t9-none"])
    with pytest.raises(ValueError, match="--paper"):
        resolve_cli(["--paper", "t1-ref-ddpm"])  # another method's row: nothing to train
    small = resolve_cli(["--paper", "t1-mebm-cifar10-k5", "--l2", "0", "--depth", "10"])  # given options still win
    assert (small.l2, small.depth, small.reg_form) == (0.0, 10, "squared-means")
    assert paper.nearest(small).key == "t1-mebm-cifar10-k5"  # its row, not Fig. 4(b)'s no-L2 run
    assert paper.differences(paper.row("t1-mebm-cifar10-k5"), small) == {"depth": (10, 28)}


def test_keys_unique_and_lookup():
    keys = [r.key for r in paper.rows()]
    assert len(keys) == len(set(keys))
    assert all(re.fullmatch(r"(t[1-6]|fig\d[ab]|ours)-[a-z0-9-]+", k) for k in keys), keys
    assert paper.row("t3-mjem-cifar10-k5").acc == pytest.approx(0.931)
    with pytest.raises(KeyError, match="t1-mebm-cifar10-k5"):
        paper.row("t9-nothing")


def test_numbers_in_plausible_ranges():
    for r in paper.rows():
        assert r.acc is None or 0 <= r.acc <= 1, r.key
        assert r.inception_score is None or r.inception_score >= 1, r.key
        assert r.fid is None or r.fid > 0, r.key
        assert r.minutes_per_epoch is None or r.minutes_per_epoch > 0, r.key


def test_ours_rows_carry_no_paper_numbers_and_other_methods_no_command():
    for r in paper.rows():
        if r.ours:
            assert (r.acc, r.inception_score, r.fid, r.minutes_per_epoch) == (None,) * 4, r.key
            assert r.runnable and r.table == "ours", r.key
        assert (r.argv is None) == (r.settings is None), r.key
        if not r.runnable:
            assert r.needs, f"{r.key}: a row fastebm cannot train says what it needs"
    assert paper.row("ours-mebm-imagenet32-k10").ours
    assert not any(r.ours for r in paper.rows() if r.table != "ours")


def test_numbers_appear_in_the_paper_text():
    """Every stored number is printed in the paper's text (as the paper prints it)."""
    if not os.path.isfile(PAPER_TXT):
        pytest.skip(f"paper text not found at {PAPER_TXT}")
    text = open(PAPER_TXT, encoding="utf-8").read()
    for r in paper.rows():
        for v in (None if r.acc is None else round(r.acc * 100, 4), r.inception_score, r.fid, r.minutes_per_epoch):
            if v is not None:
                assert f"{v:g}" in text, f"{r.key}: {v:g} is not in the paper text"
        assert r.compute.replace("40+", "$40+$") in text, f"{r.key}: {r.compute!r} is not in the paper text"
    assert {r.key for r in paper.rows() if r.compute} == {f"t6-ref-{m}" for m in ("igebm", "klebm", "ddpm",
                                                                                 "diffurecov", "vaebm")}


# the rows the issue listed as missing, pinned against the paper (table row as printed)
PINNED = [
    ("t1-mebm-cifar10-k1", None, 6.02, 35.7, 2.4),     # Table 1 M-EBM(K=1)* 6.02 35.7; Table 6 K=1 2.4
    ("t1-mebm-cifar10-k20", None, 7.20, 21.1, None),   # Table 1 M-EBM(K=20) 7.20 21.1
    ("t2-mebm-cifar100-k1", None, None, 45.5, None),   # Table 2 CIFAR100 M-EBM(K=1)* 45.5
    ("t3-mjem-cifar10-k20", 0.942, 8.72, 12.2, None),  # Table 3 M-JEM(K=20) 94.2 8.72 12.2
    ("t4-jem-cifar100-k30", 0.728, 10.84, 34.2, None),  # Table 4 JEM(K=30)* 72.8 10.84 34.2
    ("t3-mjem-cifar10-k5", 0.931, 8.71, 12.1, 6.8),    # Table 3 M-JEM(K=5); Table 6 M-JEM K=5 6.8
    ("t3-jem-cifar10-k20", 0.929, 8.76, 38.4, 15.1),   # Table 3 JEM(K=20)+; Table 6 JEM(K=20)* 15.1
    ("t2-mebm-celebahq128-k10", None, None, 39.87, None),
    ("fig4b-mebm-cifar10-k5-nol2", None, None, None, None),  # t-SNE only
    ("fig4a-lsejem-cifar10-k10", None, None, None, None),
    ("fig2b-lsejem-cifar100", None, None, None, None),
]


@pytest.mark.parametrize("key, acc, is_, fid, minutes", PINNED, ids=[p[0] for p in PINNED])
def test_pinned_rows(key, acc, is_, fid, minutes):
    r = paper.row(key)
    assert (r.acc, r.inception_score, r.fid, r.minutes_per_epoch) == (
        pytest.approx(acc) if acc is not None else None, is_, fid, minutes)


def test_table6_minutes_agree_with_its_speedups():
    """Table 6 prints a speedup over JEM(K=20) (15.1 min/epoch) beside each time: they must agree."""
    speedups = {"t1-mebm-cifar10-k1": 6.29, "t1-mebm-cifar10-k2": 4.87, "t1-mebm-cifar10-k5": 2.79,
                "t1-mebm-cifar10-k10": 1.67, "t3-mjem-cifar10-k1": 3.97, "t3-mjem-cifar10-k2": 3.28,
                "t3-mjem-cifar10-k5": 2.22, "t3-mjem-cifar10-k10": 1.43, "t3-jempp-cifar10-k5": 2.39,
                "t3-jempp-cifar10-k10": 1.48}
    jem = paper.row("t3-jem-cifar10-k20").minutes_per_epoch
    for key, s in speedups.items():
        # not fp32 rounding: the paper prints minutes to 0.1 and speedups to 0.01
        assert jem / paper.row(key).minutes_per_epoch == pytest.approx(s, abs=0.015), key
    timed = {r.key for r in paper.rows() if r.minutes_per_epoch is not None}
    assert timed == set(speedups) | {"t3-jem-cifar10-k20", "t3-classifier-cifar10", "t6-ref-vera"}


def test_compatible_rows_nest():
    """Two rows a single Config can both satisfy must nest (one's settings inside the other's), so that
    match() picks the more specific one and never faces a tie."""
    for a in RUNNABLE:
        for b in RUNNABLE:
            if a is b:
                continue
            common = set(a.settings) & set(b.settings)
            if all(a.settings[k] == b.settings[k] for k in common):
                assert set(a.settings) < set(b.settings) or set(b.settings) < set(a.settings), (a.key, b.key)


@pytest.mark.parametrize("argv, key", [
    (["--dataset", "cifar10", "--model", "mebm", "--k", "5", "--l2", "0"], "fig4b-mebm-cifar10-k5-nol2"),
    (["--dataset", "cifar10", "--model", "mebm", "--k", "5", "--l2", "0.3"], "t1-mebm-cifar10-k5"),
    (["--dataset", "cifar10", "--model", "mebm", "--k", "2", "--noise", "0.001", "--l2", "0.5"],
     "t1-mebm-cifar10-k2"),  # Table 5's σ at K = 2: the same paper row
    (["--dataset", "cifar100", "--model", "lse-jem", "--k", "10"], "fig2b-lsejem-cifar100"),  # K not stated
    (["--dataset", "cifar10", "--model", "mjem", "--k", "5", "--epochs", "150"], "t3-mjem-cifar10-k5"),
    # different settings reproduce no row
    (["--dataset", "cifar10", "--model", "mjem", "--k", "5", "--lr", "0.05"], None),
    (["--dataset", "cifar10", "--model", "mjem", "--k", "5", "--p0", "uniform"], None),
    (["--dataset", "cifar10", "--model", "mjem", "--k", "5", "--augment-px"], None),
    (["--dataset", "cifar10", "--model", "mjem", "--k", "5", "--width", "2"], None),
    (["--dataset", "cifar10", "--model", "mebm", "--k", "3"], None),
    (["--dataset", "cifar10", "--model", "lse-jem", "--k", "5"], None),
    (["--dataset", "cifar10", "--model", "jem", "--k", "10"], None),
    (["--dataset", "imagenet32", "--model", "mjem", "--k", "5"], None),
    (["--dataset", "imagenet32", "--k", "2"], "t2-mebm-imagenet32-k2"),  # the headline: the preset's model is mebm
    (["--dataset", "imagenet32", "--k", "5"], "t2-mebm-imagenet32-k5"),
    (["--dataset", "digits", "--model", "mjem", "--k", "5"], None),
])
def test_match_other_command_lines(argv, key):
    found = paper.match(resolve_cli(argv))
    assert (found.key if found else None) == key


def test_beside():
    r = paper.row("t3-mjem-cifar10-k5")
    assert paper.beside(r, {"acc": 0.925, "inception_score": 8.4, "fid": 13.02}) == (
        "paper Table 3 M-JEM CIFAR-10 K=5: acc 0.931 (ours 0.925), IS 8.71 (ours 8.40), FID 12.1 (ours 13.02)")
    # fastebm's record names; a metric the paper lacks keeps only our side, one we lack only the paper's
    assert paper.beside(paper.row("t2-mebm-cifar100-k5"), {"test_acc": 0.5, "is_mean": 7.0}) == (
        "paper Table 2 M-EBM CIFAR-100 K=5: acc (ours 0.500), IS (ours 7.00), FID 27.2")
    assert paper.beside(paper.row("t1-mebm-cifar10-k5"), {"minutes_per_epoch": 3.0}) == (
        "paper Table 1 M-EBM CIFAR-10 K=5: IS 7.14, FID 22.7, min/epoch 5.4 (ours 3.00)")
    assert paper.beside(paper.row("ours-mebm-imagenet32-k10"), {"fid": 50.1}) == (
        "ours, not in the paper: M-EBM ImageNet 32x32 K=10: FID (ours 50.10)")
    assert paper.beside(paper.row("fig2b-lsejem-cifar100"), {}) == (
        "paper Fig. 2(b) LSE-JEM CIFAR-100 (K not stated): no numbers on either side")
    with pytest.raises(ValueError, match="fraction"):
        paper.beside(r, {"acc": 93.1})


def test_nearest_row_and_what_differs():
    """A smaller run of a row's command is set beside that row with what differs; other models, data or K are
    no row; an exact match differs in nothing."""
    small = resolve_cli(["--dataset", "cifar10", "--model", "mebm", "--k", "5", "--depth", "10", "--width", "1",
                         "--l2", "0.3"])
    assert paper.match(small) is None
    r = paper.nearest(small)
    assert r.key == "t1-mebm-cifar10-k5"  # not Fig. 4(b)'s no-L2 run: one more setting differs there
    assert paper.differences(r, small, code=False) == {"depth": (10, 28), "width": (1, 10)}
    assert paper.beside(r, {"fid": 30.0}, _for_cuda(small)) == (
        "paper Table 1 M-EBM CIFAR-10 K=5: IS 7.14, FID 22.7 (ours 30.00); differs from the row: --depth 10 (row 28), "
        "--width 1 (row 10); differs from the authors' code (sndnyang/mebm train_maebm.py @20bbf21, models/norms.py "
        "@ab600eb): --reg-form eq8 (theirs squared-means), --bn-momentum 0.1 (theirs 0.9), --sgld-bn batch (theirs "
        "update), --amp bf16 (theirs off)")
    exact = resolve_cli(["--dataset", "cifar10", "--model", "mebm", "--k", "5"])
    assert paper.nearest(exact) is paper.match(exact) and paper.differences(paper.match(exact), exact, False) == {}
    assert paper.nearest(resolve_cli(["--dataset", "cifar10", "--model", "mebm", "--k", "3"])) is None
    assert paper.nearest(resolve_cli(["--dataset", "digits"])) is None
    before = {"iter": 1200, "fid": 40.0, "test_acc": -float("inf")}
    assert paper.beside(paper.row("t1-mebm-cifar10-k1"), {"fid": 50.0}, before=before) == (
        "paper Table 1 M-EBM CIFAR-10 K=1: IS 6.02, FID 35.7 (ours 50.00); best before divergence (iteration 1200): "
        "IS 6.02, FID 35.7 (ours 40.00)")


def test_recipes_mention_every_row():
    text = open(os.path.join(ROOT, "docs", "recipes.md"), encoding="utf-8").read()
    for r in paper.rows():
        assert f"`{r.key}`" in text, f"docs/recipes.md does not mention {r.key}"
        if r.runnable:
            assert f"`{r.command}`" in text, f"docs/recipes.md lacks the command of {r.key}: {r.command}"
    assert "not found" not in text
