"""Energy functions E_θ(x): a Wide-ResNet backbone with the heads of M-EBM, M-JEM and JEM.

Sign convention (the one of the whole package): E(x) is an *energy*, low = likely,
p_θ(x) ∝ exp(−E_θ(x)).

- ``mebm``: E(x) = w·h(x) + b, a linear energy head on the penultimate features h(x); unconditional.
- ``mjem``: the same energy head plus a classifier head (paper Fig. 2a); the energy comes from the
  energy head, p(y|x) from the classifier head.
- ``jem``:  E(x) = −logsumexp_y f(x)[y] (JEM, paper Eq. 4), the classifier's logits define the energy.
- ``lse-jem``: the same network as ``jem`` (no energy head, E(x) = −logsumexp of the logits), trained with
  the M-JEM recipe (paper Fig. 2b / 4a, the LSE-JEM ablation); the recipes live in :mod:`fastebm.config.recipes`.
- ``jempp``: the same network again, trained with JEM++'s recipe (github sndnyang/JEMPP ``models/jem_models.py``
  ``CCF``: ``logits.logsumexp(1)``; the baseline of the paper's Tables 3, 4 and 6).

The backbone follows the WRN of the JEM / JEM++ / M-EBM code lineage: pre-activation basic blocks,
LeakyReLU(0.2), optional BatchNorm or no normalization, 3×3 convolutions with bias, and a fourth
stage for inputs of 64 px and more (CelebA-HQ 128).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.imageset import to_float
from ..io.progress import Progress

MODEL_KINDS = ("mebm", "mjem", "jem", "lse-jem", "jempp")
NORMS = ("batch", "none")


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Energies and logits are reduced in fp32 (or fp64), never in bf16/fp16."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


BN_MOMENTUM = 0.1  # PyTorch's BatchNorm2d default; the authors' code builds BatchNorm2d(momentum=0.9)


def _norm(channels: int, norm: str, momentum: float = BN_MOMENTUM) -> nn.Module:
    """BatchNorm2d (running ← (1 − momentum)·running + momentum·batch at each training forward) or identity."""
    if norm == "batch":
        return nn.BatchNorm2d(channels, momentum=momentum)
    assert norm == "none", f"norm: one of {NORMS}, got {norm!r}"  # validated as --norm (config)
    return nn.Identity()


class WideBasic(nn.Module):
    """Pre-activation wide basic block: x + conv(act(norm(conv(act(norm(x)))))).

    Input (N, C_in, H, W) → output (N, C_out, H/stride, W/stride), any float dtype.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, leak: float, dropout: float,
                 bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        self.norm1 = _norm(in_planes, norm, bn_momentum)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm2 = _norm(planes, norm, bn_momentum)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=True)
        self.act = nn.LeakyReLU(leak)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(self.act(self.norm1(x))))
        out = self.conv2(self.act(self.norm2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-depth-width feature extractor h(x).

    Args:
        depth: 6n + 4 (28 in the paper; 10 is the smallest with one block per stage; 4 gives a stem only).
        width: widening factor k (10 on CIFAR, 2 on ImageNet 32×32, 5 on CelebA-HQ 128).
        norm: ``"batch"`` or ``"none"``.
        image_size: input side in pixels; 64 and more adds a fourth stage (stride 2, 128·k channels).
        in_channels, leak (LeakyReLU slope, 0.2), dropout (0 in the paper).
        bn_momentum: every BatchNorm's momentum m, PyTorch's convention: a training forward sets
            running ← (1 − m)·running + m·batch statistic. 0.1 (PyTorch's default) here; 0.9 in the authors'
            code (mebm ``models/norms.py`` ``get_norm`` at ab600eb, JEM ``wideresnet.py`` at f3544c6), whose
            running statistics are then mostly those of the latest batch.

    Input: (N, in_channels, image_size, image_size) float in [−1, 1]. Output: (N, feature_dim) features.

    depth (6n + 4), width (>= 1) and norm are asserted: the options are validated as --depth / --width /
    --norm in :func:`fastebm.config.limits.validate`.
    """

    def __init__(self, depth: int = 28, width: int = 10, norm: str = "batch", image_size: int = 32,
                 in_channels: int = 3, leak: float = 0.2, dropout: float = 0.0, bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        assert depth >= 4 and (depth - 4) % 6 == 0 and width >= 1, (depth, width)  # --depth / --width (config)
        n = (depth - 4) // 6
        stages = [16, 16 * width, 32 * width, 64 * width]
        strides = [1, 2, 2]
        if image_size >= 64:
            stages.append(128 * width)
            strides.append(2)
        self.conv1 = nn.Conv2d(in_channels, stages[0], 3, padding=1, bias=True)
        layers, in_planes = [], stages[0]
        for planes, stride in zip(stages[1:], strides):
            for i in range(n):
                layers.append(WideBasic(in_planes, planes, stride if i == 0 else 1, norm, leak, dropout,
                                        bn_momentum))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.norm = _norm(in_planes, norm, bn_momentum)
        self.act = nn.LeakyReLU(leak)
        self.feature_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm(self.blocks(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class EnergyModel(nn.Module):
    """E_θ(x) and, for classifier models, p_θ(y|x).

    Args:
        kind: ``"mebm"``, ``"mjem"``, ``"jem"``, ``"lse-jem"`` or ``"jempp"`` (see module docstring).
        n_classes: number of classes (needed for ``mjem`` and ``jem``).
        depth, width, norm, image_size, in_channels, dropout, bn_momentum: the WRN backbone
            (:class:`WideResNet`).

    kind and n_classes (>= 2 for a classifier) are asserted (validated as --model in fastebm.config.options).
    """

    def __init__(self, kind: str = "mjem", n_classes: int = 10, depth: int = 28, width: int = 10,
                 norm: str = "batch", image_size: int = 32, in_channels: int = 3, dropout: float = 0.0,
                 bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        assert kind in MODEL_KINDS and (kind == "mebm" or n_classes >= 2), (kind, n_classes)  # --model (config)
        self.kind = kind
        self.n_classes = n_classes
        self.f = WideResNet(depth, width, norm, image_size, in_channels, dropout=dropout, bn_momentum=bn_momentum)
        d = self.f.feature_dim
        self.energy_head = nn.Linear(d, 1) if kind in ("mebm", "mjem") else None
        self.class_head = nn.Linear(d, n_classes) if kind != "mebm" else None

    @property
    def has_classifier(self) -> bool:
        """True for every kind but ``mebm``."""
        return self.class_head is not None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features h(x): (N, feature_dim)."""
        return self.f(x)

    def energy_from_features(self, h: torch.Tensor) -> torch.Tensor:
        """Energy (N,) float32 from features (N, feature_dim); JEM: −logsumexp of the logits (Eq. 4)."""
        if self.energy_head is not None:
            return _at_least_fp32(self.energy_head(h).squeeze(1))
        return -torch.logsumexp(_at_least_fp32(self.class_head(h)), dim=1)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E_θ(x): input (N, C, H, W) in [−1, 1] → energies (N,) float32 (low = likely)."""
        return self.energy_from_features(self.features(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier logits (N, n_classes) float32. Raises RuntimeError for ``mebm``."""
        if self.class_head is None:
            raise RuntimeError("model 'mebm' has no classifier head: logits are defined for 'mjem', 'jem' "
                               "and 'lse-jem'")
        return _at_least_fp32(self.class_head(self.features(x)))

    def forward(self, x: torch.Tensor):
        """One backbone pass → (energy (N,) float32, logits (N, n_classes) float32 or None)."""
        h = self.features(x)
        if self.class_head is None:
            return self.energy_from_features(h), None
        logits = _at_least_fp32(self.class_head(h))
        if self.energy_head is None:  # JEM / LSE-JEM: the logits define the energy (Eq. 4)
            return -torch.logsumexp(logits, dim=1), logits
        return self.energy_from_features(h), logits


def build_model(cfg) -> EnergyModel:
    """Build the :class:`EnergyModel` described by a :class:`fastebm.config.options.Config`."""
    return EnergyModel(kind=cfg.model, n_classes=cfg.n_classes, depth=cfg.depth, width=cfg.width,
                       norm=cfg.norm, image_size=cfg.image_size, in_channels=3, dropout=cfg.dropout,
                       bn_momentum=cfg.bn_momentum)


@torch.no_grad()
def model_outputs(model: EnergyModel, images: torch.Tensor, batch_size: int = 256, device=None,
                  features: bool = False, desc: str | None = None):
    """Energies, logits and optionally penultimate features of a set of images, in eval mode: the one
    implementation behind the trainer's test evaluation and the evaluation CLI.

    Args:
        model: an :class:`EnergyModel` (its train/eval mode is restored on exit).
        images: (N, 3, H, W) uint8 in [0, 255] or float in [−1, 1], on any device.
        batch_size: images per forward pass (≥ 1). device: where to run (default: the model's device).
        features: also return the penultimate features h(x).
        desc: report progress on stderr under this name (:mod:`fastebm.io.progress`); None: silent.

    Returns:
        (energies (N,), logits (N, C) or None) — plus features (N, F) with ``features`` — float32 on the CPU;
        energies follow the package's sign (low = likely).
    """
    device = device or next(model.parameters()).device
    energies, logits, feats = [], [], []
    was_training = model.training
    model.eval()
    bar = Progress(images.shape[0], desc, unit="images") if desc else None
    try:
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(device)
            x = to_float(x) if x.dtype == torch.uint8 else x.float()
            h = model.features(x)
            if features:
                feats.append(h.float().cpu())
            energies.append(model.energy_from_features(h).float().cpu())
            if model.has_classifier:
                logits.append(_at_least_fp32(model.class_head(h)).cpu())
            if bar is not None:
                bar.update(len(x))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    out = (torch.cat(energies), torch.cat(logits) if logits else None)
    return out + (torch.cat(feats),) if features else out
