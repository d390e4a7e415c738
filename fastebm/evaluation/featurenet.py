"""Sample quality without Inception weights: the Fréchet distance in the feature space of a small CNN classifier
trained on the same data ("feature-FD"), and how classifiable the samples are to that network.

FID (Heusel et al. 2017) needs pytorch-fid's Inception weights, which a machine without network cannot fetch.
The same construction works in any feature space: fit a Gaussian (mean, covariance) to the features of real
images and of samples, and take the Fréchet distance between the two. Here the features are the globally
pooled last convolution of :class:`FeatureNet`, a 4-layer CNN trained as a classifier on the training split
(12 epochs). The statistics and the distance are
:func:`fastebm.evaluation.metrics.activation_statistics` and :func:`fastebm.evaluation.metrics.frechet_distance`
(pytorch-fid's algorithm, on these features instead of Inception's pool3).

A feature-FD is comparable only between sample sets scored by the same network against the same real images:
it is not an FID, and its values are not on FID's scale. Save the network (:func:`save_feature_net`) and score
every run with that one file (``fastebm-eval --task feature-fd --features FILE``).

Images are float (N, 3, H, W) in [-1, 1] or uint8 in [0, 255]; features are float32 (N, F); statistics float64.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imageset import ImageSet, to_float
from ..io.checkpoint import atomic_save, load_error, safe_load
from . import metrics

FORMAT = "fastebm-feature-net-1"  # the file's "format" field; a file of another format is refused
FEATURE_DIM = 32  # F: small enough that the 360 digits test images estimate an (F, F) covariance


class FeatureNetError(ValueError):
    """A feature-network file that cannot be used: missing, damaged, or for other images. One line."""


class FeatureNet(nn.Module):
    """A small CNN classifier whose pooled last-layer activations are the feature space of the feature-FD.

    Layers: conv3×3(C→w) ReLU, conv3×3(w→w) ReLU, max-pool 2, conv3×3(w→2w) ReLU, max-pool 2,
    conv3×3(2w→F) ReLU, global average pool → features (N, F); a linear layer F → classes gives the logits.

    Args:
        n_classes: classes of the training data (>= 2). image_size: input side in pixels (>= 4).
        in_channels: 3. width: w, channels of the first layers (32). feature_dim: F (:data:`FEATURE_DIM`).

    Input (N, in_channels, image_size, image_size) float in [-1, 1].
    """

    def __init__(self, n_classes: int, image_size: int, in_channels: int = 3, width: int = 32,
                 feature_dim: int | None = None):
        super().__init__()
        feature_dim = FEATURE_DIM if feature_dim is None else feature_dim
        self.config = dict(n_classes=int(n_classes), image_size=int(image_size), in_channels=int(in_channels),
                           width=int(width), feature_dim=int(feature_dim))
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, feature_dim, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)

    @property
    def image_size(self) -> int:
        """Side in pixels of the images the network was built for."""
        return self.config["image_size"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] → (N, F) float32, non-negative."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] → logits (N, n_classes)."""
        return self.head(self.features(x))


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return to_float(images) if images.dtype == torch.uint8 else images.float()


def train_feature_net(data: ImageSet, epochs: int = 12, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                      device="cpu", test: ImageSet | None = None) -> FeatureNet:
    """Train a :class:`FeatureNet` on ``data`` as a classifier (cross-entropy, Adam, a fixed random order per
    epoch, no augmentation) and return it in eval mode on ``device``. The global RNG is left untouched.

    ``net.meta`` records what it was trained on (dataset name, image count, ``train_accuracy`` and, with
    ``test``, ``test_accuracy``, both in [0, 1]).

    Raises:
        ValueError: fewer than 2 classes, or an epoch / batch size below 1.
    """
    if data.n_classes < 2 or epochs < 1 or batch_size < 1:
        raise ValueError(f"train_feature_net: expected >= 2 classes, epochs >= 1 and batch_size >= 1, got "
                         f"{data.n_classes}, {epochs} and {batch_size}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        net = FeatureNet(data.n_classes, data.image_size, data.images.shape[1]).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        x_all, y_all = to_float(data.images).to(device), data.labels.to(device)
        gen = torch.Generator().manual_seed(seed)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=gen).to(device)
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    net.eval()
    net.meta = {"dataset": data.name, "n_train": len(data), "epochs": epochs, "seed": seed,
                "train_accuracy": accuracy(net, data.images, data.labels)}
    if test is not None:
        net.meta.update(n_test=len(test), test_accuracy=accuracy(net, test.images, test.labels))
    return net


