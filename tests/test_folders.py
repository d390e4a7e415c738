"""Folders as people leave them: classes by name across splits, images in subfolders of a class folder, folders
that are not classes, hidden entries, every image 8-bit RGB or refused by name, images too large to decode refused
before decoding, no test split; and a folder that loaded before loads the same images in the same order."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastebm.config.options import resolve
from fastebm.data.datasets import load_dataset
from fastebm.data.imagefiles import ImageError, read_image
from fastebm.data.imageset import DatasetError
from fastebm.run.trainer import Trainer


def _png(path, color=(255, 0, 0), size=8):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


RED = {"cat": 40, "dog": 80, "owl": 120, "emu": 160}  # each class's images have their own colour


def _layout(root, train=("cat", "dog", "owl"), test=("dog", "owl")):
    for split, classes in (("train", train), ("test", test)):
        for c in classes:
            for k in range(2):
                _png(str(root / split / c / f"{k}.png"), color=(RED[c], 0, 0))


def test_another_split_maps_its_classes_by_name(tmp_path):
    _layout(tmp_path)
    train = load_dataset("folder", str(tmp_path), "train")
    test = load_dataset("folder", str(tmp_path), "test", classes=train.classes)
    assert train.classes == ["cat", "dog", "owl"] and test.n_classes == 3
    assert test.labels.tolist() == [1, 1, 2, 2]  # dog, owl keep the training split's numbers (not 0, 1)
    by_label = {int(y): int(x[0, 0, 0]) for x, y in zip(test.images, test.labels)}
    assert by_label == {1: 80, 2: 120}  # the images of each class, not shifted


def test_a_split_with_a_class_the_training_split_lacks_stops_at_start(tmp_path):
    _layout(tmp_path, test=("dog", "emu"))
    with pytest.raises(DatasetError, match="class folder\\(s\\) the training split lacks: emu"):
        Trainer(resolve(dict(dataset="folder", data_root=str(tmp_path), depth=10, width=1, buffer_size=8,
                             batch_size=2, cls_batch_size=2, epochs=1, iters_per_epoch=1, out=str(tmp_path / "r"))))
    assert not (tmp_path / "r" / "ckpt.pt").exists()


def test_folders_that_are_not_classes_are_not_classes(tmp_path, capsys):
    _layout(tmp_path, test=("dog",))
    os.makedirs(tmp_path / "train" / ".ipynb_checkpoints")
    _png(str(tmp_path / "train" / ".ipynb_checkpoints" / "x.png"))
    os.makedirs(tmp_path / "train" / "notes")
    (tmp_path / "train" / "notes" / "readme.txt").write_text("not an image")
    data = load_dataset("folder", str(tmp_path), "train")
    assert data.classes == ["cat", "dog", "owl"] and data.n_classes == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipping 1 folder(s) without images" in err[0] and "notes" in err[0]


def test_every_image_becomes_8_bit_rgb(tmp_path):
    grey16 = np.full((4, 4), 65535, np.uint16)
    grey16[0, 0] = 257 * 100
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    x = read_image(str(tmp_path / "g16.png"))
    assert x.dtype == torch.uint8 and x.shape == (3, 4, 4) and int(x.max()) == 255 and int(x[0, 0, 0]) == 100
    Image.new("P", (4, 4), 3).save(tmp_path / "p.png")
    Image.new("LA", (4, 4), (90, 10)).save(tmp_path / "la.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    for name in ("p.png", "la.png", "cmyk.jpg"):
        x = read_image(str(tmp_path / name))
        assert x.dtype == torch.uint8 and x.shape == (3, 4, 4), name
    assert read_image(str(tmp_path / "la.png"))[:, 0, 0].tolist() == [90, 90, 90]
    assert read_image(str(tmp_path / "cmyk.jpg"))[0, 0, 0] > 200  # red stays red
    Image.new("F", (4, 4), 0.5).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match="f.tif.*floating-point"):
        read_image(str(tmp_path / "f.tif"))


@pytest.mark.parametrize("ext", ["bmp", "webp", "gif", "jpg"])
def test_formats_pillow_decodes_load(tmp_path, ext):
    for c in ("a", "b"):
        os.makedirs(tmp_path / "train" / c)
        Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "train" / c / f"0.{ext}")
    data = load_dataset("folder", str(tmp_path), "train")
    assert data.images.shape == (2, 3, 8, 8) and data.classes == ["a", "b"]


def test_an_image_larger_than_the_decompression_bomb_limit_is_refused_by_name(tmp_path, monkeypatch):
    _png(str(tmp_path / "train" / "a" / "big.png"), size=64)  # 4,096 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice its limit
    with pytest.raises(DatasetError, match="big.png.*decompression-bomb limit"):
        load_dataset("folder", str(tmp_path), "train")


def test_a_folder_without_a_test_split_says_so_once(tmp_path, capsys):
    for c in ("a", "b"):
        for k in range(4):
            _png(str(tmp_path / "train" / c / f"{k}.png"))
    t = Trainer(resolve(dict(dataset="folder", data_root=str(tmp_path), depth=10, width=1, buffer_size=8,
                             batch_size=2, cls_batch_size=2, epochs=1, iters_per_epoch=2, eval_every=1,
                             progress=False, out=str(tmp_path / "r"))))
    t.fit()
    err = capsys.readouterr().err
    assert err.count("no test/ or val/ folder") == 1


def test_long_steps_report_progress_in_a_redirected_log(tmp_path, monkeypatch, capsys):
    """Decoding a folder and fitting p0 say what they do and how much is left (plain lines, no carriage
    returns, when stderr is not a terminal); here every step is 'long' (a report due at once)."""
    import functools

    import fastebm.data.folders as data_mod
    import fastebm.io.progress as progress_mod
    import fastebm.p0.gaussian as init_mod
    from fastebm.p0.gaussian import fit_gaussian

    _layout(tmp_path)
    monkeypatch.setattr(data_mod, "progress", functools.partial(progress_mod.progress, every_s=1e-9))
    monkeypatch.setattr(init_mod, "Progress", functools.partial(progress_mod.Progress, every_s=1e-9))
    train = load_dataset("folder", str(tmp_path), "train")
    fit_gaussian(train.images, batch_size=2)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "fastebm: folder: decoding train images 1/6 (17 %" in err and "6/6 images, done in" in err
    assert "fastebm: fitting p0 (Eq. 6) 2/6 (33 %" in err


def test_every_image_under_a_class_folder_belongs_to_it_in_imagefolder_order(tmp_path, capsys):
    """train/cat/2019/*.png, a class whose images all sit in train/bird/batch1/: 30 images, as torchvision's
    ImageFolder finds them (the same files, labels and order); hidden entries at any depth are skipped."""
    from torchvision.datasets import ImageFolder

    layout = {"bird/batch1": 6, "bird/batch2/deep": 2, "cat": 4, "cat/2019": 5, "cat/2020": 3, "dog": 7, "dog/x": 3}
    for k, (sub, n) in enumerate(layout.items()):
        for i in range(n):
            _png(str(tmp_path / "train" / sub / f"{i:02d}.png"), color=(10 * k, 5 * i, 0))
    reference = ImageFolder(str(tmp_path / "train")).samples  # before the hidden entries: it reads them too
    _png(str(tmp_path / "train" / "cat" / ".thumbnails" / "t.png"))
    _png(str(tmp_path / "train" / "dog" / "__MACOSX" / "d.png"))
    (tmp_path / "train" / "cat" / "2019" / "._00.png").write_bytes(b"\0\5\0\7 AppleDouble")  # macOS metadata
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    data = load_dataset("folder", str(tmp_path), "train")
    assert len(reference) == 30 and len(data) == 30 and data.classes == ["bird", "cat", "dog"]
    assert data.labels.tolist() == [label for _, label in reference]
    for x, (path, _) in zip(data.images, reference):
        assert torch.equal(x, read_image(path)), path
    assert capsys.readouterr().err == ""  # nothing left out, nothing to say
    few = load_dataset("folder", str(tmp_path), "train", max_per_class=5)  # the first in load order
    assert few.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert torch.equal(few.images[:10], torch.cat([data.images[:5], data.images[8:13]]))  # bird; cat, 2019/00


def test_loose_images_and_folders_without_images_are_said_not_lost_in_silence(tmp_path, capsys):
    _layout(tmp_path)
    _png(str(tmp_path / "train" / "stray.png"))
    os.makedirs(tmp_path / "train" / "empty" / "sub")
    load_dataset("folder", str(tmp_path), "train")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "skipping 1 folder(s) without images" in err[0] and "empty" in err[0], err
    assert "skipping 1 image file(s) directly in" in err[1] and "stray.png" in err[1], err


def test_the_banner_says_how_many_images_each_split_has(tmp_path):
    from fastebm.train import banner

    _layout(tmp_path)
    _png(str(tmp_path / "test" / "owl" / "more" / "9.png"), color=(RED["owl"], 0, 0))
    t = Trainer(resolve(dict(dataset="folder", data_root=str(tmp_path), depth=10, width=1, buffer_size=8,
                             batch_size=2, cls_batch_size=2, epochs=1, iters_per_epoch=1, out=str(tmp_path / "r"))))
    assert "(6 training and 5 test images, 8px, 3 classes)" in banner(t, "1 thread")
    t = Trainer(resolve(dict(dataset="folder", data_root=str(tmp_path), depth=10, width=1, buffer_size=8,
                             batch_size=2, cls_batch_size=2, epochs=1, iters_per_epoch=1, test_subset=3,
                             out=str(tmp_path / "s"))))
    assert "(6 training and 3 test images," in banner(t, "1 thread")


def test_a_folder_that_loaded_before_loads_the_same_images_in_the_same_order(cifar_root):
    """The rule before subfolders were read: the sorted class folders holding images, in each the image files
    directly in it, sorted by name, the first max_per_class; decoded here by Pillow directly."""
    for split in ("train", "test"):
        split_dir = os.path.join(cifar_root, split)
        before = []
        classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
        for label, cls in enumerate(classes):
            names = sorted(f for f in os.listdir(os.path.join(split_dir, cls)) if f.lower().endswith(".jpg"))[:3]
            before += [(os.path.join(split_dir, cls, f), label) for f in names]
        data = load_dataset("folder", cifar_root, split, max_per_class=3)
        assert len(data) == len(before) == 30 and data.labels.tolist() == [y for _, y in before]
        for x, (path, _) in zip(data.images, before):
            with Image.open(path) as img:
                expected = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
            assert torch.equal(x, expected), path


@pytest.mark.parametrize("orientation, turns", [(3, 2), (6, -1), (8, 1)])  # np.rot90 turns: + counter-clockwise
def test_phone_photos_load_as_a_viewer_shows_them(tmp_path, orientation, turns):
    """A JPEG stored sideways with EXIF Orientation 6 / 8 (or upside down, 3) loads turned upright: what a
    photo viewer (and ImageOps.exif_transpose) shows, here computed with np.rot90 of the stored pixels."""
    stored = np.zeros((16, 24, 3), np.uint8)  # not square, one bright corner block: every turn looks different
    stored[:4, :6] = (250, 40, 40)
    stored[12:, 6:] = (30, 30, 200)
    exif = Image.Exif()
    exif[274] = orientation
    path = tmp_path / "train" / "cat" / f"o{orientation}.jpg"
    os.makedirs(path.parent)
    Image.fromarray(stored).save(path, quality=100, exif=exif.tobytes())
    with Image.open(path) as img:  # the stored pixels, as decoded (JPEG is lossy: not `stored` exactly)
        as_stored = np.array(img.convert("RGB"))
    shown = torch.from_numpy(np.ascontiguousarray(np.rot90(as_stored, turns))).permute(2, 0, 1)
    assert torch.equal(read_image(str(path)), shown)
    data = load_dataset("folder", str(tmp_path), "train")  # the folder reader goes through it
    assert torch.equal(data.images[0], shown)
    if orientation != 3:
        assert data.images.shape == (1, 3, 24, 16)  # upright: taller than wide
    Image.fromarray(stored).save(tmp_path / "plain.jpg", quality=100)  # no EXIF: as stored
    with Image.open(tmp_path / "plain.jpg") as img:
        assert torch.equal(read_image(str(tmp_path / "plain.jpg")), torch.from_numpy(np.array(img)).permute(2, 0, 1))


@pytest.mark.parametrize("ext", ["png", "webp", "tif"])
def test_the_orientation_tag_of_lossless_formats_is_applied_too(tmp_path, ext):
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[274] = 6
    path = str(tmp_path / f"o6.{ext}")
    Image.fromarray(stored).save(path, exif=exif.tobytes(), **({"lossless": True} if ext == "webp" else {}))
    assert torch.equal(read_image(path), torch.from_numpy(np.ascontiguousarray(np.rot90(stored, -1))).permute(2, 0, 1))


def test_a_resume_refuses_data_whose_class_names_changed(tmp_path, capsys):
    """airplane renamed plane in train/ and test/: 8 of 10 classes would get other label numbers under the trained
    classifier. --resume PATH and --resume auto both stop in one line naming the change; the checkpoint stays."""
    from fastebm.train import main

    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split in ("train", "test"):
        for i, c in enumerate(names):
            _png(str(tmp_path / "data" / split / c / "0.png"), color=(20 * i, 0, 0))
    out = str(tmp_path / "run")
    argv = ["--dataset", "folder", "--data-root", str(tmp_path / "data"), "--depth", "10", "--width", "1",
            "--buffer-size", "10", "--batch-size", "2", "--cls-batch-size", "2", "--epochs", "2",
            "--iters-per-epoch", "1", "--keep-every", "1", "--no-progress", "--out", out]
    assert main(argv) == 0
    ckpt = os.path.join(out, "ckpt.pt")
    os.replace(os.path.join(out, "ckpt_e001.pt"), ckpt)  # a run stopped after its first epoch
    before = open(ckpt, "rb").read()
    for split in ("train", "test"):
        os.rename(tmp_path / "data" / split / "airplane", tmp_path / "data" / split / "plane")
    for resume in ([ckpt], ["auto"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv + ["--resume", *resume])
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "error:" in line]  # after the banner
        assert e.value.code == 2 and len(err) == 1, err
        assert "trained on other classes than the data's now ('airplane' gone, 'plane' new: 8 of 10 labels change " \
               "meaning)" in err[0], err
    assert open(ckpt, "rb").read() == before
    for split in ("train", "test"):  # the names back: the run goes on
        os.rename(tmp_path / "data" / split / "plane", tmp_path / "data" / split / "airplane")
    assert main(argv + ["--resume", "auto"]) == 0


def _unreadable(path, monkeypatch):
    """Make the folder ``path`` unreadable: chmod 000, or where that does not stop a reader (root, as on CI)
    the kernel's answer to one it stops, EACCES from os.scandir for that folder."""
    import errno

    os.chmod(path, 0)
    try:
        os.listdir(path)
    except PermissionError:
        return
    real = os.scandir

    def scandir(p="."):
        if not isinstance(p, int) and os.path.abspath(os.fspath(p)) == os.path.abspath(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(p))
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("where", ["train/dog", "train/dog/2019", "test/owl", "train"])
def test_a_folder_that_cannot_be_read_stops_the_run_in_one_line_naming_it(tmp_path, monkeypatch, capsys, where):
    """Permissions: a class folder, a folder inside one, a class folder of the test split (found at start, not
    after an epoch), the split folder itself."""
    from fastebm.train import main

    _layout(tmp_path / "data")
    _png(str(tmp_path / "data" / "train" / "dog" / "2019" / "0.png"), color=(RED["dog"], 0, 0))
    path = str(tmp_path / "data" / where)
    try:
        _unreadable(path, monkeypatch)
        with pytest.raises(SystemExit) as e:
            main(["--dataset", "folder", "--data-root", str(tmp_path / "data"), "--depth", "10", "--width", "1",
                  "--buffer-size", "8", "--batch-size", "2", "--cls-batch-size", "2", "--epochs", "1",
                  "--iters-per-epoch", "1", "--out", str(tmp_path / "run")])
    finally:
        os.chmod(path, 0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert f"error: folder: cannot read {path!r} (Permission denied)" in err[0], err
    assert not os.path.exists(tmp_path / "run")


def test_a_link_to_storage_that_is_not_mounted_is_named_not_skipped(tmp_path):
    _layout(tmp_path)
    gone = "/mnt/fastebm-not-mounted-here/cifar"
    os.symlink(gone + "/train/emu", tmp_path / "train" / "emu")  # one class on another disk
    with pytest.raises(DatasetError, match=f"'{tmp_path}/train/emu' is a link to '{gone}/train/emu', which "
                                           "cannot be reached \\(storage not mounted on this node\\?\\)"):
        load_dataset("folder", str(tmp_path), "train")
    os.remove(tmp_path / "train" / "emu")
    os.symlink(gone + "/cat/a.png", tmp_path / "train" / "cat" / "a.png")  # one image
    with pytest.raises(DatasetError, match="cat/a.png' is a link to"):
        load_dataset("folder", str(tmp_path), "train")
    os.rename(tmp_path / "test", tmp_path / "test-local")
    os.symlink(gone + "/test", tmp_path / "test")  # the whole split
    with pytest.raises(DatasetError, match=f"'{tmp_path}/test' is a link to '{gone}/test', which cannot be reached"):
        load_dataset("folder", str(tmp_path), "test", classes=["cat", "dog", "owl"])
