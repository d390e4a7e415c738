import os
import pickle

import numpy as np
import pytest
import torch

from fastebm.data.datasets import load_dataset
from fastebm.data.imageset import Batches, DatasetError, ImageSet, augment, to_float, to_uint8
from fastebm.fastpath.numerics import tolerance


def _imagenet32_dict(n=4):
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[0, :1024] = 255  # row 0: red plane full, green and blue empty → pure red
    data[1, 1024:2048] = 255  # row 1: pure green
    data[2, 2048:] = 255  # row 2: pure blue
    data[3, :32] = 200  # row 3: first row of the red plane only
    return {"data": data, "labels": [1, 2, 1000, 5], "mean": np.zeros(3072)}


@pytest.mark.parametrize("fmt", ["pickle", "npz"])
def test_imagenet32_layout(tmp_path, fmt):
    d = _imagenet32_dict()
    if fmt == "pickle":
        with open(tmp_path / "train_data_batch_1", "wb") as f:
            pickle.dump(d, f)
        with open(tmp_path / "val_data", "wb") as f:
            pickle.dump(d, f)
    else:
        np.savez(tmp_path / "train_data_batch_1.npz", **d)
        np.savez(tmp_path / "val_data.npz", **d)
    ds = load_dataset("imagenet32", str(tmp_path), "train")
    assert ds.images.shape == (4, 3, 32, 32) and ds.n_classes == 1000
    assert ds.labels.tolist() == [0, 1, 999, 4]
    red, green, blue = ds.images[0], ds.images[1], ds.images[2]
    assert torch.all(red[0] == 255) and torch.all(red[1:] == 0)
    assert torch.all(green[1] == 255) and torch.all(green[[0, 2]] == 0)
    assert torch.all(blue[2] == 255) and torch.all(blue[:2] == 0)
    assert torch.all(ds.images[3, 0, 0] == 200) and torch.all(ds.images[3, 0, 1:] == 0)  # rows of 32
    assert len(load_dataset("imagenet32", str(tmp_path), "test")) == 4


def test_imagenet32_malformed(tmp_path):
    with pytest.raises(DatasetError, match="train_data_batch_1"):
        load_dataset("imagenet32", str(tmp_path))
    (tmp_path / "train_data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="could not read"):
        load_dataset("imagenet32", str(tmp_path))
    d = _imagenet32_dict()
    d["data"] = d["data"][:, :100]
    with open(tmp_path / "train_data_batch_1", "wb") as f:
        pickle.dump(d, f)
    with pytest.raises(DatasetError, match="N×3072"):
        load_dataset("imagenet32", str(tmp_path))
    d = _imagenet32_dict()
    d["labels"] = [0, 1, 2, 3]
    with open(tmp_path / "train_data_batch_1", "wb") as f:
        pickle.dump(d, f)
    with pytest.raises(DatasetError, match="1..1000"):
        load_dataset("imagenet32", str(tmp_path))


def test_folder_layout_reads_real_cifar_jpegs(cifar_root):
    ds = load_dataset("folder", cifar_root, "train", max_per_class=3)
    assert ds.images.shape == (30, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.n_classes == 10 and ds.labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert ds.images.float().std() > 20  # real photographs, not blank
    assert len(load_dataset("folder", cifar_root, "test", max_per_class=2)) == 20


def test_folder_with_png_and_resize(tmp_path):
    from fastebm.data.imagefiles import save_png

    for split in ("train", "val"):
        for cls in ("a", "b"):
            os.makedirs(tmp_path / split / cls)
            img = torch.zeros(3, 40, 40, dtype=torch.uint8)
            img[0] = 255  # red
            save_png(str(tmp_path / split / cls / "0.png"), img)
    ds = load_dataset("celebahq128", str(tmp_path), "train")
    assert ds.images.shape == (2, 3, 128, 128)
    assert torch.all(ds.images[:, 0] == 255) and torch.all(ds.images[:, 1:] == 0)
    assert len(load_dataset("folder", str(tmp_path), "test")) == 2  # test falls back to val/


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="class folders"):
        load_dataset("folder", str(tmp_path))
    os.makedirs(tmp_path / "train" / "cat")
    with pytest.raises(DatasetError, match="found none"):
        load_dataset("folder", str(tmp_path))
    (tmp_path / "train" / "cat" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="x.jpg'?: cannot be decoded"):
        load_dataset("folder", str(tmp_path))


def test_digits_embedded():
    tr, te = load_dataset("digits"), load_dataset("digits", split="test")
    assert tr.images.shape[1:] == (3, 32, 32) and len(tr) + len(te) == 1797
    assert set(tr.labels.tolist()) == set(range(10)) and tr.images.max() == 255


def test_bad_names_and_missing_roots(tmp_path):
    with pytest.raises(DatasetError, match="expected one of"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="--data-root"):
        load_dataset("cifar10")
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset("cifar10", str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="expected the CIFAR Python files"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(DatasetError, match="split"):
        load_dataset("digits", split="validation")


def test_value_mapping_and_augment():
    u8 = torch.tensor([0, 255, 128], dtype=torch.uint8)
    # fp32 u / 127.5 − 1: a division and a subtraction (2 roundings) of terms ≤ 2
    want = torch.tensor([-1.0, 1.0, 128 / 127.5 - 1])
    torch.testing.assert_close(to_float(u8), want, **tolerance(ops=2, magnitude=2))
    assert torch.equal(to_uint8(to_float(u8)), u8)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    torch.manual_seed(0)
    outs = [augment(x) for _ in range(20)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not torch.equal(o, x) for o in outs)
    # Every output is a crop of the reflect-padded image, possibly flipped.
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    o = outs[0][0]
    crops = [padded[0, :, i:i + 8, j:j + 8] for i in range(9) for j in range(9)]
    assert any(torch.equal(o, c) or torch.equal(o, c.flip(2)) for c in crops)


def test_batches_are_a_pure_function_of_iteration():
    ds = ImageSet(torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8), torch.arange(10), 10, "toy")
    b = Batches(ds, 4, "cpu", seed=3)
    seen = torch.cat([b.indices(i) for i in range(5)])  # 20 samples = two passes
    assert sorted(seen[:8].tolist() + b.indices(2)[:2].tolist()) == list(range(10))
    assert torch.equal(Batches(ds, 4, "cpu", seed=3).indices(3), b.indices(3))
    x, y = b.get(1)
    assert x.shape == (4, 3, 4, 4) and torch.equal(y, b.indices(1))


def test_every_dataset_is_one_registry_entry():
    """A dataset is one entry of fastebm.data.datasets.DATASETS: the CLI offers it, its preset holds Config fields
    that resolve() applies, and its declared sizes are the ones the config uses before loading any data."""
    import dataclasses

    from fastebm.config.limits import CHOICES
    from fastebm.config.options import NATIVE_IMAGE_SIZES, TRAIN_SIZES, Config, resolve
    from fastebm.data.datasets import DATASETS

    assert CHOICES["dataset"] == tuple(DATASETS)
    fields = {f.name for f in dataclasses.fields(Config)}
    for name, spec in DATASETS.items():
        assert set(spec.preset) <= fields, name
        cfg = resolve(dict(dataset=name))
        assert all(getattr(cfg, k) == v for k, v in spec.preset.items()), name
        assert TRAIN_SIZES.get(name) == spec.train_size and NATIVE_IMAGE_SIZES.get(name) == spec.image_size
    assert load_dataset("digits").images.shape[-1] == DATASETS["digits"].image_size
