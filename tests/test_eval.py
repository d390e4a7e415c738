"""The evaluation CLI (python -m fastebm.eval) end to end on tiny checkpoints (CPU, digits)."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastebm.evaluation.fid
import fastebm.evaluation.run
from fastebm.algorithm.sampler import frozen_bn_stats
from fastebm.config.options import resolve
from fastebm.eval import build_parser, main
from fastebm.evaluation import filter_by_confidence, load_run, sample_chains
from fastebm.evaluation import inception as I  # noqa: E741
from fastebm.evaluation import metrics as M
from fastebm.evaluation.run import outputs
from fastebm.run.trainer import Trainer

TINY = dict(dataset="digits", depth=10, width=1, k=1, epochs=1, iters_per_epoch=2, buffer_size=64,
            batch_size=16, cls_batch_size=16, warmup_iters=1, decay_epochs=[], progress=False, log_every=1,
            eval_every=1000, sample_every=1000, train_subset=200, test_subset=32, device="cpu")
FAST = ["--batch-size", "32", "--test-subset", "48"]


pytestmark = pytest.mark.usefixtures("single_threaded")  # see tests/conftest.py


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny mjem and mebm checkpoints (WRN-10-1, K=1, 2 iterations, buffer 64) trained on digits."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for kind in ("mjem", "mebm"):
        run = root / kind
        if kind == "mebm":  # same data, same p0: reuse the fitted p0 cache
            os.makedirs(run)
            shutil.copy(root / "mjem" / "p0.pt", run / "p0.pt")
        Trainer(resolve(dict(TINY, model=kind, out=str(run)))).fit()
        out[kind] = str(run / "ckpt.pt")
    return out


def _json(path):
    with open(path) as f:
        return json.load(f)


def _png_ok(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 10 and im.size[1] > 10


def _fails(argv, capsys, match):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m fastebm.eval: error: "), err
    assert match in err[0], err[0]
    return err[0]


def test_load_run_restores_model_and_buffer(ckpts):
    run = load_run(ckpts["mjem"], "cpu")
    assert run.cfg.model == "mjem" and not run.model.training and run.iteration == 2
    assert run.buffer.shape == (64, 3, 32, 32) and run.buffer.dtype == torch.float32
    ckpt = torch.load(ckpts["mjem"], weights_only=False)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


def test_two_checkpoints_from_folders_of_one_name_get_one_result_folder_each(ckpts, tmp_path, capsys):
    """A/run/ckpt.pt and B/run/ckpt.pt with --out: two result folders (run-1, run-2), not one overwritten."""
    paths = []
    for name in ("A", "B"):
        os.makedirs(tmp_path / name / "run")
        shutil.copy(ckpts["mjem"], tmp_path / name / "run" / "ckpt.pt")
        paths.append(str(tmp_path / name / "run" / "ckpt.pt"))
    out = tmp_path / "ev"
    assert main(["--ckpt", *paths, "--task", "acc", "--out", str(out), *FAST]) == 0
    assert sorted(os.listdir(out)) == ["run-1", "run-2"]
    assert all(os.path.isfile(out / d / "acc.json") for d in ("run-1", "run-2"))
    captured = capsys.readouterr()
    assert f"wrote {out / 'run-1'}, {out / 'run-2'}" in captured.err
    results = json.loads(captured.out)  # several checkpoints: task -> checkpoint -> record
    assert list(results) == ["acc"] and list(results["acc"]) == paths
    assert results["acc"][paths[1]] == _json(out / "run-2" / "acc.json")


def test_acc_and_ece(ckpts, tmp_path, capsys):
    assert main(["--ckpt", ckpts["mjem"], "--task", "acc", "ece", "--out", str(tmp_path), *FAST]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"acc": _json(tmp_path / "acc.json"), "ece": _json(tmp_path / "ece.json")}
    assert captured.err.strip() == f"fastebm.eval: wrote {tmp_path}"
    acc = _json(tmp_path / "acc.json")
    assert acc["n"] == 48 and 0 <= acc["accuracy"] <= 1 and math.isfinite(acc["loss"]) and acc["loss"] >= 0
    ece = _json(tmp_path / "ece.json")
    assert 0 <= ece["ece"] <= 1 and abs(ece["accuracy"] - acc["accuracy"]) < 1e-9
    assert len(ece["bins"]["count"]) == 15 and sum(ece["bins"]["count"]) == 48
    _png_ok(tmp_path / "reliability.png")


def test_progress_in_a_redirected_log_is_plain_lines_on_stderr(ckpts, tmp_path, capsys, monkeypatch):
    """Every pass says what it does and how far it got; here every step is 'long' (a report due at once)."""
    import functools

    import fastebm.io.progress

    monkeypatch.setattr(fastebm.evaluation.run, "Progress",
                        functools.partial(fastebm.io.progress.Progress, every_s=1e-9))
    assert main(["--ckpt", ckpts["mjem"], "--task", "acc", "gen", "--n-samples", "10", "--sgld-steps", "1",
                 "--out", str(tmp_path), *FAST]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err
    assert "fastebm.eval: acc: test images 48/48 (100 %" in captured.err
    assert "fastebm.eval: gen: SGLD chains (1 steps) 10/10 (100 %" in captured.err
    assert set(json.loads(captured.out)) == {"acc", "gen"}  # the reports stay off stdout


def test_default_out_is_eval_next_to_checkpoint_and_logpx_histograms(ckpts):
    assert main(["--ckpt", ckpts["mjem"], "--task", "logpx", *FAST]) == 0
    out = os.path.join(os.path.dirname(ckpts["mjem"]), "eval")
    rec = _json(os.path.join(out, "logpx.json"))
    assert rec["n_test"] == 48 and rec["n_buffer"] == 64
    assert sum(c["test data"]["n"] for c in rec["per_class"].values()) == 48
    assert sum(c["buffer (predicted)"]["n"] for c in rec["per_class"].values()) == 64  # by predicted class
    run = load_run(ckpts["mjem"], "cpu")
    energy, logits = outputs(run, run.buffer, 32, "test")
    c0 = (logits.argmax(1) == 0)
    if c0.any():
        expected = float(-energy[c0].double().mean())
        # the same fp32 energies (batches of 32 as FAST's); float64 means summed in another order
        assert rec["per_class"]["0"]["buffer (predicted)"]["mean"] == pytest.approx(expected, rel=1e-12)
    _png_ok(os.path.join(out, "logpx.png"))


def test_gen_unconditional_and_class_conditional(ckpts, tmp_path):
    assert main(["--ckpt", ckpts["mjem"], "--task", "gen", "--n-samples", "20", "--sgld-steps", "2",
                 "--out", str(tmp_path), *FAST]) == 0
    rec = _json(tmp_path / "gen.json")
    assert rec["sgld_steps"] == 2 and rec["n_per_class"] == 2 and 0 <= rec["cond_accuracy"] <= 1
    with np.load(tmp_path / "gen_uncond.npz") as f:
        assert f["images"].shape == (20, 32, 32, 3) and f["images"].dtype == np.uint8
        assert f["labels"].shape == (20,) and f["labels"].min() >= 0
    with np.load(tmp_path / "gen_cond.npz") as f:
        assert f["images"].shape == (20, 32, 32, 3) and f["images"].dtype == np.uint8
        assert f["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    _png_ok(tmp_path / "gen_uncond.png")
    _png_ok(tmp_path / "gen_cond.png")


def test_conditional_chains_follow_minus_the_class_logit(ckpts):
    """One SGLD step on E(x, y) = -f(x)[y] (K = 1: noise 0, step size 1) is x0 + grad_x f(x0)[y],
    computed with the training BN mode (batch statistics); the model's state is left as it was."""
    run = load_run(ckpts["mjem"], "cpu")
    assert run.cfg.noise == 0 and run.cfg.step_size == 1 and run.cfg.sgld_bn == "batch"
    y = torch.arange(16) % 10
    state = {k: v.clone() for k, v in run.model.state_dict().items()}
    torch.manual_seed(0)
    x0 = run.p0.sample(16)
    torch.manual_seed(0)
    x1 = sample_chains(run, 16, 1, 16, labels=y)
    assert not run.model.training and all(p.requires_grad for p in run.model.parameters())
    for k, v in state.items():  # BN running statistics untouched by sampling
        assert torch.equal(v, run.model.state_dict()[k]), k
    model = run.model.train()
    x = x0.clone().requires_grad_(True)
    with frozen_bn_stats(model):
        (g,) = torch.autograd.grad(model.logits(x).gather(1, y[:, None]).sum(), x)
    model.eval()
    assert g.abs().max() > 0
    assert torch.equal(x1, (x0 + g).clamp(-1, 1))


