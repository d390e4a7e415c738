"""The p0 of a run: the informative initialization (``--p0``) fitted on its training data or read from the
p0.pt cache, and rebuilt from a checkpoint's state dict. The forms themselves: :mod:`fastebm.init` (Eq. 6,
uniform) and :mod:`fastebm.init_variants` (the authors' CelebA-HQ form, JEM++'s mixture)."""
from __future__ import annotations

import os
import sys

from .checkpoint import atomic_save, load_error, safe_load
from .data import ImageSet
from .init import COV_FORMS, P0_KINDS, GaussianInit, UniformInit, fit_gaussian
from .init_variants import DownsampledGaussianInit, GaussianMixtureInit, fit_downsampled, fit_mixture


def p0_from_state_dict(state: dict):
    """Rebuild a p0 (:class:`~fastebm.init.GaussianInit`, :class:`~fastebm.init.UniformInit` or a
    :mod:`fastebm.init_variants` one) from its ``state_dict()``."""
    if state["kind"] == "uniform":
        return UniformInit(state["shape"])
    if state["kind"] == "gaussian-downsampled":
        return DownsampledGaussianInit(state["shape"], p0_from_state_dict(state["inner"]), state.get("meta"))
    if state["kind"] == "gaussian-mixture":
        return GaussianMixtureInit(state["shape"], state["means"], state["weights"], state["form"],
                                   state["factor"], state["diag_sqrt"], state.get("meta"))
    return GaussianInit(state["shape"], state["mean"], state["form"], state["scale_tril"],
                        state["factor"], state["diag_sqrt"], state.get("meta"))


def default_cov_form(image_size: int) -> str:
    """``full`` up to 64×64 (D ≤ 12,288), ``lowrank`` above."""
    return "full" if image_size <= 64 else "lowrank"


def data_fingerprint(data: ImageSet) -> str:
    """A cheap identity of an image set (name, shape, a strided checksum) for the p0 cache."""
    step = max(1, len(data) // 997)
    return f"{data.name}:{tuple(data.images.shape)}:{int(data.images[::step].sum())}:{int(data.labels.sum())}"


def load_or_fit_p0(data: ImageSet, kind: str, form: str, rank: int, cache_path: str | None, device="cpu",
                   jitter: float = 1e-4, size: int = 32):
    """p0 for a run: ``uniform``, or one of the fitted kinds of :data:`P0_KINDS` fitted on ``data`` and cached
    at ``cache_path``.

    ``form`` is ``full``, ``lowrank`` or ``auto`` (:func:`default_cov_form` of the side the Gaussian is fitted
    at: the image side, or ``size`` for ``gaussian-downsampled``, whose fit is then full at 32 px).
    A cache file is reused when it was fitted on the same data (fingerprint) with the same kind, form, rank and
    size; otherwise, or when it cannot be read (empty, truncated, not a tensor file, or holding anything but
    tensors and plain values: it is read with ``weights_only=True``), the fit is redone (one line on stderr says
    why) and the cache rewritten atomically.

    ``kind`` and ``form`` are asserted (validated as --p0 / --cov in fastebm.limits).
    """
    shape = tuple(data.images.shape[1:])
    if kind == "uniform":
        return UniformInit(shape)
    assert kind in P0_KINDS, kind  # --p0 (limits)
    side = size if kind == "gaussian-downsampled" else shape[-1]
    form = default_cov_form(side) if form == "auto" else form
    assert form in COV_FORMS, form  # --cov (limits)
    key = {"fingerprint": data_fingerprint(data), "form": form, "rank": rank if form == "lowrank" else None,
           "jitter": jitter}
    if kind != "gaussian":  # the key of a --p0 gaussian cache stays as it was: old p0.pt files are reused
        key.update(kind=kind, size=size if kind == "gaussian-downsampled" else None)
    if cache_path and os.path.isfile(cache_path):
        try:
            state = safe_load(cache_path)
            if state.get("meta", {}).get("key") == key:
                return p0_from_state_dict(state).to(device)
        except Exception as e:  # noqa: BLE001 - a cache that cannot be read (empty, truncated, foreign) is refitted
            print(f"fastebm: p0 cache {cache_path} cannot be read ({load_error(e)}); fitting p0 again",
                  file=sys.stderr)
    if kind == "gaussian-downsampled":
        p0 = fit_downsampled(data.images, size, form, rank, jitter, device=device)
    elif kind == "gaussian-mixture":
        if data.n_classes == 1:
            print("fastebm: --p0 gaussian-mixture on one class: one component, the Gaussian of --p0 gaussian",
                  file=sys.stderr)
        p0 = fit_mixture(data.images, data.labels, data.n_classes, form, rank, jitter, device=device)
    else:
        p0 = fit_gaussian(data.images, form=form, rank=rank, jitter=jitter, device=device)
    p0.meta["key"] = key
    if cache_path:
        atomic_save(p0.state_dict(), cache_path)
    return p0
