"""Tiny training runs of the paper's rows on synthetic files in the official formats, each set beside its row at
the end of the run: the headline command (ImageNet 32×32, M-EBM, K = 2) and the baselines the tables compare, the
classifier only (the authors' --px 0) and JEM++ (PYLD, per-class Gaussian p0)."""
import json
import os
import pickle

import numpy as np
import pytest

from fastebm.config import paper
from fastebm.train import main

SMALL = ["--depth", "10", "--width", "1", "--batch-size", "8", "--buffer-size", "16", "--epochs", "1",
         "--iters-per-epoch", "2", "--warmup-iters", "1", "--no-progress", "--device", "cpu", "--test-subset", "16",
         "--no-tensorboard"]


def write_imagenet32(root, n_train: int = 48, n_val: int = 16, seed: int = 0) -> str:
    """``train_data_batch_1`` and ``val_data`` as the official files hold them: pickled dicts with ``data`` (N×3072
    uint8, the red plane, then green, then blue) and ``labels`` (1..1000)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for name, n in (("train_data_batch_1", n_train), ("val_data", n_val)):
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "labels": [int(y) for y in rng.integers(1, 1001, n)]}
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump(d, f)
    return str(root)


def write_cifar10(root, n_per_file: int = 20, seed: int = 0) -> str:
    """``cifar-10-batches-py/data_batch_1..5`` and ``test_batch`` as the authors' Python files hold them: pickled
    dicts with ``data`` (N×3072 uint8) and ``labels`` (0..9), every class in every file."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8),
             "labels": [i % 10 for i in range(n_per_file)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f)
    return str(root)


def _records(out, kind="train"):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _summary(capsys):
    out, err = capsys.readouterr()
    return json.loads(out.strip().splitlines()[-1]), err


