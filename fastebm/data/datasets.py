"""The datasets: one :class:`Dataset` entry per ``--dataset`` name in :data:`DATASETS`, holding how it is read,
its sizes and its preset (the Config values a paper run on it uses, each with its source). Adding a dataset
is one entry here (and its reader, if it has a new file format).

Every reader returns an :class:`~fastebm.data.imageset.ImageSet`: images (N, 3, H, W) uint8 in [0, 255] and labels
(N,) int64 in [0, n_classes).

- ``digits``: scikit-learn's bundled handwritten digits (1,797 8×8 images, 16 grey levels), resized to
  32×32, 3 channels; the embedded default, no download. Split: every 5th image is the test set.
- ``cifar10`` / ``cifar100``: the authors' Python format under ``root`` (``cifar-10-batches-py``,
  ``cifar-100-python``, as torchvision unpacks it); downloaded only with ``download=True``.
- ``imagenet32``: the official Downsampled-ImageNet 32×32 files ``train_data_batch_1..10`` and
  ``val_data`` (pickled dicts or ``.npz``) with keys ``data`` (N×3072 uint8: all red values, then all
  green, then all blue, rows of 32), ``labels`` (1..1000) → labels 0..999.
- ``celebahq128`` / ``folder``: class-folder layout ``root/train/<class>/...`` and ``root/test/`` (or
  ``root/val/``), every image under a class folder at any depth; the classes are the training split's sorted
  class folders (those holding images), and the other split maps to them by name (:mod:`fastebm.data.folders`).
  ``celebahq128`` resizes to 128×128.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F

from .folders import check_test_split, load_folder
from .imagefiles import resize
from .imageset import DatasetError, ImageSet


def _check_images(images: torch.Tensor, where: str) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise DatasetError(f"{where}: expected a non-empty (N, 3, H, W) uint8 image array, "
                           f"got shape {tuple(images.shape)} dtype {images.dtype}")
    return images.contiguous()


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (images (1797, 8, 8) float64 in 0..16, labels (1797,) int64).

    Read straight from the package's ``datasets/data/digits.csv.gz`` (64 pixel values and the label per row,
    the file ``sklearn.datasets.load_digits`` parses) without importing scikit-learn, whose import pulls in
    SciPy and costs more start-up than reading the file. Falls back to
    ``load_digits`` when the file is not where scikit-learn 1.3–1.9 keep it.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without running its __init__
    path = (os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
            if spec is not None and spec.origin else None)
    if path is None or not os.path.isfile(path):
        from sklearn.datasets import load_digits as _load

        bunch = _load()
        return bunch.images, bunch.target.astype(np.int64)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def load_digits(split: str = "train", image_size: int = 32) -> ImageSet:
    """scikit-learn's handwritten digits, resized to image_size² and repeated to 3 channels."""
    pixels, target = _digits_arrays()
    grey = torch.from_numpy(pixels).float().div(16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    grey = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (grey.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(target).long()
    test = torch.arange(len(labels)) % 5 == 0
    keep = test if split == "test" else ~test
    return ImageSet(images[keep].contiguous(), labels[keep].contiguous(), 10, "digits")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, strings and NumPy arrays, and refuses everything else: the dataset
    pickles (CIFAR, ImageNet 32×32) hold nothing more, and a pickle from a stranger then cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # how protocol-2 pickles of Python 3 store bytes

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed (only NumPy arrays and plain values)")
        if module.startswith("numpy.core"):  # written by NumPy 1; NumPy 2 keeps these under numpy._core
            module = "numpy._core" + module[len("numpy.core"):] if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_pickle(path: str):
    """The object in a dataset pickle, read by :class:`_ArraysOnly` (latin-1 for Python 2 pickles)."""
    with open(path, "rb") as f:
        return _ArraysOnly(f, encoding="latin1").load()


CIFAR_FILES = {10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
               100: ("cifar-100-python", ["train"], ["test"], "fine_labels")}
CIFAR_URLS = {10: ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
              100: ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")}


def download_archive(url: str, md5: str, root: str, name: str) -> None:
    """Fetch the tar.gz at ``url`` into ``root``, check its MD5, and unpack its regular files and folders
    (no links, no paths outside ``root``). Raises DatasetError in one line when the download fails (no
    network, say), saying where to put the files instead."""
    import hashlib
    import tarfile
    import urllib.request

    os.makedirs(root, exist_ok=True)
    archive = os.path.join(root, os.path.basename(url))
    try:
        if not os.path.isfile(archive) or hashlib.md5(open(archive, "rb").read()).hexdigest() != md5:
            urllib.request.urlretrieve(url, archive + ".part")
            os.replace(archive + ".part", archive)
    except OSError as e:  # URLError is an OSError
        raise DatasetError(f"{name}: download of {url} failed ({getattr(e, 'reason', e)}); fetch it elsewhere and "
                           f"unpack it under --data-root {root!r}") from None
    with open(archive, "rb") as f:
        got = hashlib.md5(f.read()).hexdigest()
    if got != md5:
        raise DatasetError(f"{name}: {archive!r} has MD5 {got}, expected {md5}; delete it and download again")
    base = os.path.realpath(root)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if (m.isfile() or m.isdir())
                   and os.path.realpath(os.path.join(base, m.name)).startswith(base + os.sep)]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.12: tar's own check too
        tar.extractall(base, members=members, **safe)


def load_cifar(root: str, split: str, n_classes: int, download: bool = False) -> ImageSet:
    """CIFAR-10/100 in the authors' Python format under ``root`` (``cifar-10-batches-py/data_batch_1..5``,
    ``test_batch``; ``cifar-100-python/train``, ``test``), read without running code (:func:`read_pickle`).
    ``download`` fetches and unpacks the archive first when the files are missing (:func:`download_archive`)."""
    folder, train, test, key = CIFAR_FILES[n_classes]
    names = train if split == "train" else test
    paths = [os.path.join(root, folder, n) for n in names]
    if download and not all(os.path.isfile(p) for p in paths):
        download_archive(*CIFAR_URLS[n_classes], root, f"cifar{n_classes}")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"cifar{n_classes}: expected the CIFAR Python files under {os.path.join(root, folder)!r}, "
                           f"{missing[0]!r} is missing (or pass --download)")
    data, labels = [], []
    for p in paths:
        try:
            d = read_pickle(p)
            data.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(y) for y in d[key])
        except Exception as e:  # noqa: BLE001 - any unreadable file is a malformed dataset
            raise DatasetError(f"cifar{n_classes}: could not read {p!r} as a CIFAR batch: {e}") from None
    images = torch.from_numpy(np.concatenate(data))
    return ImageSet(_check_images(images, f"cifar{n_classes} {root}"), torch.tensor(labels, dtype=torch.long),
                    n_classes, f"cifar{n_classes}")