def test_ood_digits_vs_cifar(ckpts, tmp_path, cifar_root):
    assert main(["--ckpt", ckpts["mjem"], "--task", "ood", "--ood-dataset", "folder", "--ood-root", cifar_root,
                 "--ood-max-per-class", "3", "--out", str(tmp_path), *FAST]) == 0
    rec = _json(tmp_path / "ood.json")
    assert rec["n_in"] == 48 and rec["n_out"] == 30
    assert set(rec["auroc"]) == {"logpx", "max_softmax", "grad_norm"}
    assert all(0 <= v <= 1 for v in rec["auroc"].values())
    assert rec["mean_in"]["grad_norm"] <= 0  # the score is minus a norm
    _png_ok(tmp_path / "ood_hist.png")


def test_mebm_tasks_without_classifier(ckpts, tmp_path, cifar_root):
    assert main(["--ckpt", ckpts["mebm"], "--task", "ood,gen", "--ood-dataset", "folder", "--ood-root",
                 cifar_root, "--ood-max-per-class", "2", "--n-samples", "8", "--out", str(tmp_path), *FAST]) == 0
    assert set(_json(tmp_path / "ood.json")["auroc"]) == {"logpx", "grad_norm"}
    assert not os.path.exists(tmp_path / "gen_cond.npz")
    with np.load(tmp_path / "gen_uncond.npz") as f:
        assert f["images"].shape == (8, 32, 32, 3) and (f["labels"] == -1).all()


