"""The class-folder layout ``root/<split>/<class>/...`` of the ``folder`` and ``celebahq128`` datasets: which
files are a split's images, of which class, in which order, and what is refused.

- A split is ``root/train``, ``root/test`` (or ``root/val`` when there is no ``test``).
- A class folder is a subfolder of the split holding at least one image file (:data:`IMAGE_EXTENSIONS`) at
  any depth; **every image under it, at any depth, belongs to its class** (``train/cat/2019/a.jpg`` is a cat),
  as torchvision's ``ImageFolder`` reads it, and in ``ImageFolder``'s order: folders by path, the files of
  each folder by name (a flat class folder: its files by name). Links to folders and files are followed; a
  folder reached twice through links is read once.
- Hidden entries are skipped at every depth: names starting with ``.`` (``.ipynb_checkpoints``,
  ``.DS_Store``, macOS's ``._*`` files) and folders starting with ``__`` (``__MACOSX``).
- Said on stderr, not refused: subfolders of the split without any image (not classes), image files lying
  directly in the split folder (in no class).
- Refused (DatasetError naming it), never skipped: a split or class folder, or any folder below, that exists but
  cannot be read (permissions, a storage error), and a link whose target cannot be reached (a link to storage
  that is not mounted on this node).
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass

import torch

from ..io.progress import progress
from .imagefiles import IMAGE_EXTENSIONS, ImageError, read_image, resize
from .imageset import DatasetError, ImageSet


def _hidden(name: str, is_dir: bool) -> bool:
    return name.startswith(".") or (is_dir and name.startswith("__"))


def _unreadable(name: str, path: str, e: OSError) -> DatasetError:
    return DatasetError(f"{name}: cannot read {path!r} ({e.strerror or e}): fix its permissions, or mount the "
                        f"storage it is on, or move it out of the data folder; no part of a dataset is skipped")


def _listing(folder: str, name: str = "folder") -> tuple[list[str], list[str]]:
    """(subfolders, files) of ``folder``: names, sorted, hidden ones left out; links followed.
    Raises DatasetError: ``folder`` or a link in it cannot be read (module docstring)."""
    dirs, files = [], []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                try:
                    is_dir = entry.is_dir()  # follows a link
                    if _hidden(entry.name, is_dir):
                        continue
                    if entry.is_symlink() and not os.path.exists(entry.path):
                        raise DatasetError(f"{name}: {entry.path!r} is a link to {os.readlink(entry.path)!r}, which "
                                           f"cannot be reached (storage not mounted on this node?); mount it, or "
                                           f"remove the link")
                except OSError as e:
                    raise _unreadable(name, entry.path, e) from None
                (dirs if is_dir else files).append(entry.name)
    except OSError as e:
        raise _unreadable(name, folder, e) from None
    return sorted(dirs), sorted(files)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_images(class_dir: str, name: str = "folder") -> list[str]:
    """Paths of every image file under ``class_dir`` at any depth (hidden entries skipped), in ``ImageFolder``'s
    order: folders sorted by path, the files of each folder sorted by name. Raises DatasetError (starting with
    ``name``) for a folder or link that cannot be read."""
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    stack = [class_dir]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or two links to one folder: read once
            continue
        seen.add(real)
        dirs, files = _listing(folder, name)
        found[folder] = [f for f in files if _is_image(f)]
        stack.extend(os.path.join(folder, d) for d in dirs)
    return [os.path.join(folder, f) for folder in sorted(found) for f in found[folder]]


@dataclass
class SplitScan:
    """What a split folder holds.

    Attributes:
        classes: class name → its image paths in load order, classes sorted by name.
        skipped: subfolders holding no image at any depth (not classes), sorted.
        loose: image files lying directly in the split folder (in no class), sorted.
    """

    classes: dict[str, list[str]]
    skipped: list[str]
    loose: list[str]

    def count(self, max_per_class: int | None = None) -> int:
        """Images a load with ``max_per_class`` reads."""
        return sum(len(files[:max_per_class]) for files in self.classes.values())


def scan_split(split_dir: str, name: str = "folder") -> SplitScan:
    """The classes and images of ``split_dir`` (module docstring). Raises DatasetError (starting with ``name``)
    for a folder or link under it that cannot be read."""
    dirs, files = _listing(split_dir, name)
    classes, skipped = {}, []
    for d in dirs:
        images = class_images(os.path.join(split_dir, d), name)
        if images:
            classes[d] = images
        else:
            skipped.append(d)
    return SplitScan(classes, skipped, [f for f in files if _is_image(f)])


def folder_classes(split_dir: str) -> tuple[list[str], list[str]]:
    """(classes, skipped): the sorted class folders of ``split_dir`` and its other, non-hidden subfolders
    (no images at any depth: not classes)."""
    scan = scan_split(split_dir)
    return list(scan.classes), scan.skipped


def split_folder(root: str, split: str, name: str = "folder") -> str | None:
    """The folder of ``split`` under ``root`` (``test`` falls back to ``val``), or None when there is none.
    Raises DatasetError when it is a link whose target cannot be reached."""
    for sub in ((split, "val") if split == "test" else (split,)):
        path = os.path.join(root, sub)
        if os.path.isdir(path):
            return path
        if os.path.islink(path):  # a link, to nothing this node can reach
            raise DatasetError(f"{name}: {path!r} is a link to {os.readlink(path)!r}, which cannot be reached "
                               f"(storage not mounted on this node?); mount it, or remove the link")
    return None


def _say_left_out(name: str, split_dir: str, scan: SplitScan) -> None:
    parts = []
    if scan.skipped:
        parts.append(f"skipping {len(scan.skipped)} folder(s) without images under {split_dir!r}: "
                     f"{', '.join(scan.skipped[:5])}{' ...' if len(scan.skipped) > 5 else ''}")
    if scan.loose:
        parts.append(f"skipping {len(scan.loose)} image file(s) directly in {split_dir!r}, in no class folder: "
                     f"{', '.join(scan.loose[:3])}{' ...' if len(scan.loose) > 3 else ''}")
    for part in parts:
        print(f"fastebm: warning: {name}: {part}", file=sys.stderr)


def load_folder(root: str, split: str, image_size: int | None = None, name: str = "folder",
                max_per_class: int | None = None, classes: list[str] | None = None) -> ImageSet:
    """Class-folder layout ``root/<split>/<class>/...`` (module docstring; ``test`` falls back to ``val``).

    The classes are the training split's class folders, by name (``classes``: those of the training split,
    for another split; None: this split's own). Another split may lack classes (its labels keep the training
    split's numbers); a class the training split lacks is a DatasetError. Every image becomes 8-bit RGB
    (:func:`fastebm.data.imagefiles.read_image`); if ``image_size`` is given they are resized to image_size²
    (antialiased), otherwise all must share one size. ``max_per_class`` keeps the first images of each class
    in load order.

    Returns:
        an :class:`ImageSet`: images (N, 3, H, W) uint8, labels (N,) int64 in [0, len(classes)).

    Raises:
        DatasetError: no such split folder, a folder or link under it that cannot be read, no class folders,
            an unknown class, an image that cannot become 8-bit RGB (named), or images of different sizes
            without ``image_size``.
    """
    split_dir = split_folder(root, split, name)
    if split_dir is None:
        raise DatasetError(f"{name}: expected class folders under {os.path.join(root, split)!r}"
                           f"{' (or val/)' if split == 'test' else ''}, found no such folder")
    scan = scan_split(split_dir, name)
    _say_left_out(name, split_dir, scan)
    found = list(scan.classes)
    if not found:
        raise DatasetError(f"{name}: expected class folders holding images ({', '.join(IMAGE_EXTENSIONS)}) under "
                           f"{split_dir!r}, found none")
    classes = found if classes is None else list(classes)
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DatasetError(f"{name}: {split_dir!r} holds class folder(s) the training split lacks: "
                           f"{', '.join(unknown[:5])}; expected a subset of {len(classes)} training classes")
    files = [(path, classes.index(cls)) for cls in found for path in scan.classes[cls][:max_per_class]]
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
    names = hashlib.sha1("".join(f"{os.path.relpath(p, split_dir)}\0{y}\n" for p, y in files).encode()).hexdigest()
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long), len(classes), name, classes, names)


def check_test_split(name: str, root: str, train_classes: list[str], max_per_class: int | None = None,
                     say: bool = True) -> int | None:
    """The number of images the test split of a folder dataset will load (``max_per_class`` per class at
    most), checked before training; None when there is no ``test/`` or ``val/`` folder (said once on
    stderr when ``say``).

    Raises:
        DatasetError: the test split has a folder or link that cannot be read, no class folder, or one the
            training split (``train_classes``) lacks — now, not after an epoch.
    """
    test_dir = split_folder(root, "test", name)
    if test_dir is None:
        if say:
            print(f"fastebm: warning: {name}: no test/ or val/ folder under {root!r}: no test evaluation (eval rows "
                  f"stay empty)", file=sys.stderr)
        return None
    scan = scan_split(test_dir, name)
    if not scan.classes:
        raise DatasetError(f"{name}: expected class folders holding images ({', '.join(IMAGE_EXTENSIONS)}) under "
                           f"{test_dir!r}, found none")
    unknown = [c for c in scan.classes if c not in train_classes]
    if unknown:
        raise DatasetError(f"{name}: {test_dir!r} holds class folder(s) the training split lacks: "
                           f"{', '.join(unknown[:5])}; expected a subset of the training classes")
    return scan.count(max_per_class)
