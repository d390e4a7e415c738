"""The Inception weights file is checked at the start of a run or an evaluation (fastebm.evaluation.inception), not at
the first FID: a truncated download and torchvision's ImageNet inception_v3 weights given by mistake stop in one line
naming --inception-weights, what is wrong and where the right file comes from."""
import os

import pytest
import torch

from fastebm.config.options import resolve
from fastebm.eval import main as eval_main
from fastebm.evaluation import inception as I  # noqa: E741
from fastebm.run.trainer import Trainer
from fastebm.train import main as train_main

RIGHT = f"expected pytorch-fid's {I.FID_WEIGHTS_FILENAME}, from {I.FID_WEIGHTS_URL}"
RUN = ["--dataset", "digits", "--depth", "10", "--width", "1", "--k", "1", "--buffer-size", "16", "--batch-size", "8",
       "--cls-batch-size", "8", "--train-subset", "40", "--epochs", "1", "--iters-per-epoch", "1", "--no-progress",
       "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The FID Inception's names and shapes (random values), that file cut short, torchvision's inception_v3."""
    import torchvision

    tmp = tmp_path_factory.mktemp("weights")
    right = str(tmp / "fid.pth")
    torch.save(I.random_inception_state_dict(0), right)
    truncated = str(tmp / "truncated.pth")
    with open(right, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read(os.path.getsize(right) // 3))  # a download cut short
    imagenet = str(tmp / "inception_v3_google.pth")
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)  # its ImageNet layout
    torch.save(net.state_dict(), imagenet)
    return {"right": right, "truncated": truncated, "imagenet": imagenet}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "r")
    Trainer(resolve(dict(dataset="digits", depth=10, width=1, k=1, buffer_size=16, batch_size=8, cls_batch_size=8,
                         train_subset=40, epochs=1, iters_per_epoch=1, progress=False, out=out))).fit()
    return os.path.join(out, "ckpt.pt")


def test_the_file_is_read_whole_and_its_names_and_shapes_checked(files, tmp_path):
    state = I.read_inception_weights(files["right"])
    assert set(state) == set(I.expected_inception_shapes()) and len(state) > 300
    with pytest.raises(I.InceptionWeightsError) as e:
        I.read_inception_weights(files["truncated"])
    size = os.path.getsize(files["truncated"])
    assert str(e.value).startswith(f"--inception-weights {files['truncated']!r}: truncated or not a torch file "
                                   f"({size} bytes: ") and str(e.value).endswith(RIGHT)
    with pytest.raises(I.InceptionWeightsError, match="torchvision's ImageNet inception_v3 weights \\(1000 classes, "
                                                      "AuxLogits\\), not the FID Inception's"):
        I.read_inception_weights(files["imagenet"])
    partial = {k: v for k, v in state.items() if not k.startswith("Mixed_7c")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(I.InceptionWeightsError, match=r"not the FID Inception's weights: tensors \d+ missing "
                                                      r"\('Mixed_7c\.branch1x1"):
        I.read_inception_weights(str(tmp_path / "partial.pth"))
    torch.save(dict(state, **{"fc.bias": torch.full((1008,), float("nan"))}), tmp_path / "nan.pth")
    with pytest.raises(I.InceptionWeightsError, match="non-finite values in 1 tensor\\(s\\) \\('fc.bias'\\)"):
        I.read_inception_weights(str(tmp_path / "nan.pth"))
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "module.pth")  # a pickled module: would run code
    with pytest.raises(I.InceptionWeightsError, match="refused, it holds objects that would run code"):
        I.read_inception_weights(str(tmp_path / "module.pth"))


@pytest.mark.parametrize("which, what", [("truncated", "truncated or not a torch file"),
                                         ("imagenet", "torchvision's ImageNet inception_v3 weights")])
def test_a_wrong_weights_file_stops_an_evaluation_at_start(files, ckpt, tmp_path, capsys, which, what):
    with pytest.raises(SystemExit) as e:
        eval_main(["--ckpt", ckpt, "--task", "acc", "fid", "--inception-weights", files[which], "--out", str(tmp_path),
                   "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert f"error: --inception-weights {files[which]!r}: {what}" in err[0] and err[0].endswith(RIGHT), err
    assert not os.path.exists(tmp_path / "acc.json")  # refused before the first task, not at the FID


@pytest.mark.parametrize("which, what", [("truncated", "truncated or not a torch file"),
                                         ("imagenet", "torchvision's ImageNet inception_v3 weights")])
def test_a_wrong_weights_file_stops_a_training_run_at_start(files, tmp_path, capsys, which, what):
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        train_main([*RUN, "--fid-every", "1", "--inception-weights", files[which], "--out", out])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert f"error: --inception-weights {files[which]!r}: {what}" in err[0], err
    assert err[0].endswith(f"{RIGHT}; or --fid-every 0") and not os.path.exists(out)


def test_the_default_file_damaged_turns_the_default_fid_off_with_a_warning(files, tmp_path, monkeypatch):
    """On CUDA FID is on by default; a damaged file in pytorch-fid's cache then turns it off (as a missing one),
    naming the file and --inception-weights; an explicit --fid-every refuses it."""
    from fastebm.run.completion import fid_cadence

    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    os.link(files["truncated"], hub / "checkpoints" / I.FID_WEIGHTS_FILENAME)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    cfg = resolve(dict(dataset="digits", fid_every=5))
    with pytest.warns(UserWarning, match="the FID Inception weights at .*hub/checkpoints/pt_inception.*--inception-"
                                         "weights PATH names another file\\): truncated.*in-training FID is off"):
        assert fid_cadence(cfg, explicit=False) == 0
    with pytest.raises(ValueError, match="truncated or not a torch file"):
        fid_cadence(cfg, explicit=True)
    assert fid_cadence(resolve(dict(dataset="digits", fid_every=5, inception_weights=files["right"])), True) == 5
