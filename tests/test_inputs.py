"""Bad inputs: every numeric option finite and in range, sizes that cannot fit the data or the
device, --image-size, error messages that name existing options, and checkpoint file modes."""
import ast
import dataclasses
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fastebm
import fastebm.kernels
from fastebm import eval as fastebm_eval
from fastebm import train as fastebm_train
from fastebm.config.limits import RANGES, flag, validate
from fastebm.config.options import Config, resolve
from fastebm.data.datasets import load_dataset
from fastebm.data.imageset import DatasetError
from fastebm.io.checkpoint import atomic_save, remove_stale_temporaries
from fastebm.run.completion import check_fits

ROOT = Path(__file__).resolve().parent.parent
TINY_CLI = ["--depth", "10", "--width", "1", "--buffer-size", "50", "--batch-size", "4", "--cls-batch-size", "4",
            "--no-progress", "--warmup-iters", "1", "--log-every", "1", "--epochs", "1", "--iters-per-epoch", "1",
            "--k", "1", "--test-subset", "8"]


def _options(parser) -> set:
    return set(parser._option_string_actions)


def _all_options() -> set:
    return _options(fastebm_train.build_parser()) | _options(fastebm_eval.build_parser())


# ---------------------------------------------------------------- numeric options
FLOAT_FIELDS = [f.name for f in dataclasses.fields(Config) if "float" in str(f.type)]


def test_every_float_field_has_a_range_and_a_flag():
    assert {"lr", "step_size", "noise", "reinit_freq", "max_loss"} <= set(FLOAT_FIELDS)  # the scan finds them
    options = _options(fastebm_train.build_parser())
    for name in FLOAT_FIELDS:
        assert name in RANGES, f"float field {name} has no range in limits.RANGES"
    for name in RANGES:
        assert flag(name) in options, f"{flag(name)} (a validated field) is not an option of fastebm.train"


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_float_options_are_rejected(name, bad):
    cfg = dataclasses.replace(resolve({}), **{name: bad})  # a Config is frozen: a changed copy
    with pytest.raises(ValueError, match=f"^{flag(name)}: expected a finite number, got {bad}"):
        validate(cfg)


@pytest.mark.parametrize("name", sorted(RANGES))
def test_values_outside_the_range_are_rejected(name):
    lo, hi, lo_in, hi_in = RANGES[name]
    cfg = dataclasses.replace(resolve({}), **{name: lo - 1 if lo_in else lo})
    with pytest.raises(ValueError, match=f"^{flag(name)}: expected a value in "):
        validate(cfg)
    if hi is not None:
        cfg = dataclasses.replace(cfg, **{name: hi + 1 if hi_in else hi})
        with pytest.raises(ValueError, match=f"^{flag(name)}: expected a value in "):
            validate(cfg)