def test_tsne_one_and_several_checkpoints(ckpts, tmp_path):
    assert main(["--ckpt", ckpts["mjem"], "--task", "tsne", "--n-samples", "20", "--perplexity", "5",
                 "--out", str(tmp_path), *FAST]) == 0
    with np.load(tmp_path / "tsne.npz") as f:
        assert f["coords"].shape == (60, 2) and np.isfinite(f["coords"]).all()
        assert np.bincount(f["group"]).tolist() == [20, 20, 20]
    rec = _json(tmp_path / "tsne.json")
    assert rec["names"] == ["x+ data", "x0 p0", "x- buffer"]
    _png_ok(tmp_path / "tsne.png")
    joint = tmp_path / "joint"
    assert main(["--ckpt", ckpts["mjem"], ckpts["mebm"], "--task", "tsne", "--n-samples", "15", "--perplexity", "5",
                 "--out", str(joint), *FAST]) == 0
    rec = _json(joint / "tsne.json")
    assert rec["names"] == ["x+ data", "x0 p0", "x- mjem", "x- mebm"] and rec["counts"] == [15, 15, 15, 15]
    assert rec["features_of"] == ckpts["mjem"] and sorted(os.listdir(joint)) == ["tsne.json", "tsne.npz", "tsne.png"]
    _png_ok(joint / "tsne.png")


