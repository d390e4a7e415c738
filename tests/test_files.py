"""Files from strangers: nothing fastebm reads runs code, and what it writes loads anywhere.

Checkpoints and the p0 cache are read with ``torch.load(weights_only=True)``; the dataset pickles (CIFAR,
ImageNet 32×32) with an unpickler that builds NumPy arrays and plain values only. Each test hides a command
in a file and checks that it is refused and never runs.
"""
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from fastebm.data.datasets import load_dataset
from fastebm.data.imageset import DatasetError
from fastebm.eval import main as eval_main
from fastebm.io.checkpoint import CheckpointError, load_checkpoint, rng_state, set_rng_state
from fastebm.train import main as train_main

TINY_CLI = ["--depth", "10", "--width", "1", "--buffer-size", "32", "--batch-size", "8", "--cls-batch-size", "8",
            "--train-subset", "64", "--test-subset", "16", "--no-progress", "--epochs", "1", "--iters-per-epoch",
            "2", "--k", "1"]


class Hidden:
    """Pickles as a call of ``touch MARKER``: the file runs a command when unpickled by a plain loader."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def run(tmp_path):
    out = str(tmp_path / "run")
    assert train_main(TINY_CLI + ["--out", out]) == 0
    return out


def test_a_checkpoint_with_hidden_code_is_refused_by_resume_and_eval(run, tmp_path, capsys):
    marker = tmp_path / "ran"
    ckpt = torch.load(os.path.join(run, "ckpt.pt"), weights_only=True)
    ckpt["extra"] = Hidden(marker)
    bad = str(tmp_path / "shared.pt")
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(bad)
    with pytest.raises(SystemExit) as e:
        train_main(["--resume", bad, "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "could not be read as tensors and plain values" in err
    assert "GLOBAL posix.system" in err and "weights_only` set to `False`" not in err  # no advice to run it
    assert not marker.exists()


def test_eval_refuses_a_checkpoint_with_hidden_code_in_one_line(run, tmp_path, capsys):
    marker = tmp_path / "ran"
    ckpt = torch.load(os.path.join(run, "ckpt.pt"), weights_only=True)
    ckpt["config"]["note"] = Hidden(marker)
    bad = str(tmp_path / "shared.pt")
    torch.save(ckpt, bad)
    with pytest.raises(SystemExit) as e:
        eval_main(["--ckpt", bad, "--task", "acc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "weights_only=True" in err[0], err
    assert not marker.exists()


def test_a_checkpoint_holds_no_numpy_objects_and_its_rng_state_round_trips(run):
    import pickletools

    with zipfile.ZipFile(os.path.join(run, "ckpt.pt")) as z:
        pkl = [n for n in z.namelist() if n.endswith("data.pkl")][0]
        globals_ = {arg for op, arg, _ in pickletools.genops(z.read(pkl)) if op.name == "GLOBAL"}
    assert globals_ and not [g for g in globals_ if g.startswith("numpy")], globals_  # any NumPy loads it
    np.random.seed(3)
    state = rng_state()
    a = np.random.rand(3)
    np.random.seed(4)
    set_rng_state(state)
    assert np.array_equal(np.random.rand(3), a)
    legacy = dict(state, numpy=np.random.get_state())  # the NumPy tuple of fastebm < 0.2 still restores
    set_rng_state(legacy)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", b"not a tensor file", "hidden"])
def test_a_p0_cache_that_cannot_be_read_is_refitted(tmp_path, capsys, content):
    from fastebm.p0 import load_or_fit_p0

    marker, p0 = tmp_path / "ran", str(tmp_path / "p0.pt")
    if content == "hidden":
        torch.save({"kind": "gaussian", "meta": Hidden(marker)}, p0)
    else:
        with open(p0, "wb") as f:
            f.write(content)
    data = load_dataset("digits", split="train").subset(64, 1)
    got = load_or_fit_p0(data, "gaussian", "full", 100, p0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "p0 cache" in err[0] and "cannot be read" in err[0], err
    assert got.mean.shape == (3 * 32 * 32,)
    assert torch.load(p0, weights_only=True)["kind"] == "gaussian"  # rewritten, and read next time
    load_or_fit_p0(data, "gaussian", "full", 100, p0)
    assert capsys.readouterr().err == "" and not marker.exists()


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet32"])
def test_dataset_pickles_with_hidden_code_are_refused(tmp_path, dataset):
    marker = tmp_path / "ran"
    if dataset == "cifar10":
        folder = tmp_path / "cifar-10-batches-py"
        folder.mkdir()
        names, key = [f"data_batch_{i}" for i in range(1, 6)], "labels"
    else:
        folder, names, key = tmp_path, [f"train_data_batch_{i}" for i in range(1, 11)], "labels"
    for n in names:
        with open(folder / n, "wb") as f:
            pickle.dump({"data": np.zeros((2, 3072), np.uint8), key: [1, 2]}, f, protocol=2)
    ok = load_dataset(dataset, str(tmp_path), "train")  # honest files load
    assert len(ok) == 2 * len(names)
    with open(folder / names[0], "wb") as f:
        pickle.dump({"data": Hidden(marker), key: [1, 2]}, f)
    with pytest.raises(DatasetError, match="posix.system is not allowed"):
        load_dataset(dataset, str(tmp_path), "train")
    assert not marker.exists()


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@pytest.mark.parametrize("written_by", ["2.14", "2.11"])
def test_a_checkpoint_of_another_torch_version_resumes_and_evaluates(written_by, tmp_path, capsys):
    """Checkpoints written by torch 2.14 (CI's) and 2.11 (the GPU image's) under NumPy 2 (tests/data/
    make_checkpoints.py) load with weights_only, name no NumPy global (so NumPy 1.26 reads them too), resume
    and evaluate under whichever supported torch runs this test."""
    src = os.path.join(FIXTURES, f"ckpt-torch{written_by}.pt")
    import pickletools

    with zipfile.ZipFile(src) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    globals_ = {arg for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}
    assert globals_ and not [g for g in globals_ if g.startswith("numpy")], globals_
    ckpt = load_checkpoint(src)
    assert ckpt["iteration"] == 2 and ckpt["arch"]["model"] == "mjem"
    run = tmp_path / "run"
    run.mkdir()
    dst = str(run / "ckpt.pt")
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    assert train_main(["--resume", dst, "--epochs", "2"]) == 0
    assert load_checkpoint(dst)["iteration"] == 4
    capsys.readouterr()
    assert eval_main(["--ckpt", dst, "--task", "acc"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["acc"]["accuracy"] <= 1


@pytest.mark.parametrize("keep", [0, 1000])
def test_a_truncated_checkpoint_says_so_in_one_line(run, tmp_path, keep):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(open(os.path.join(run, "ckpt.pt"), "rb").read()[:keep])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(bad))
    msg = str(e.value)
    assert f"truncated or not a torch file ({keep} bytes" in msg and "\n" not in msg and "weights_only" not in msg
