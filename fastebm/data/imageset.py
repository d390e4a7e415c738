"""Image sets in memory (:class:`ImageSet`: uint8 tensors) and the mini-batches drawn from them on the training
device (:class:`Batches`, with the batched augmentation of :func:`augment`).

Images are (N, 3, H, W) uint8 in [0, 255]; they enter the model as float in [−1, 1] (x/127.5 − 1,
:func:`to_float`). The datasets themselves, and how each is read, are in :mod:`fastebm.data.datasets`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
        classes: class names (folder layouts), label i is classes[i]; None where the classes are numbers.
        files: SHA-1 of the names of the files the images came from, in load order (folder layouts), or None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    name: str
    classes: list[str] | None = None
    files: str | None = None

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
        return ImageSet(self.images[idx], self.labels[idx], self.n_classes, self.name, self.classes, self.files)

    def fingerprint(self) -> dict:
        """What identifies this set cheaply, for processes that must hold the same data (DDP ranks): the class
        names (or count), the image count and shape, the images per class, and the SHA-1 of the file names
        (:attr:`files`) or, where there is none, :meth:`checksum`. Plain values only."""
        return {"classes": list(self.classes) if self.classes is not None else self.n_classes,
                "images": len(self), "shape": list(self.images.shape[1:]),
                "per_class": torch.bincount(self.labels, minlength=self.n_classes).tolist(),
                "files": self.files or f"checksum {self.checksum()}"}

    def checksum(self) -> int:
        """The sum of the uint8 pixels of every ~N/997-th image (about a thousand images, whatever N): a cheap
        identity of the pixels, not a hash (a reordering within the stride goes unseen)."""
        return int(self.images[:: max(1, len(self) // 997)].sum())


def to_float(images_u8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images in [0, 255] → ``dtype`` (float32; float64 for a reference run) in [−1, 1], same shape."""
    return images_u8.to(dtype).div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float images in [−1, 1] → uint8 in [0, 255] (values outside are clamped; non-finite → 0)."""
    x = torch.nan_to_num(x.detach().float(), nan=-1.0, posinf=1.0, neginf=-1.0)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


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
