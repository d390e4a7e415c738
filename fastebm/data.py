"""Datasets as uint8 tensors, and mini-batches drawn from them on the training device.

Every loader returns an :class:`ImageSet`: images (N, 3, H, W) uint8 in [0, 255] and labels (N,) int64
in [0, n_classes). Images enter the model as float in [−1, 1] (x/127.5 − 1), see :func:`to_float`.

Datasets (``--dataset``):
- ``digits``: scikit-learn's bundled handwritten digits (1,797 8×8 images, 16 grey levels), resized to
  32×32, 3 channels; the embedded default, no download. Split: every 5th image is the test set.
- ``cifar10`` / ``cifar100``: the authors' Python format under ``root`` (``cifar-10-batches-py``,
  ``cifar-100-python``, as torchvision unpacks it); downloaded only with ``download=True``.
- ``imagenet32``: the official Downsampled-ImageNet 32×32 files ``train_data_batch_1..10`` and
  ``val_data`` (pickled dicts or ``.npz``) with keys ``data`` (N×3072 uint8: all red values, then all
  green, then all blue, rows of 32), ``labels`` (1..1000) → labels 0..999.
- ``celebahq128`` / ``folder``: class-folder layout ``root/train/<class>/<image>`` and ``root/test/`` (or
  ``root/val/``); the classes are the training split's sorted class folders (those holding images), and the
  other split maps to them by name (:func:`load_folder`). ``celebahq128`` resizes to 128×128.
"""
from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .images import IMAGE_EXTENSIONS, ImageError, read_image, resize
from .progress import progress

DATASETS = ("digits", "cifar10", "cifar100", "imagenet32", "celebahq128", "folder")


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message says what was expected and where."""


@dataclass
class ImageSet:
    """A labelled image set held in memory.

    Attributes:
        images: (N, 3, H, W) uint8, values 0..255.
        labels: (N,) int64, values 0..n_classes−1.
        n_classes: number of classes.
        name: dataset name, for messages and caches.
    """

    images: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    name: str
    classes: list[str] | None = None  # class names (folder layouts), label i is classes[i]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        """Side H (= W) in pixels."""
        return self.images.shape[-1]

    def subset(self, n: int | None, seed: int = 0) -> ImageSet:
        """The first ``n`` images of a fixed random permutation (all images if n is None or ≥ N)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return ImageSet(self.images[idx], self.labels[idx], self.n_classes, self.name, self.classes)