def test_extremes_energy_and_p0_figures(ckpts, tmp_path):
    assert main(["--ckpt", ckpts["mjem"], "--task", "extremes", "energy", "p0", "--n-show", "3", "--n-samples", "16",
                 "--out", str(tmp_path), *FAST]) == 0
    rec = _json(tmp_path / "extremes.json")
    run = load_run(ckpts["mjem"], "cpu")
    energy, logits = outputs(run, run.buffer, 32, "test")
    pred = logits.argmax(1)
    assert sum(c["n"] for c in rec["per_class"].values()) == 64
    for c, entry in rec["per_class"].items():
        members = torch.nonzero(pred == int(c)).flatten()
        assert entry["n"] == len(members)
        if len(members):
            top = entry["highest p(x)"]
            assert top["index"][0] == int(members[(-energy[members]).argmax()])  # the most likely of its class
            assert top["logpx"] == sorted(top["logpx"], reverse=True) and len(top["index"]) == min(3, len(members))
            low = entry["lowest p(y|x)"]["p_y_given_x"]
            assert low == sorted(low) and all(int(pred[i]) == int(c) for i in entry["lowest p(y|x)"]["index"])
            _png_ok(entry["png"])
    _png_ok(tmp_path / "extremes.png")
    en = _json(tmp_path / "energy.json")
    assert set(en["sets"]) == {"x+ data", "x0 p0", "x- buffer"} and all(v["n"] == 16 for v in en["sets"].values())
    _png_ok(tmp_path / "energy.png")
    _png_ok(tmp_path / "energy_hist.png")
    with Image.open(tmp_path / "p0_mean.png") as im:
        mean = np.asarray(im.convert("RGB"), dtype=np.float64)
    expected = ((run.p0.mean.reshape(3, 32, 32).clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert mean.shape == (32, 32, 3) and np.abs(mean - expected).max() <= 1  # one image: no grid padding
    _png_ok(tmp_path / "p0_samples.png")


def test_figure_tasks_without_matplotlib_say_what_to_install(ckpts, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    _fails(["--ckpt", ckpts["mjem"], "--task", "energy", "--n-samples", "8", "--out", str(tmp_path)], capsys,
           "pip install 'fastebm[plots]'")


@pytest.mark.slow
def test_fid_is_random_inception_buffer_filtered(ckpts, tmp_path, monkeypatch, fast_fid):
    cache = tmp_path / "cache"
    argv = ["--ckpt", ckpts["mjem"], "--task", "fid", "is", "--random-inception", "--keep-ratio", "0.5",
            "--n-real", "24", "--splits", "2", "--stats-cache", str(cache), "--out", str(tmp_path), *FAST]
    with pytest.warns(UserWarning, match="meaningless"):
        assert main(argv) == 0
    fid, is_ = _json(tmp_path / "fid.json"), _json(tmp_path / "is.json")
    assert math.isfinite(fid["fid"]) and fid["fid"] >= 0 and fid["fid"] == is_["fid"]
    assert math.isfinite(is_["is_mean"]) and is_["is_mean"] >= 1 and is_["is_std"] >= 0
    assert fid["n_real"] == 24 and fid["n_buffer"] == 64 and 20 <= fid["n_fake"] <= 32
    assert "note" in fid and fid["real_stats_cached"] is False
    assert "meaningless" in fid["meaningless"] and "meaningless" in is_["meaningless"]
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and files[0].startswith("fid_stats_digits_train_24_random-inception_")
    assert files[1] == files[0] + ".json" and _json(cache / files[1])["n_real"] == 24
    mu, sigma = M.load_stats(cache / files[0])
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    # a second run reuses the cached statistics without loading the real images
    monkeypatch.setattr(fastebm.evaluation.fid, "load_dataset",
                        lambda *a, **k: pytest.fail("real data loaded despite the cache"))
    with pytest.warns(UserWarning):
        assert main(argv[:4] + argv[5:]) == 0  # fid only
    again = _json(tmp_path / "fid.json")
    assert again["real_stats_cached"] is True and again["n_real"] == 24 and again["fid"] == fid["fid"]
    # the authors' protocol by default (the 90 % most confident of each predicted class), all of it one flag away
    plain = argv[:4] + argv[5:6] + argv[8:]  # fid, without --keep-ratio 0.5
    with pytest.warns(UserWarning):
        assert main(plain) == 0
    default = _json(tmp_path / "fid.json")
    assert default["keep_ratio"] == 0.9 and default["n_buffer"] == 64 and 48 <= default["n_fake"] < 64
    with pytest.warns(UserWarning):
        assert main(plain + ["--keep-ratio", "1"]) == 0
    assert _json(tmp_path / "fid.json")["n_fake"] == 64


def test_the_command_prints_one_json_document_on_stdout_and_the_rest_on_stderr(ckpts, tmp_path):
    """``python -m fastebm.eval ... | jq .``: stdout parses as one JSON object holding each task's record (as in
    its file), while the warning of a random Inception and the folders written go to stderr."""
    argv = ["--ckpt", ckpts["mjem"], "--task", "acc,is", "--random-inception", "--source", "chains", "--n-samples",
            "6", "--sgld-steps", "1", "--splits", "2", "--out", str(tmp_path), *FAST]
    res = subprocess.run([sys.executable, "-m", "fastebm.eval", *argv], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parent.parent, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads(res.stdout)  # the whole of stdout: one document, nothing before or after it
    assert list(results) == ["acc", "is"]
    assert results["acc"] == _json(tmp_path / "acc.json") and results["is"] == _json(tmp_path / "is.json")
    assert 0 <= results["acc"]["accuracy"] <= 1 and results["is"]["is_mean"] >= 1
    assert "meaningless" in res.stderr and f"fastebm.eval: wrote {tmp_path}" in res.stderr


def test_is_from_fresh_chains(ckpts, tmp_path):
    argv = ["--ckpt", ckpts["mebm"], "--task", "is", "--random-inception", "--source", "chains",
            "--n-samples", "6", "--sgld-steps", "2", "--splits", "2", "--out", str(tmp_path), *FAST]
    with pytest.warns(UserWarning, match="meaningless"):
        assert main(argv) == 0
    rec = _json(tmp_path / "is.json")
    assert rec["source"] == "chains" and rec["n_fake"] == 6 and rec["sgld_steps"] == 2
    assert math.isfinite(rec["is_mean"]) and rec["is_mean"] >= 1 and "fid" not in rec
    assert not os.path.exists(tmp_path / "fid.json")


def test_missing_inception_weights_exit_2_with_path(ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = os.path.join(str(tmp_path / "hub"), "checkpoints", I.FID_WEIGHTS_FILENAME)
    msg = _fails(["--ckpt", ckpts["mjem"], "--task", "fid", "--out", str(tmp_path)], capsys, expected)
    assert "--inception-weights" in msg and "Nothing is downloaded" in msg
    missing = str(tmp_path / "nowhere" / "w.pth")
    _fails(["--ckpt", ckpts["mjem"], "--task", "is", "--inception-weights", missing, "--out", str(tmp_path)],
           capsys, missing)
    assert not os.path.exists(tmp_path / "fid.json")


@pytest.mark.parametrize("argv,match", [
    (["--task", "acc"], "'mebm', which has no p(y|x)"),
    (["--task", "logpx", "ece"], "task 'ece' needs a classifier"),
    (["--task", "fid", "--random-inception", "--keep-ratio", "0.5"], "--keep-ratio"),
    (["--task", "ood", "--ood-dataset", "folder"], "--ood-root: task 'ood' on dataset 'folder' needs the folder"),
    (["--task", "nope"], "unknown task(s) ['nope']"),
    (["--task", "logpx", "--dataset", "mnist"], "--dataset: expected one of"),
    (["--task", "logpx", "--dataset", "folder", "--data-root", "/nonexistent/x"], "not a folder"),
    (["--task", "ood"], "--ood-dataset: task 'ood' needs an out-of-distribution dataset"),
    (["--task", "tsne", "extremes", "--n-samples", "1"], "--n-samples: task 'tsne' needs at least 4 points, got 3"),
    (["--task", "logpx", "--batch-size", "0"], "--batch-size"),
])
def test_bad_input_one_line_exit_2(ckpts, tmp_path, capsys, argv, match):
    _fails(["--ckpt", ckpts["mebm"], "--out", str(tmp_path), *argv], capsys, match)


def test_missing_checkpoint_and_missing_task(tmp_path, capsys):
    _fails(["--ckpt", str(tmp_path / "none.pt"), "--task", "acc"], capsys, "expected a file")
    _fails(["--ckpt", str(tmp_path / "none.pt")], capsys, "--task")


def test_filter_by_confidence_keeps_top_ratio_per_predicted_class():
    # predicted class 0: confidences .9 .6 .8 .7 (indices 0-3); class 1: .55 .95 (4, 5); class 2: .5 (6)
    conf = [(.9, 0), (.6, 0), (.8, 0), (.7, 0), (.55, 1), (.95, 1), (.5, 2)]
    probs = np.zeros((7, 3))
    for i, (c, k) in enumerate(conf):
        probs[i, k] = c
        probs[i, [j for j in range(3) if j != k]] = (1 - c) / 2
    assert filter_by_confidence(probs, 0.5).tolist() == [0, 2, 5]  # floor(.5*4)=2, floor(.5*2)=1, floor(.5)=0
    assert filter_by_confidence(probs, 1.0).tolist() == list(range(7))
    assert filter_by_confidence(torch.from_numpy(probs), 0.75).tolist() == [0, 2, 3, 5]
    assert filter_by_confidence(probs, 2).tolist() == [0, 2, 4, 5, 6]  # > 1: a count per class
    with pytest.raises(ValueError, match="keep_ratio"):
        filter_by_confidence(probs, 0.0)
    with pytest.raises(ValueError, match="softmax"):  # logits rank differently: refused
        filter_by_confidence(np.log(probs) + 3.0, 0.5)


def _folder_fid(ckpt, data, tmp_path, *extra) -> list[str]:
    """The eval command of an FID (random Inception, 8 samples) on a folder dataset, statistics cached under
    tmp_path/cache, results in tmp_path/o."""
    return ["--ckpt", ckpt, "--task", "fid", "--random-inception", "--dataset", "folder", "--data-root", str(data),
            "--n-samples", "8", "--stats-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o"), *extra]


@pytest.mark.slow
def test_fid_stats_cache_is_keyed_by_content(ckpts, tmp_path, cifar_root, fast_fid):
    """The stale-cache case: a 2-class folder with 20 train images per class gives n_real 40; after 20
    more per class are copied in, the same command recomputes the statistics (n_real 80)."""
    data = tmp_path / "data"
    classes = sorted(os.listdir(os.path.join(cifar_root, "train")))[:2]

    def fill(first, last):
        for cls in classes:
            os.makedirs(data / "train" / cls, exist_ok=True)
            files = sorted(os.listdir(os.path.join(cifar_root, "train", cls)))[first:last]
            for f in files:
                shutil.copy(os.path.join(cifar_root, "train", cls, f), data / "train" / cls / f)

    fill(0, 20)
    argv = _folder_fid(ckpts["mebm"], data, tmp_path, "--batch-size", "40")
    with pytest.warns(UserWarning, match="meaningless"):
        assert main(argv) == 0
    first = _json(tmp_path / "o" / "fid.json")
    assert first["n_real"] == 40 and first["real_stats_cached"] is False
    with pytest.warns(UserWarning, match="meaningless"):
        assert main(argv) == 0
    assert _json(tmp_path / "o" / "fid.json")["real_stats_cached"] is True  # unchanged folder: cache hit
    fill(20, 40)
    with pytest.warns(UserWarning, match="meaningless"):
        assert main(argv) == 0
    second = _json(tmp_path / "o" / "fid.json")
    assert second["n_real"] == 80 and second["real_stats_cached"] is False and second["fid"] != first["fid"]


@pytest.mark.slow
def test_fid_reference_of_train_and_test_together(ckpts, tmp_path, cifar_root, fast_fid, monkeypatch):
    """``--fid-split train+test`` (the 60k CIFAR-10 reference of the paper's period): the real statistics are
    those of the union of both splits' images, computed by hand here, and are cached apart from one split's."""
    data = tmp_path / "data"
    cls = sorted(os.listdir(os.path.join(cifar_root, "train")))[:2]
    for split, n in (("train", 6), ("test", 3)):
        for c in cls:
            os.makedirs(data / split / c)
            for f in sorted(os.listdir(os.path.join(cifar_root, split, c)))[:n]:
                shutil.copy(os.path.join(cifar_root, split, c, f), data / split / c / f)
    seen = []
    real_outputs = I.inception_outputs

    def spy(model, images, *a, **k):  # the images each Inception pass gets
        seen.append(images.clone())
        return real_outputs(model, images, *a, **k)

    monkeypatch.setattr(I, "inception_outputs", spy)
    argv = _folder_fid(ckpts["mebm"], data, tmp_path, "--fid-split", "train+test")
    with pytest.warns(UserWarning, match="meaningless"):
        assert main(argv) == 0
    rec = _json(tmp_path / "o" / "fid.json")
    assert rec["n_real"] == 18 and rec["real_split"] == "train+test"
    from fastebm.data.datasets import load_dataset

    size = seen[0].shape[-1]  # the checkpoint's image size
    both = torch.cat([load_dataset("folder", str(data), s, False, None, size).images for s in ("train", "test")])
    [real] = [x for x in seen if len(x) == 18]  # the other pass is the generated images
    assert torch.equal(real, both.float() / 127.5 - 1)  # every train image, then every test image
    with pytest.warns(UserWarning, match="meaningless"):
        assert main(argv[:-1] + ["train"]) == 0
    assert _json(tmp_path / "o" / "fid.json")["n_real"] == 12  # one split: its own statistics, not the cached union
    assert len(os.listdir(tmp_path / "cache")) == 4
    # the authors' Inception Score splits: one per 5,000 images, at least 1 (here the 64 buffer images: one)
    with pytest.warns(UserWarning, match="meaningless"):
        assert main(argv[:3] + ["is"] + argv[4:-2] + ["--splits", "auto"]) == 0
    assert _json(tmp_path / "o" / "is.json")["splits"] == 1


def test_chains_run_through_the_fast_sampler(ckpts, monkeypatch):
    import fastebm.algorithm.sampler

    calls = []

    class Counting(fastebm.algorithm.sampler.Sampler):
        def __call__(self, x0, noise=None):
            calls.append(len(x0))
            return super().__call__(x0, noise)

    monkeypatch.setattr(fastebm.evaluation.run, "Sampler", Counting)
    run = load_run(ckpts["mebm"], "cpu")
    x = sample_chains(run, 10, 2, 4)
    assert calls == [4, 4, 2] and x.shape == (10, 3, 32, 32) and x.abs().max() <= 1


def test_chains_of_an_sgld_bn_update_run_leave_the_loaded_model_unchanged(ckpts):
    """A run trained with ``--sgld-bn update`` samples as ``batch`` does (the same train-mode forwards, so the
    same chains) and keeps the checkpoint's running statistics, which every later task evaluates with."""
    import dataclasses

    run = load_run(ckpts["mebm"], "cpu")
    state = {k: v.clone() for k, v in run.model.state_dict().items()}
    torch.manual_seed(0)
    batch = sample_chains(run, 8, 2, 8)
    run = dataclasses.replace(run, cfg=dataclasses.replace(run.cfg, sgld_bn="update"))
    torch.manual_seed(0)
    torch.testing.assert_close(sample_chains(run, 8, 2, 8), batch, rtol=0, atol=0)
    for k, v in state.items():
        assert torch.equal(v, run.model.state_dict()[k]), k


def test_help_shows_no_none_defaults():
    text = " ".join(build_parser().format_help().split())
    assert "default: None" not in text and "(default: auto)" in text


def test_curves_of_several_runs_in_one_figure(ckpts, tmp_path, capsys):
    """Fig. 2(b): accuracy / FID / IS against epoch of two runs, from their metrics.jsonl."""
    assert main(["--ckpt", ckpts["mjem"], ckpts["mebm"], "--task", "curves", "--out", str(tmp_path)]) == 0
    record = json.loads(capsys.readouterr().out)["curves"]
    assert record == _json(tmp_path / "curves.json") and record["checkpoints"] == [ckpts["mjem"], ckpts["mebm"]]
    _png_ok(record["png"])
    (mjem,) = [s for label, s in record["series"].items() if "(mjem, K=1)" in label]
    with open(os.path.join(os.path.dirname(ckpts["mjem"]), "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["kind"] == "eval" and "test_acc" in r]
    assert evals and mjem["test accuracy"]["value"] == [r["test_acc"] for r in evals]


def test_curves_read_the_last_row_of_each_iteration(tmp_path):
    import types

    from fastebm.evaluation import read_curves

    rows = [{"kind": "eval", "iter": 10, "test_acc": 0.1}, {"kind": "fid", "iter": 10, "fid": 90.0, "is_mean": 2.0},
            {"kind": "eval", "iter": 20, "test_acc": 0.2}, {"kind": "rollback", "iter": 10},
            {"kind": "eval", "iter": 20, "test_acc": 0.3}]  # iteration 20 again after the rollback
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "ev')
    run = types.SimpleNamespace(ckpt=str(tmp_path / "ckpt.pt"), cfg=types.SimpleNamespace(iters_per_epoch=10))
    got = read_curves(run)
    assert got["test accuracy"] == ([1.0, 2.0], [0.1, 0.3])
    assert got["FID"] == ([1.0], [90.0]) and got["Inception Score"] == ([1.0], [2.0])
