"""What every p0 (the initial distribution of the SGLD chains, ``--p0``) is: the :class:`P0` interface, and the
options a fitted one is fitted with (:class:`FitOptions`). The kinds register by name in :data:`fastebm.p0.P0_KINDS`.
"""
from __future__ import annotations

import dataclasses
from abc import abstractmethod
from typing import ClassVar, Protocol, runtime_checkable

import torch

from ..data.imageset import ImageSet

COV_FORMS = ("full", "lowrank")  # --cov, besides "auto" (default_cov_form)


def default_cov_form(side: int) -> str:
    """``full`` up to 64×64 (D ≤ 12,288), ``lowrank`` above; ``side`` is the side (px) the Gaussian is fitted at."""
    return "full" if side <= 64 else "lowrank"


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How a fitted p0 is fitted: ``form`` (``full`` or ``lowrank``: :data:`COV_FORMS`; ``auto`` is resolved by
    :func:`fastebm.p0.load_or_fit_p0` before a fit sees it), ``rank`` r of the low-rank form (≥ 1), ``jitter``
    added to Σ's diagonal (1e-4, as the reference code adds), ``size`` the side of a p0 fitted at --p0-size."""

    form: str = "full"
    rank: int = 100
    jitter: float = 1e-4
    size: int = 32


@runtime_checkable
class P0(Protocol):
    """The interface every p0 meets, as fastebm uses it (buffer, fast path, checkpoint, p0 pictures).

    A kind subclasses it (``class MyInit(P0)``) and so takes its defaults: no fused sampler (``triton`` False,
    :meth:`use_triton` does nothing) and a fit with no memory to check (:meth:`check_memory`); it must define
    ``kind``, ``fitted``, ``uses_size`` and the abstract methods (``fit``, ``from_state_dict``, ``sample``,
    ``to``, ``state_dict``): a subclass missing one cannot be instantiated (TypeError naming it).

    Class attributes:
        kind: its ``--p0`` name, also ``state_dict()["kind"]`` (a checkpoint's p0 is rebuilt by it).
        fitted: fitted on the training data (and cached in the run's ``p0.pt``); False: built from the image
            shape alone (``uniform``), never cached.
        uses_size: fitted at ``--p0-size``, not at the image side (the side ``--cov auto`` and the cache key use).
        triton: has a fused Triton sampler (:meth:`use_triton` switches it on; the fast path's ``triton_p0``).
            Default False.

    Attributes:
        shape: (C, H, W) of the samples. meta: plain values about the fit (``n``, ``jitter``, the cache key).
        A p0 with a ``mean`` ((D,) tensor) shows it in ``p0_mean.png``; others show 0.
    """

    kind: ClassVar[str]
    fitted: ClassVar[bool]
    uses_size: ClassVar[bool]
    triton: ClassVar[bool] = False
    shape: tuple[int, int, int]
    meta: dict

    @classmethod
    def check_memory(cls, shape: tuple[int, int, int], n_classes: int, opts: FitOptions, free: int, device) -> None:
        """Raise ValueError (one line naming the options at fault) when fitting this kind for images of ``shape``
        (C, H, W) with ``n_classes`` classes and ``opts`` (its ``form`` resolved) would need more than ``free``
        bytes on ``device``; checked before anything is allocated (:func:`fastebm.run.completion.check_fits`).
        Default: nothing to check (a kind whose fit is small, or that fits nothing)."""

    @classmethod
    @abstractmethod
    def fit(cls, data: ImageSet, opts: FitOptions, device) -> P0:
        """The p0 of ``data`` (uint8 images (N, C, H, W), labels, n_classes), its tensors float32 on ``device``."""

    @classmethod
    @abstractmethod
    def from_state_dict(cls, state: dict) -> P0:
        """The p0 that :meth:`state_dict` described (its tensors on the CPU)."""

    @abstractmethod
    def sample(self, n: int, device=None) -> torch.Tensor:
        """n samples (n, C, H, W), float32 (or the dtype of :meth:`to`), in [−1, 1], from the global torch RNG
        (the fused kernel's Philox state after :meth:`use_triton`, where a kind has one)."""

    @abstractmethod
    def to(self, device, dtype: torch.dtype | None = None) -> P0:
        """A copy with every tensor on ``device`` (and of ``dtype``: float64 for a reference run)."""

    def use_triton(self, rng_state: torch.Tensor | None) -> None:
        """Sample CUDA batches with a fused kernel and the Philox state ``rng_state`` ([seed, offset] int64);
        ``None``: the plain PyTorch path. Default (a kind without a kernel, ``triton`` False): ignored."""

    @abstractmethod
    def state_dict(self) -> dict:
        """``{"kind": kind, "shape": shape, ...}``: CPU tensors and plain values only (a checkpoint is read with
        ``weights_only=True``)."""