def _read_imagenet32_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        if path.endswith(".npz"):
            with np.load(path) as f:
                d = {k: f[k] for k in f.files}
        else:
            d = read_pickle(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a malformed dataset
        raise DatasetError(f"imagenet32: could not read {path!r} as a pickled dict or .npz: {e}") from None
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        raise DatasetError(f"imagenet32: {path!r} must hold a dict with keys 'data' and 'labels'")
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"]).astype(np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DatasetError(f"imagenet32: {path!r}: expected 'data' N×3072 uint8 and N labels, got "
                           f"{data.shape} {data.dtype} and {labels.shape[0]} labels")
    if labels.min() < 1 or labels.max() > 1000:
        raise DatasetError(f"imagenet32: {path!r}: expected labels in 1..1000, got "
                           f"{labels.min()}..{labels.max()}")
    return data, labels - 1


def load_imagenet32(root: str, split: str) -> ImageSet:
    """Downsampled ImageNet 32×32 (train_data_batch_1..10 / val_data, pickled or .npz)."""
    stems = [f"train_data_batch_{i}" for i in range(1, 11)] if split == "train" else ["val_data"]
    paths = []
    for stem in stems:
        found = [p for p in (os.path.join(root, stem), os.path.join(root, stem + ".npz")) if os.path.isfile(p)]
        if found:
            paths.append(found[0])
    if not paths:
        raise DatasetError(f"imagenet32: expected {stems[0]}[.npz] ... under {root!r}, found none")
    parts = [_read_imagenet32_file(p) for p in paths]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    # Each row holds 1024 red values, then 1024 green, then 1024 blue, each plane row-major.
    images = torch.from_numpy(data).view(-1, 3, 32, 32)
    return ImageSet(_check_images(images, f"imagenet32 {root}"), torch.from_numpy(labels), 1000, "imagenet32")


