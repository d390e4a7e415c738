"""Evaluation during training: FID rows and best_fid.pt, best_acc.pt, ckpt_eNNN.pt history,
TensorBoard event files and the p0 pictures of a digits run."""
import glob
import json
import os

import pytest
import torch

from fastebm.train import main

pytestmark = pytest.mark.usefixtures("single_threaded")  # Inception: see conftest.py

RUN = ["--dataset", "digits", "--depth", "10", "--width", "1", "--k", "1", "--buffer-size", "32", "--batch-size", "8",
       "--cls-batch-size", "8", "--train-subset", "40", "--test-subset", "32", "--epochs", "3", "--iters-per-epoch",
       "2", "--warmup-iters", "1", "--log-every", "1", "--no-progress", "--device", "cpu"]


def _records(out, kind):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _iteration(path):
    return torch.load(path, weights_only=False)["iteration"]


@pytest.mark.slow
def test_fid_every_best_checkpoints_history_tensorboard_and_p0(tmp_path, fast_fid):
    out = str(tmp_path / "run")
    assert main([*RUN, "--out", out, "--fid-every", "1", "--random-inception", "--keep-every", "2",
                 "--fid-keep-ratio", "1", "--is-keep-ratio", "1"]) == 0
    fid = _records(out, "fid")
    assert [r["epoch"] for r in fid] == [1, 2, 3] and [r["iter"] for r in fid] == [2, 4, 6]
    assert all(r["fid"] > 0 and r["is_mean"] >= 1 and r["n_fake"] == 32 and r["n_real"] == 40 for r in fid)
    assert all("meaningless" in r["meaningless"] for r in fid)  # random Inception: every saved row says so
    best = min(fid, key=lambda r: r["fid"])
    assert _iteration(os.path.join(out, "best_fid.pt")) == best["iter"]
    evals = [r for r in _records(out, "eval") if "test_acc" in r]
    first_best = max(evals, key=lambda r: (r["test_acc"], -r["iter"]))  # the first record reaching the maximum
    assert _iteration(os.path.join(out, "best_acc.pt")) == first_best["iter"]
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "ckpt_e*.pt"))) == ["ckpt_e002.pt"]
    assert _iteration(os.path.join(out, "ckpt_e002.pt")) == 4 and _iteration(os.path.join(out, "ckpt.pt")) == 6
    assert os.path.isfile(os.path.join(out, "samples", "p0_mean.png"))
    assert os.path.isfile(os.path.join(out, "samples", "p0_samples.png"))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(os.path.join(out, "events.out.tfevents.*"))
    acc = EventAccumulator(events, size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/e_pos", "train/e_neg", "train/acc", "train/lr", "eval/test_acc", "fid/fid",
            "fid/is_mean"} <= set(tags["scalars"])
    # TensorBoard keeps a scalar as float32: the logged value rounded once
    as_float32 = [float(torch.tensor(r["fid"], dtype=torch.float32)) for r in fid]
    assert [e.value for e in acc.Scalars("fid/fid")] == as_float32
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 7))
    assert "samples/iter" in tags["images"] and len(acc.Images("samples/iter")) == 3  # one grid per epoch


@pytest.mark.slow
def test_in_training_fid_follows_the_authors_cadence_and_filter(tmp_path, fast_fid):
    """First epoch, every fid_every-th after it, the last (mebm train_maebm.py); M-JEM's FID scores the most
    confident 90 % of each predicted class and its IS the most confident 10 % (cond_is_fid), at least 2 images."""
    out = str(tmp_path / "run")
    run = [a if a != "32" or i == 0 or RUN[i - 1] != "--buffer-size" else "200" for i, a in enumerate(RUN)]
    assert main([*run, "--out", out, "--fid-every", "2", "--random-inception", "--epochs", "4"]) == 0
    fid = _records(out, "fid")
    assert [r["epoch"] for r in fid] == [1, 3, 4]
    assert all(r["keep_ratio"] == 0.9 and r["is_keep_ratio"] == 0.1 and r["n_buffer"] == 200 for r in fid), fid
    assert all(170 <= r["n_fake"] < 200 and 2 <= r["n_is"] <= 20 for r in fid), fid
    # Task/eval_buffer.py @20bbf21: IS over max(1, N // 5000) splits; digits' reference: its training images
    assert all(r["is_splits"] == 1 and r["real_split"] == "train" and r["n_real"] == 40 for r in fid), fid
    assert all(r["protocol"] == "mebm train_maebm.py, Task/eval_buffer.py @20bbf21" for r in fid)


def test_in_training_filter_ranks_by_probability_not_by_logit(monkeypatch):
    """mebm Task/eval_buffer.py ranks each predicted class by the largest softmax probability: of two images of a
    class, the one with the larger top logit but a close second class is less confident than the one whose smaller
    top logit stands far above the rest, and the filter keeps the latter."""
    from fastebm.config.options import resolve
    from fastebm.evaluation import bufferfid

    logits = torch.tensor([[5.0, 4.9, 0.0], [3.0, -10.0, -10.0],  # class 0: top logit 5 > 3, probability .52 < 1.00
                           [0.0, 2.0, 1.9], [-5.0, 1.0, -5.0]])   # class 1: top logit 2 > 1, probability .49 < .997
    monkeypatch.setattr(bufferfid, "model_outputs", lambda model, x, batch, device: (torch.zeros(len(x)), logits))
    cfg = resolve(dict(dataset="digits", fid_keep_ratio=0.5, is_keep_ratio=0.5))
    keep_fid, keep_is = bufferfid.confident_subsets(None, torch.zeros(4, 3, 8, 8), cfg, "cpu")
    assert keep_fid.tolist() == keep_is.tolist() == [1, 3]  # ranked by the raw logits it would be [0, 2]


def test_fid_every_without_inception_weights_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(SystemExit) as e:
        main([*RUN, "--out", str(tmp_path / "run"), "--fid-every", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--inception-weights" in err[0] and "--fid-every" in err[0]


def test_fid_is_off_by_default_on_the_cpu(tmp_path):
    out = str(tmp_path / "run")
    assert main([*RUN, "--out", out, "--epochs", "1", "--no-tensorboard"]) == 0
    assert _records(out, "fid") == [] and not os.path.exists(os.path.join(out, "best_fid.pt"))
    assert json.load(open(os.path.join(out, "config.json")))["fid_every"] == 0
    assert not glob.glob(os.path.join(out, "events.out.tfevents.*"))


def test_a_run_without_tensorboard_installed_warns_and_writes_no_event_file(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    out = str(tmp_path / "run")
    with pytest.warns(UserWarning, match="tensorboard is not installed"):
        assert main([*RUN, "--out", out, "--epochs", "1"]) == 0
    assert not glob.glob(os.path.join(out, "events.out.tfevents.*"))
    assert len(_records(out, "train")) == 2  # the run itself is complete