@torch.no_grad()
def feature_outputs(net: FeatureNet, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F), logits (N, classes)), float32 on the CPU, of ``images`` (N, C, H, W) float in [-1, 1]
    or uint8, in eval mode (the mode is restored). Raises ValueError for images of another size or channels."""
    cfg = net.config
    if images.ndim != 4 or tuple(images.shape[1:]) != (cfg["in_channels"], cfg["image_size"], cfg["image_size"]):
        raise ValueError(f"feature network: expected images (N, {cfg['in_channels']}, {cfg['image_size']}, "
                         f"{cfg['image_size']}), got {tuple(images.shape)}")
    device = next(net.parameters()).device
    was = net.training
    net.eval()
    feats, logits = [], []
    try:
        for i in range(0, len(images), batch_size):
            h = net.features(_as_float(images[i:i + batch_size].to(device)))
            feats.append(h.float().cpu())
            logits.append(net.head(h).float().cpu())
    finally:
        net.train(was)
    return torch.cat(feats), torch.cat(logits)


def accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction in [0, 1] of ``images`` that the network assigns to ``labels`` (N,) int64."""
    return float((feature_outputs(net, images)[1].argmax(1) == labels.cpu()).double().mean())


class FeatureScore:
    """The feature-FD and classifiability of sample sets against one set of real images, in one network's space.

    Args:
        net: a trained :class:`FeatureNet`.
        real: (N, C, H, W) real images (float in [-1, 1] or uint8), N >= 2: the reference (the test split).

    Attributes:
        real_stats: (mu (F,), sigma (F, F)) float64 of the real images' features. n_real: N.
    """

    def __init__(self, net: FeatureNet, real: torch.Tensor):
        self.net = net
        self.real_stats = metrics.activation_statistics(feature_outputs(net, real)[0].double().numpy())
        self.n_real = len(real)

    def fd(self, images: torch.Tensor) -> float:
        """Feature-FD (>= 0, in squared feature units) of ``images`` (N >= 2) against the real images:
        :func:`fastebm.evaluation.metrics.frechet_distance` of the two sets' feature statistics. Raises ValueError for
        non-finite images or features."""
        feats = feature_outputs(self.net, images)[0].double().numpy()
        return metrics.frechet_distance(*metrics.activation_statistics(feats), *self.real_stats)

    def classifiability(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """How classifiable samples are to the feature network.

        Returns ``{"agreement": ..., "confidence": ...}``: agreement, the fraction of ``images`` the network
        assigns to ``labels`` (N,) (the classes a model predicts for its own samples; None without labels);
        confidence, the mean of max_y p(y|x) under the network (in [1/classes, 1]; high when samples look like
        one class, as a real image does).
        """
        logits = feature_outputs(self.net, images)[1].double()
        out = {"confidence": float(logits.softmax(1).max(1)[0].mean()), "agreement": None}
        if labels is not None:
            out["agreement"] = float((logits.argmax(1) == labels.cpu()).double().mean())
        return out


def save_feature_net(net: FeatureNet, path: str) -> str:
    """Write the network (its architecture, weights and ``meta``) to ``path`` atomically
    (:func:`fastebm.io.checkpoint.atomic_save`: tensors and plain values only). Returns ``path``.
    Raises CheckpointError when it cannot be written."""
    atomic_save({"format": FORMAT, "config": dict(net.config), "meta": dict(getattr(net, "meta", {})),
                 "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}, path)
    return path


def load_feature_net(path: str, device="cpu") -> FeatureNet:
    """The :class:`FeatureNet` saved at ``path`` (read with ``weights_only=True``: no code in it runs), in eval
    mode on ``device``, with its ``meta``.

    Raises:
        FeatureNetError: no file, or a file that is not a feature network of :func:`save_feature_net` (damaged,
            cut short, another format, weights that do not fit); one line naming the file.
    """
    if not os.path.isfile(path):
        raise FeatureNetError(f"feature network: expected a file at {path!r}, found none")
    try:
        state = safe_load(path)
    except Exception as e:  # noqa: BLE001 - EOFError, RuntimeError, UnpicklingError...: a damaged file
        raise FeatureNetError(f"feature network {path!r} cannot be read ({load_error(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise FeatureNetError(f"feature network {path!r}: expected format {FORMAT!r}, got {got!r}")
    try:
        net = FeatureNet(**state["config"])
        net.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise FeatureNetError(f"feature network {path!r}: weights do not fit its architecture "
                              f"({' '.join(str(e).split())[:200]})") from None
    net.meta = dict(state.get("meta") or {})
    return net.to(device).eval()


def cached_feature_net(path: str, data: ImageSet, key: str, device="cpu", test: ImageSet | None = None,
                       say=None) -> tuple[FeatureNet, bool]:
    """(the feature network cached at ``path`` for ``key``, whether it was read from the cache): read when the
    file holds a network whose ``meta["key"]`` is ``key``; otherwise (no file, another key, or a damaged file,
    said in one line through ``say``, default stderr) trained on ``data`` (:func:`train_feature_net`) and
    written there atomically."""
    say = say or (lambda line: print(line, file=sys.stderr))
    if os.path.isfile(path):
        try:
            net = load_feature_net(path, device)
            if net.meta.get("key") == key:
                return net, True
        except FeatureNetError as e:
            say(f"fastebm: {e}; training it again")
    net = train_feature_net(data, device=device, test=test)
    net.meta["key"] = key
    save_feature_net(net, path)
    return net, False