def test_split(name: str, root: str | None, train_classes: list[str] | None, max_per_class: int | None = None,
               say: bool = True) -> tuple[bool, int | None]:
    """(whether dataset ``name`` under ``root`` has a test split to evaluate on, the number of images it will
    load when known before loading it), checked before training. A folder layout's test split is scanned now
    (:func:`fastebm.data.folders.check_test_split`: a class the training split, ``train_classes``, lacks is a
    DatasetError now, not after an epoch; no ``test/`` or ``val/`` is said once on stderr when ``say``).
    Training data given in memory (no ``root`` for a dataset that needs one) has none."""
    if DATASETS[name].needs_root and not root:
        return False, None
    if train_classes is None:
        return True, None
    n = check_test_split(name, root, train_classes, max_per_class, say)
    return n is not None, n


def resize_images(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """(N, 3, H, W) uint8 → (N, 3, size, size) uint8, antialiased (:func:`fastebm.data.imagefiles.resize`)."""
    return resize(images, size, chunk)


@dataclass(frozen=True)
class Dataset:
    """One dataset of :data:`DATASETS`.

    Attributes:
        name: the ``--dataset`` value.
        read: ``(root, split, download, max_per_class, image_size, classes) -> ImageSet`` (see
            :func:`load_dataset` for the arguments); ``image_size`` None keeps the data's own size.
        preset: Config values on top of the defaults for this dataset (read-only), each sourced in its entry.
        train_size: training images, for the iterations per epoch before the data is loaded (None: from files).
        image_size: the side of its images in pixels when fixed (None: from the files or the preset).
        layout: ``"embedded"`` (no files), ``"files"`` (fixed file names under the root) or ``"folders"``
            (``root/<split>/<class>/``): where the content of a split lives, for caches keyed by it.
        epoch_batch: the Config batch whose one pass over the training set is an epoch for M-EBM / M-JEM /
            LSE-JEM (``cls_batch_size``: the authors' labelled loader of 128; JEM has its own rule).
    """

    name: str
    read: Callable[..., ImageSet]
    preset: Mapping = field(default_factory=dict)
    train_size: int | None = None
    image_size: int | None = None
    layout: str = "files"
    epoch_batch: str = "cls_batch_size"

    @property
    def needs_root(self) -> bool:
        return self.layout != "embedded"


def _digits(root, split, download, max_per_class, image_size, classes):
    return load_digits(split, image_size or 32)


def _cifar(n_classes: int):
    def read(root, split, download, max_per_class, image_size, classes):
        data = load_cifar(root, split, n_classes, download)
        return data if image_size is None else _resized(data, image_size)
    return read


def _imagenet32(root, split, download, max_per_class, image_size, classes):
    data = load_imagenet32(root, split)
    return data if image_size is None else _resized(data, image_size)


def _folders(name: str, default_size: int | None = None):
    def read(root, split, download, max_per_class, image_size, classes):
        return load_folder(root, split, image_size or default_size, name, max_per_class, classes)
    return read


def _resized(data: ImageSet, size: int) -> ImageSet:
    data.images = resize_images(data.images, size)
    return data


def _entry(name, read, preset=None, **kw) -> Dataset:
    return Dataset(name, read, MappingProxyType(dict(preset or {})), **kw)


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    _entry("digits", _digits, dict(  # fastebm's CPU demo (a few minutes), not a paper setting
        depth=10, width=1, epochs=3, iters_per_epoch=100, buffer_size=1000, warmup_iters=50,
        lr=0.05, decay_epochs=[2], batch_size=32, cls_batch_size=64, log_every=10),
        image_size=32, layout="embedded"),
    _entry("cifar10", _cifar(10), dict(),  # every value is a Config default (the mebm CIFAR-10 scripts)
           train_size=50_000, image_size=32),
    _entry("cifar100", _cifar(100), dict(
        n_classes=100,  # the dataset (so that --print-config shows it before the data is loaded)
        lr=0.02,  # paper Appendix A: 0.02 for CIFAR-100, CelebA-HQ and ImageNet 32×32
    ), train_size=50_000, image_size=32),
    _entry("imagenet32", _imagenet32, dict(
        model="mebm",  # paper Table 2, Section 5.1: ImageNet 32×32 only as unconditional M-EBM (K = 2, 5)
        n_classes=1000,  # the dataset
        lr=0.02,  # paper Appendix A
        width=2,  # paper Section 5 and Appendix A: "Wide-ResNet 28-2 for ImageNet 32x32"
        epochs=50,  # paper Section 5: "ImageNet 32×32 for 50 epochs" (Table 5: 200; --epochs 200)
    ), train_size=1_281_167, image_size=32),
    _entry("celebahq128", _folders("celebahq128", 128), dict(
        model="mebm",  # paper Section 5: unconditional M-EBM on CelebA-HQ 128
        width=5,  # paper Section 5: WRN-28-5 with a fourth stage (the fourth stage follows from 128 px)
        k=5,  # paper Section 5: K = 5 or 10 (2 GPUs); --k 10 for the other
        lr=0.02,  # paper Appendix A; mebm scripts/maebm_celeba.sh --lr=.02
        decay_epochs=[80, 120, 160],  # mebm scripts/maebm_celeba.sh --decay_epochs 80 120 160
        # mebm one_center.py @23b0813 + train_maebm_celeba.py @32f98f9: full Σ of 4×4-block means (32 px), pixels
        # repeated ×4; the code behind Table 2's CelebA FIDs (--p0 gaussian: rank-100 + diagonal at 128 px)
        p0="gaussian-downsampled",
        image_size=128,
    ), layout="folders",
        epoch_batch="batch_size"),  # mebm train_maebm_celeba.py iterates its batch-64 loader: 30,000 // 64 = 468
    _entry("folder", _folders("folder"), dict(),  # as cifar10; iterations per epoch from the data
           layout="folders"),
)}