def test_the_headline_command_is_the_table2_imagenet_row_and_its_run_says_so(tmp_path, capsys):
    """``python -m fastebm.train --dataset imagenet32 --k 2``: M-EBM, WRN-28-2, lr 0.02, 50 epochs (paper Table 2,
    Section 5, Appendix A); a smaller run of it on ImageNet-format files ends beside that row, naming what differs."""
    assert main(["--print-config", "--dataset", "imagenet32", "--k", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["model"], printed["depth"], printed["width"], printed["lr"], printed["epochs"]) == \
        ("mebm", 28, 2, 0.02, 50)
    assert paper.match(printed).key == "t2-mebm-imagenet32-k2"
    root = write_imagenet32(tmp_path / "imagenet32")
    assert main(["--dataset", "imagenet32", "--k", "2", "--data-root", root, "--out", str(tmp_path / "run"),
                 *SMALL]) == 0
    summary, err = _summary(capsys)
    row = summary["paper"]
    assert row["row"] == "t2-mebm-imagenet32-k2" and row["fid"] == 54.52
    assert {"depth": {"ours": 10, "row": 28}, "width": {"ours": 1, "row": 2},
            "batch_size": {"ours": 8, "row": 64}}.items() <= row["differs"].items()
    line = next(s for s in err.splitlines() if s.startswith("fastebm: paper Table 2 M-EBM ImageNet 32x32 K=2"))
    assert "FID 54.52" in line and "--depth 10 (row 28)" in line and "--width 1 (row 2)" in line
    assert "differs from the authors' code" in line and "--bn-momentum 0.1 (theirs 0.9)" in line  # fastebm's choices
    assert any(s.startswith("fastebm: this is Table 2 M-EBM ImageNet 32x32 K=2") for s in err.splitlines())
    assert json.load(open(tmp_path / "run" / "config.json"))["model"] == "mebm"


BASELINE = ["--image-size", "16", "--depth", "10", "--width", "1", "--batch-size", "16", "--cls-batch-size", "16",
            "--buffer-size", "40", "--epochs", "1", "--iters-per-epoch", "4", "--warmup-iters", "1", "--no-progress",
            "--device", "cpu", "--test-subset", "20", "--no-tensorboard", "--log-every", "1", "--decay-epochs"]


def test_the_classifier_only_baseline_trains_the_cross_entropy_alone(tmp_path, capsys):
    """Table 3 softmax 95.8 / Table 6 Classifier 0.77 min/epoch: M-JEM's network without the p(x) term (mebm
    train_maebm.py --px 0): no buffer draw, no SGLD, no energies; its run ends beside its row."""
    root, out = write_cifar10(tmp_path / "cifar"), tmp_path / "run"
    assert main(["--dataset", "cifar10", "--model", "mjem", "--px-weight", "0", "--data-root", root, "--out", str(out),
                 *BASELINE, "--lr", "0.05"]) == 0
    summary, err = _summary(capsys)
    assert summary["paper"]["row"] == "t3-classifier-cifar10" and summary["paper"]["acc"] == 0.958
    assert "paper Table 3 softmax CIFAR-10: acc 0.958 (ours " in summary["paper"]["beside"]
    recs = _records(out)
    assert len(recs) == 4 and all(r["loss_gen"] == r["e_pos"] == r["e_neg"] == 0 for r in recs)
    assert all(r["loss"] == r["loss_cls"] > 0 for r in recs)
    import torch

    from fastebm.algorithm.model import build_model
    from fastebm.config.options import resolve

    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["p0"]["kind"] == "uniform"  # the authors' buffer of a --px 0 run: never fitted, never sampled
    torch.manual_seed(1)  # the run's seed: the network as built before training
    start = build_model(resolve(dict(json.load(open(out / "config.json")), out=None))).state_dict()
    assert ckpt["model"]["energy_head.weight"].equal(start["energy_head.weight"])  # no p(x) term: no gradient
    assert not ckpt["model"]["class_head.weight"].equal(start["class_head.weight"])
    with pytest.raises(SystemExit):
        main(["--dataset", "digits", "--model", "mebm", "--px-weight", "0", "--print-config"])
    assert "--px-weight 0: a classifier-only run needs a classifier model" in capsys.readouterr().err
    from fastebm.run.completion import check_fits

    cfg = resolve(dict(json.load(open(out / "config.json")), out=None))
    with pytest.raises(ValueError, match="under torchrun: DDP refuses the energy head"):
        check_fits(cfg, 100, "cpu", world_size=2)  # the unused head would stop DDP at its second iteration
    check_fits(resolve(dict(cfg.to_dict(), model="lse-jem")), 100, "cpu", world_size=2)


def test_jempp_trains_with_pyld_and_the_class_mixture_p0(tmp_path, capsys):
    """Table 3 JEM++(M=5) / Table 6 JEM++(K=5): JEM++'s recipe (JEMPP train_jempp.py @fba6ba5): E = -logsumexp
    with BatchNorm, 5 PYLD updates of 0.2 per step, the per-class Gaussian p0, two augmented noisy batches of 64."""
    root, out = write_cifar10(tmp_path / "cifar"), tmp_path / "run"
    assert main(["--dataset", "cifar10", "--model", "jempp", "--k", "5", "--data-root", root, "--out", str(out),
                 *BASELINE]) == 0
    summary, err = _summary(capsys)
    assert summary["paper"]["row"] == "t3-jempp-cifar10-k5" and summary["paper"]["acc"] == 0.911
    assert "--sgld-bn batch (theirs update)" in summary["paper"]["beside"]
    cfg = json.load(open(out / "config.json"))
    assert (cfg["sgld_inner_steps"], cfg["step_size"], cfg["noise"], cfg["l2"], cfg["p0"], cfg["norm"]) == \
        (5, 0.2, 0.0, 0.0, "gaussian-mixture", "batch")
    recs = _records(out)
    assert len(recs) == 4 and all(np.isfinite([r["e_pos"], r["e_neg"], r["loss_cls"]]).all() for r in recs)
    # no L2 term: the contrast alone, E(x+) - E(x-) of the batch means (float32, as computed)
    assert all(np.float32(r["e_pos"]) - np.float32(r["e_neg"]) == np.float32(r["loss_gen"]) for r in recs)
