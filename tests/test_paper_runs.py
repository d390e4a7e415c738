"""Tiny training runs of the paper's rows: the headline command (ImageNet 32×32, M-EBM, K = 2) on synthetic
files in the official Downsampled-ImageNet format, each set beside its row at the end of the run."""
import json
import os
import pickle

import numpy as np

from fastebm import paper
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