def load_dataset(name: str, root: str | None = None, split: str = "train", download: bool = False,
                 max_per_class: int | None = None, image_size: int | None = None,
                 classes: list[str] | None = None) -> ImageSet:
    """Load a dataset of :data:`DATASETS` by name into an :class:`~fastebm.data.imageset.ImageSet`.

    Args:
        name: a key of :data:`DATASETS`.
        root: data folder (not needed for ``digits``).
        split: ``"train"`` or ``"test"``.
        download: allow downloading CIFAR (never done otherwise).
        max_per_class: for the folder layouts, keep at most this many images per class (tests, demos).
        image_size: resize every image to image_size² pixels, antialiased (``--image-size``); None keeps
            the data's own size (``celebahq128``: 128, ``digits``: 32).
        classes: for the folder layouts, the training split's class names (another split's labels follow
            them; see :func:`load_folder`).

    Raises:
        DatasetError: unknown name or split, missing root, missing or malformed files.
    """
    if name not in DATASETS:
        raise DatasetError(f"dataset: expected one of {tuple(DATASETS)}, got {name!r}")
    if split not in ("train", "test"):
        raise DatasetError(f"split: expected 'train' or 'test', got {split!r}")
    spec = DATASETS[name]
    if spec.needs_root:
        if not root:
            raise DatasetError(f"dataset {name!r} needs --data-root (the folder that holds its files)")
        if not os.path.isdir(root) and not download:
            raise DatasetError(f"dataset {name!r}: data root {root!r} is not a folder")
    return spec.read(root, split, download, max_per_class, image_size, classes)
