"""p0, the initial distribution of the SGLD chains (``--p0``): the kinds by name (:data:`P0_KINDS`), the p0 of a
run fitted on its training data or read from the ``p0.pt`` cache (:func:`load_or_fit_p0`) with the options a run
fits it with (:func:`fit_options`), and a p0 rebuilt from a checkpoint's state dict (:func:`p0_from_state_dict`).

Each kind is one module with one subclass of :class:`fastebm.p0.base.P0` (its defaults: no fused sampler, no
memory to check): ``uniform`` (:mod:`.uniform`), Eq. 6's Gaussian (:mod:`.gaussian`), the authors' CelebA-HQ form
(:mod:`.downsampled`), JEM++'s per-class mixture (:mod:`.mixture`). A new kind is one such module and one line in
:data:`P0_KINDS`.
"""
from __future__ import annotations

import os
import sys

from ..data.imageset import ImageSet
from ..io.checkpoint import atomic_save, load_error, safe_load
from .base import COV_FORMS, P0, FitOptions, default_cov_form
from .downsampled import DownsampledGaussianInit
from .gaussian import GaussianInit
from .mixture import GaussianMixtureInit
from .uniform import UniformInit

# --p0: each kind's name (its class's ``kind``, stored in checkpoints) → its class, in the order --help lists them.
P0_KINDS: dict[str, type[P0]] = {
    "gaussian": GaussianInit,
    "gaussian-downsampled": DownsampledGaussianInit,
    "gaussian-mixture": GaussianMixtureInit,
    "uniform": UniformInit,
}


def p0_from_state_dict(state: dict) -> P0:
    """Rebuild a p0 from its ``state_dict()``: the class registered under ``state["kind"]`` in :data:`P0_KINDS`.

    Raises ValueError for a kind no class is registered under (a checkpoint of a newer fastebm, say)."""
    cls = P0_KINDS.get(state["kind"])
    if cls is None:
        raise ValueError(f"p0 state: expected a kind of {list(P0_KINDS)}, got {state['kind']!r}")
    return cls.from_state_dict(state)


def fit_options(kind: str, side: int, form: str, rank: int, size: int = 32, jitter: float = 1e-4) -> FitOptions:
    """The :class:`FitOptions` the kind of :data:`P0_KINDS` named ``kind`` is fitted with for images of side ``side``
    (px): ``form`` ``full``, ``lowrank`` or ``auto``, resolved to :func:`default_cov_form` of the side the Gaussian
    is fitted at (``size``, --p0-size, for a kind that ``uses_size``; ``side`` otherwise). The fit
    (:func:`load_or_fit_p0`) and its memory check (``check_memory``, from fastebm.run.completion.check_fits) both
    take it, so they see the same form. ``kind`` and ``form`` are asserted (validated in fastebm.config.limits)."""
    fitted_side = size if P0_KINDS[kind].uses_size else side
    form = default_cov_form(fitted_side) if form == "auto" else form
    assert form in COV_FORMS, form  # --cov (limits)
    return FitOptions(form=form, rank=rank, jitter=jitter, size=size)


def data_fingerprint(data: ImageSet) -> str:
    """A cheap identity of an image set (name, shape, a strided checksum) for the p0 cache."""
    return f"{data.name}:{tuple(data.images.shape)}:{data.checksum()}:{int(data.labels.sum())}"


def load_or_fit_p0(data: ImageSet, kind: str, form: str, rank: int, cache_path: str | None, device="cpu",
                   jitter: float = 1e-4, size: int = 32) -> P0:
    """p0 for a run: the kind of :data:`P0_KINDS` named ``kind``, fitted on ``data`` and cached at ``cache_path``
    (a kind that is not ``fitted``, ``uniform``, is built from the image shape and never cached).

    ``form`` is ``full``, ``lowrank`` or ``auto`` (resolved by :func:`fit_options`: :func:`default_cov_form` of
    the side the Gaussian is fitted at: the image side, or ``size`` for a kind that ``uses_size``,
    ``gaussian-downsampled``, whose fit is then full at 32 px). A cache file is reused when it was fitted on the
    same data (fingerprint) with the same kind, form, rank and size; otherwise, or when it cannot be read (empty,
    truncated, not a tensor file, or holding anything but tensors and plain values: it is read with
    ``weights_only=True``), the fit is redone (one line on stderr says why) and the cache rewritten atomically.

    ``kind`` and ``form`` are asserted (validated as --p0 / --cov in fastebm.config.limits).
    """
    assert kind in P0_KINDS, kind  # --p0 (limits)
    cls = P0_KINDS[kind]
    shape = tuple(data.images.shape[1:])
    if not cls.fitted:
        return cls.fit(data, FitOptions(), device)
    opts = fit_options(kind, shape[-1], form, rank, size, jitter)
    key = {"fingerprint": data_fingerprint(data), "form": opts.form,
           "rank": rank if opts.form == "lowrank" else None, "jitter": jitter}
    if kind != "gaussian":  # the key of a --p0 gaussian cache stays as it was: old p0.pt files are reused
        key.update(kind=kind, size=size if cls.uses_size else None)
    if cache_path and os.path.isfile(cache_path):
        try:
            state = safe_load(cache_path)
            if state.get("meta", {}).get("key") == key:
                return p0_from_state_dict(state).to(device)
        except Exception as e:  # noqa: BLE001 - a cache that cannot be read (empty, truncated, foreign) is refitted
            print(f"fastebm: p0 cache {cache_path} cannot be read ({load_error(e)}); fitting p0 again",
                  file=sys.stderr)
    p0 = cls.fit(data, opts, device)
    p0.meta["key"] = key
    if cache_path:
        atomic_save(p0.state_dict(), cache_path)
    return p0