@pytest.mark.parametrize("argv,match", [
    (["--lr", "nan"], "--lr: expected a finite number, got nan"),
    (["--step-size", "inf"], "--step-size: expected a finite number, got inf"),
    (["--grad-clip=-inf"], "--grad-clip: expected a finite number"),
    (["--momentum", "1.5"], "--momentum: expected a value in [0, 1)"),
    (["--image-size", "4"], "--image-size: expected a value in [8, 1024]"),
])
def test_train_cli_rejects_bad_numbers_with_one_line(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        fastebm_train.main(argv + ["--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv,match", [
    (["--perplexity", "nan"], "--perplexity: expected a finite number, got nan"),
    (["--keep-ratio", "inf"], "--keep-ratio: expected a finite number, got inf"),
    (["--perplexity", "0"], "--perplexity: expected a value > 0"),
    (["--seed", "-1"], "--seed: expected an integer in [0, 2**32)"),
    (["--seed", "4294967296"], "--seed: expected an integer in [0, 2**32)"),  # numpy would wrap it silently
])
def test_eval_cli_rejects_non_finite_floats(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:  # rejected before the checkpoint is even looked at
        fastebm_eval.main(["--ckpt", str(tmp_path / "none.pt"), "--task", "tsne"] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


# ---------------------------------------------------------------- sizes that cannot fit
def test_batch_larger_than_the_training_set_exits_2_in_seconds(tmp_path):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "fastebm.train", "--dataset", "digits", "--batch-size", "100000",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch-size 100000" in lines[0] and "at most 1437" in lines[0], res.stderr
    assert not out.exists()  # nothing written, no model, p0 or buffer built
    assert elapsed < 60, elapsed  # imports + loading digits; was killed for memory (exit 137) before


def test_check_fits_names_each_option_and_its_limit():
    cfg = dataclasses.replace(resolve(dict(batch_size=32, cls_batch_size=64, buffer_size=1000)), image_size=32)
    check_fits(cfg, 64, "cpu", available=2 ** 30)
    with pytest.raises(ValueError, match=r"^--batch-size 32: .*at most 20 "):
        check_fits(cfg, 20, "cpu", available=2 ** 30)
    with pytest.raises(ValueError, match=r"^--cls-batch-size 64: .*at most 40 "):
        check_fits(cfg, 40, "cpu", available=2 ** 30)
    cfg = dataclasses.replace(cfg, model="mebm", cov="lowrank")  # no classifier batch: only the p(x) batch counts
    check_fits(cfg, 40, "cpu", available=2 ** 30)  # (and a low-rank p0 fit needs little: the buffer's limits below)
    per_sample = 3 * 32 * 32 * 4
    with pytest.raises(ValueError, match=r"^--buffer-size 1000: .*expected at most 999 samples"):
        check_fits(cfg, 64, "cpu", available=999 * per_sample)
    check_fits(cfg, 64, "cpu", available=1000 * per_sample)
    with pytest.raises(ValueError, match=r"^--buffer-size 1000: .*expected at most 998 samples"):  # 2 ranks
        check_fits(cfg, 64, "cpu", world_size=2, available=499 * per_sample)
    for cov in ("full", "auto"):  # auto is the full form up to 64 px
        with pytest.raises(ValueError, match=r"^--cov full: a 3072×3072 float64 covariance"):
            check_fits(dataclasses.replace(cfg, cov=cov, buffer_size=10), 64, "cpu", available=100 * 2 ** 20)


def test_buffer_larger_than_memory_exits_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        fastebm_train.main(["--buffer-size", str(10 ** 12), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--buffer-size 1000000000000: the replay buffer needs" in err[0]


# ---------------------------------------------------------------- --image-size
@pytest.fixture
def mixed_folder(tmp_path):
    from fastebm.data.imagefiles import save_png

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("test", 4)):
        for c in ("a", "b"):
            os.makedirs(tmp_path / split / c)
            for i in range(n):
                side = (20, 36)[i % 2]  # two sizes in every class
                img = torch.randint(0, 256, (3, side, side + 4), generator=g, dtype=torch.uint8)
                save_png(str(tmp_path / split / c / f"{i}.png"), img)
    return tmp_path


def test_folder_with_mixed_sizes_names_image_size_and_resizes(mixed_folder):
    with pytest.raises(DatasetError, match="pass --image-size N"):
        load_dataset("folder", str(mixed_folder), "train")
    data = load_dataset("folder", str(mixed_folder), "train", image_size=16)
    assert data.images.shape == (12, 3, 16, 16) and data.images.dtype == torch.uint8
    assert load_dataset("digits", image_size=16).images.shape[1:] == (3, 16, 16)


def test_folder_with_mixed_sizes_trains_with_image_size(mixed_folder, tmp_path):
    out = str(tmp_path / "run")
    assert fastebm_train.main(TINY_CLI + ["--dataset", "folder", "--data-root", str(mixed_folder),
                                          "--image-size", "16", "--out", out]) == 0
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=False)
    assert ckpt["config"]["image_size"] == 16 and ckpt["buffer"]["samples"].shape[1:] == (3, 16, 16)


def test_classifier_on_a_one_class_folder_exits_2(mixed_folder, tmp_path, capsys):
    """n_classes comes from the data, so the boundary check is made once the data is loaded (the model only
    asserts it)."""
    import shutil

    for split in ("train", "test"):
        shutil.rmtree(mixed_folder / split / "b")
    argv = TINY_CLI + ["--dataset", "folder", "--data-root", str(mixed_folder), "--image-size", "16"]
    with pytest.raises(SystemExit) as e:
        fastebm_train.main(argv + ["--out", str(tmp_path / "run")])
    assert e.value.code == 2
    assert "--model mjem: a p(y|x) model needs at least 2 classes" in capsys.readouterr().err.strip().splitlines()[-1]
    assert fastebm_train.main(argv + ["--model", "mebm", "--out", str(tmp_path / "ebm")]) == 0


# ---------------------------------------------------------------- every error names an existing option
def _flags_in_error_messages():
    """(file, flag) for every ``--flag`` in a string literal inside a ``raise`` or an ``.error()`` /
    ``.exit()`` call anywhere in the package (fastebm/ and kernels/, installed as fastebm.kernels)."""
    found = []
    folders = (Path(fastebm.__file__).parent, Path(fastebm.kernels.__file__).parent)
    files = sorted(f for folder in folders for f in folder.rglob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            is_exit = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                       and node.func.attr in ("error", "exit"))
            if isinstance(node, ast.Raise) or is_exit:
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        found += [(path.name, m) for m in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", sub.value)]
    return found


def test_every_flag_named_in_an_error_message_exists():
    found = _flags_in_error_messages()
    assert ("folders.py", "--image-size") in found and ("train.py", "--resume") in found  # the scan sees them
    options = _all_options()
    missing = sorted({(f, m) for f, m in found if m not in options})
    assert not missing, f"error messages name options that neither parser has: {missing}"


# ---------------------------------------------------------------- checkpoint file modes
@pytest.fixture
def umask():
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def test_new_checkpoint_respects_the_umask(tmp_path, umask):
    atomic_save({"a": 1}, str(tmp_path / "c.pt"))
    assert os.stat(tmp_path / "c.pt").st_mode & 0o777 == 0o644
    umask(0o077)
    atomic_save({"a": 1}, str(tmp_path / "d.pt"))
    assert os.stat(tmp_path / "d.pt").st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["c.pt", "d.pt"]


def test_overwrite_keeps_the_existing_mode(tmp_path, umask):
    path = tmp_path / "c.pt"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_save({"a": 2}, str(path))
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert torch.load(path, weights_only=False) == {"a": 2}


def test_training_run_files_are_0644_and_stale_temporaries_are_removed(tmp_path, umask):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".tmp-abc123.pt", out / ".tmp-999999999-x.pt"]  # an old-style name, a dead process
    live = out / f".tmp-{os.getppid()}-y.pt"  # a save in progress in a live process: kept
    for p in stale + [live]:
        p.write_bytes(b"partial")
    assert fastebm_train.main(TINY_CLI + ["--train-subset", "64", "--out", str(out)]) == 0
    for name in ("ckpt.pt", "p0.pt"):
        assert os.stat(out / name).st_mode & 0o777 == 0o644, name
    assert not any(p.exists() for p in stale) and live.exists()
    live.unlink()
    assert remove_stale_temporaries(str(out)) == []