def to_float(images_u8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images in [0, 255] → ``dtype`` (float32; float64 for a reference run) in [−1, 1], same shape."""
    return images_u8.to(dtype).div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float images in [−1, 1] → uint8 in [0, 255] (values outside are clamped; non-finite → 0)."""
    x = torch.nan_to_num(x.detach().float(), nan=-1.0, posinf=1.0, neginf=-1.0)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _check_images(images: torch.Tensor, where: str) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise DatasetError(f"{where}: expected a non-empty (N, 3, H, W) uint8 image array, "
                           f"got shape {tuple(images.shape)} dtype {images.dtype}")
    return images.contiguous()


def load_digits(split: str = "train", image_size: int = 32) -> ImageSet:
    """scikit-learn's handwritten digits, resized to image_size² and repeated to 3 channels."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    grey = torch.from_numpy(bunch.images).float().div(16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    grey = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (grey.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target).long()
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


def folder_classes(split_dir: str) -> tuple[list[str], list[str]]:
    """(classes, skipped): the sorted subfolders of ``split_dir`` that hold at least one image file
    (:data:`~fastebm.images.IMAGE_EXTENSIONS`), and the other, non-hidden subfolders (no images: not classes).
    Hidden folders (``.ipynb_checkpoints``, ``__MACOSX``) are neither."""
    classes, skipped = [], []
    for d in sorted(os.listdir(split_dir)):
        full = os.path.join(split_dir, d)
        if not os.path.isdir(full) or d.startswith((".", "__")):
            continue
        has_images = any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(full))
        (classes if has_images else skipped).append(d)
    return classes, skipped


def split_folder(root: str, split: str) -> str | None:
    """The folder of ``split`` under ``root`` (``test`` falls back to ``val``), or None when there is none."""
    for name in ((split, "val") if split == "test" else (split,)):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def load_folder(root: str, split: str, image_size: int | None = None, name: str = "folder",
                max_per_class: int | None = None, classes: list[str] | None = None) -> ImageSet:
    """Class-folder layout ``root/<split>/<class>/<image>`` (``test`` falls back to ``val``).

    The classes are the training split's class folders, by name (``classes``: those of the training split,
    for another split; None: this split's own). A class folder is a subfolder holding at least one image
    (jpg, png, bmp, webp, gif, tif); subfolders without images are skipped with one warning line, hidden ones
    ignored. Another split may lack classes (its labels keep the training split's numbers); a class the
    training split lacks is a DatasetError. Every image becomes 8-bit RGB (:func:`fastebm.images.read_image`);
    if ``image_size`` is given they are resized to image_size² (antialiased), otherwise all must share one
    size. ``max_per_class`` keeps the first files of each class.

    Raises:
        DatasetError: no such split folder, no class folders, an unknown class, an image that cannot become
            8-bit RGB (named), or images of different sizes without ``image_size``.
    """
    split_dir = split_folder(root, split)
    if split_dir is None:
        raise DatasetError(f"{name}: expected class folders under {os.path.join(root, split)!r}"
                           f"{' (or val/)' if split == 'test' else ''}, found no such folder")
    found, skipped = folder_classes(split_dir)
    if skipped:
        print(f"fastebm: warning: {name}: skipping {len(skipped)} folder(s) without images under {split_dir!r}: "
              f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)
    if not found:
        raise DatasetError(f"{name}: expected class folders holding images ({', '.join(IMAGE_EXTENSIONS)}) under "
                           f"{split_dir!r}, found none")
    classes = found if classes is None else list(classes)
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DatasetError(f"{name}: {split_dir!r} holds class folder(s) the training split lacks: "
                           f"{', '.join(unknown[:5])}; expected a subset of {len(classes)} training classes")
    files = [(os.path.join(split_dir, cls, f), classes.index(cls)) for cls in found
             for f in sorted(f for f in os.listdir(os.path.join(split_dir, cls))
                             if f.lower().endswith(IMAGE_EXTENSIONS))[:max_per_class]]
    images, labels = [], []
    for path, label in progress(files, desc=f"fastebm: {name}: decoding {split} images", unit="images"):
        try:
            img = read_image(path)
        except ImageError as e:
            raise DatasetError(f"{name}: {e}") from None
        images.append(img if image_size is None else resize(img, image_size))
        labels.append(label)
    sizes = {tuple(i.shape) for i in images}
    if len(sizes) > 1:
        raise DatasetError(f"{name}: images under {split_dir!r} have different sizes {sorted(sizes)[:3]}...; "
                           f"pass --image-size N to resize them all to N×N")
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long), len(classes), name, classes)


def resize_images(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """(N, 3, H, W) uint8 → (N, 3, size, size) uint8, antialiased (:func:`fastebm.images.resize`)."""
    return resize(images, size, chunk)


def load_dataset(name: str, root: str | None = None, split: str = "train", download: bool = False,
                 max_per_class: int | None = None, image_size: int | None = None,
                 classes: list[str] | None = None) -> ImageSet:
    """Load a dataset by name (see module docstring) into an :class:`ImageSet`.

    Args:
        name: one of :data:`DATASETS`.
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
        raise DatasetError(f"dataset: expected one of {DATASETS}, got {name!r}")
    if split not in ("train", "test"):
        raise DatasetError(f"split: expected 'train' or 'test', got {split!r}")
    if name == "digits":
        return load_digits(split, image_size or 32)
    if not root:
        raise DatasetError(f"dataset {name!r} needs --data-root (the folder that holds its files)")
    if not os.path.isdir(root) and not download:
        raise DatasetError(f"dataset {name!r}: data root {root!r} is not a folder")
    if name in ("cifar10", "cifar100", "imagenet32"):
        data = (load_imagenet32(root, split) if name == "imagenet32"
                else load_cifar(root, split, 10 if name == "cifar10" else 100, download))
        if image_size is not None:
            data.images = resize_images(data.images, image_size)
        return data
    if image_size is None and name == "celebahq128":
        image_size = 128
    return load_folder(root, split, image_size, name, max_per_class, classes)


def augment(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Reflect-pad by ``pad``, random crop back to H×W, random horizontal flip — batched, fixed shapes.

    x: (N, C, H, W) float; uses the global torch RNG of x's device. Returns a new (N, C, H, W) tensor.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class Batches:
    """Mini-batches of a dataset kept on the training device as uint8 (airbench-style).

    The batch of global iteration ``it`` is a pure function of (seed, stream, it): sample i of the
    concatenated per-epoch permutations, so that a resumed run reads exactly the same batches.

    Args:
        data: the :class:`ImageSet`.
        batch_size: images per batch (fixed; every batch has this size).
        device: where images live and batches are built.
        seed, stream: the permutation of pass p is ``randperm(N)`` seeded by (seed, stream, p).
        augment: apply :func:`augment` (reflect-pad 4, crop, flip).
        data_noise: standard deviation of Gaussian noise added to the [−1, 1] batch (JEM uses 0.03).
        shard: (rank, world_size) of a data-parallel run: :meth:`get` returns the rank-th contiguous
            slice (``tensor_split``) of the global batch of ``batch_size`` images; (0, 1) = all of it.
    """

    def __init__(self, data: ImageSet, batch_size: int, device, seed: int = 0, stream: int = 0,
                 augment: bool = False, data_noise: float = 0.0, shard: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise ValueError(f"batch size: expected >= 1, got {batch_size}")
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"batch shard: expected (rank, world_size) with 0 <= rank < world_size, got {shard}")
        self.shard = tuple(shard)
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size, self.seed, self.stream = batch_size, seed, stream
        self.augment, self.data_noise = augment, data_noise
        self.dtype = torch.float32  # of the batches (float64 in the fast path's reference run)
        self._cached, self._cached_key = None, None

    def _perms_for(self, first: int, last: int) -> torch.Tensor:
        """Concatenated permutations of passes first..last, on the device (cached: one new pass per epoch)."""
        if self._cached_key != (first, last):
            perms = []
            for p in range(first, last + 1):
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.stream) * 1_000_003 + p)
                perms.append(torch.randperm(len(self.labels), generator=g))
            self._cached = torch.cat(perms).to(self.labels.device)
            self._cached_key = (first, last)
        return self._cached

    def indices(self, it: int) -> torch.Tensor:
        """Dataset indices (batch_size,) int64 of global iteration ``it``, on the device.

        Built with device ops only (no host sync): position i of the batch is element start + i of the
        concatenated per-pass permutations.
        """
        n = len(self.labels)
        start = it * self.batch_size
        first, last = start // n, (start + self.batch_size - 1) // n
        offset = start - first * n
        pos = torch.arange(offset, offset + self.batch_size, device=self.labels.device)
        return self._perms_for(first, last)[pos]

    def get(self, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of iteration ``it``: images (B, 3, H, W) float32 in [−1, 1] (plus noise/augmentation), labels (B,).

        With ``shard=(r, N)``: the r-th slice of the global batch's indices (B/N images when N divides B)."""
        return self.gather(self.shard_indices(it))

    def shard_indices(self, it: int) -> torch.Tensor:
        """This rank's dataset indices of iteration ``it`` (the host bookkeeping part of :meth:`get`)."""
        idx = self.indices(it)
        if self.shard[1] > 1:
            idx = torch.tensor_split(idx, self.shard[1])[self.shard[0]]
        return idx

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The device part of :meth:`get`, a function of tensors only (traceable by torch.compile):
        idx (B,) int64 dataset indices → images (B, 3, H, W) of ``self.dtype`` in [−1, 1] with this
        stream's augmentation and noise (global torch RNG of the device), labels (B,) int64."""
        x = to_float(self.images[idx], self.dtype)
        if self.augment:
            x = augment(x)
        if self.data_noise > 0:
            x = x + self.data_noise * torch.randn_like(x)
        return x, self.labels[idx]
