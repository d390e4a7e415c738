"""pytorch-fid's FID Inception: the network FID and IS are computed with, and its weights file.

The weights are ``pt_inception-2015-12-05-6726825d.pth`` (TensorFlow's 2015-12-05 Inception graph, 1008
classes, ported by pytorch-fid), read from a local file: nothing is ever downloaded. A file that is not those
weights — a truncated download, torchvision's ImageNet ``inception_v3`` weights given by mistake, a file that
would run code when loaded — is refused in one line naming it, what is wrong and where the right file comes
from (:func:`read_inception_weights`), at the start of a run or an evaluation (:func:`check_inception_weights`),
not at its first FID.
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np
import torch
from torch import nn

from ..io.checkpoint import load_error
from ..io.progress import Progress

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILENAME


class InceptionWeightsError(ValueError):
    """A weights file that is not pytorch-fid's FID Inception weights; the message is one line naming the file
    (and ``--inception-weights``), what is wrong and where the right file comes from."""


class InceptionOutputs(nn.Module):
    """pytorch-fid's FID ``InceptionV3`` (pool3 block) plus the FID Inception's ``fc`` weights.

    ``forward(x)``: x (B, 3, H, W) float in **[0, 1]** (pytorch-fid's convention; it resizes to
    299 × 299 and maps to [-1, 1] itself) → ``(pool (B, 2048), logits (B, 1008))`` where
    ``logits = pool @ fc.weight.T`` **without the bias** (improved-gan / torch-fidelity ``logits_unbiased``).
    """

    def __init__(self, inception: nn.Module, fc: nn.Linear):
        super().__init__()
        self.inception, self.fc = inception, fc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.inception(x)[0].flatten(1)
        return pool, pool @ self.fc.weight.T


def default_inception_weights_path() -> str:
    """pytorch-fid's download cache: ``torch.hub.get_dir()/checkpoints/pt_inception-2015-12-05-6726825d.pth``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", FID_WEIGHTS_FILENAME)


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for the FID Inception architecture (tests and smoke runs; numbers meaningless).

    Same names and shapes as the FID weights file (torchvision's ``inception_v3(num_classes=1008,
    aux_logits=False)``); He-normal convs keep activations O(1); fc weight N(0, 1/2048), fc bias
    N(0, 1) (non-zero, so a test can tell biased from unbiased logits). The global RNG is untouched.
    """
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        for mod in net.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            elif isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=mod.in_features ** -0.5)
                nn.init.normal_(mod.bias)
    return net.state_dict()


_BUILD_LOCK = threading.Lock()


METRICS_EXTRA = "pip install 'fastebm[metrics]'"
RANDOM_INCEPTION_NOTE = "random Inception weights: these FID / IS numbers are meaningless (a smoke test only)"


def missing_packages() -> list[str]:
    """The packages FID / IS need that are not installed (an optional extra: they pull in torchvision, whose
    newest release would replace a torch already installed; README "Install")."""
    import importlib.util

    return [name for name in ("pytorch_fid", "torchvision") if importlib.util.find_spec(name) is None]


def load_inception(weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   random_init: bool = False, seed: int = 0) -> InceptionOutputs:
    """pytorch-fid's FID InceptionV3 with weights from a local file (never downloads).

    pytorch-fid fetches its weights with ``load_state_dict_from_url``; that call is answered from the
    local file while the model is built (under a lock), so its architecture patches and strict
    ``load_state_dict`` still run.

    Args:
        weights_path: ``pt_inception-2015-12-05-6726825d.pth``; None: :func:`default_inception_weights_path`.
        device: where to put the model.
        random_init: random weights (:func:`random_inception_state_dict`) instead of a file.
        seed: seed of the random weights.

    Returns:
        :class:`InceptionOutputs` in eval mode, no gradients.

    Raises:
        FileNotFoundError: the weights file is absent (the message names the path, the cache folder and the URL).
        InceptionWeightsError: the file is not the FID weights (:func:`read_inception_weights`).
        ValueError: ``random_init`` together with ``weights_path``.
    """
    missing = missing_packages()
    if missing:
        raise ImportError(f"FID / IS need {' and '.join(missing)}, which are not installed: {METRICS_EXTRA}")
    import pytorch_fid.inception as pfi

    if random_init and weights_path is not None:
        raise ValueError("load_inception: expected either weights_path or random_init=True, got both")
    if random_init:
        state = random_inception_state_dict(seed)
    else:
        path = os.fspath(weights_path) if weights_path is not None else default_inception_weights_path()
        state = read_inception_weights(path, given=weights_path is not None)
    built: list[nn.Module] = []
    with _BUILD_LOCK:
        orig_loader, orig_builder = pfi.load_state_dict_from_url, pfi.fid_inception_v3
        pfi.load_state_dict_from_url = lambda *a, **k: state
        pfi.fid_inception_v3 = lambda *a, **k: built.append(orig_builder(*a, **k)) or built[-1]
        try:
            inception = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                        normalize_input=True, requires_grad=False, use_fid_inception=True)
        finally:
            pfi.load_state_dict_from_url, pfi.fid_inception_v3 = orig_loader, orig_builder
    fc = built[0].fc.requires_grad_(False)
    return InceptionOutputs(inception, fc).to(device).eval()


def weights_id(weights_path: str | os.PathLike | None = None, random_init: bool = False) -> str:
    """The identity of the weights :func:`load_inception` reads with the same arguments, for the keys of cached
    statistics: ``path:size:mtime_ns`` of the file (None: :func:`default_inception_weights_path`), or
    ``random-init``. Raises FileNotFoundError when the file is absent."""
    if random_init:
        return "random-init"
    path = os.path.abspath(os.fspath(weights_path) if weights_path is not None else default_inception_weights_path())
    return f"{path}:{os.path.getsize(path)}:{os.stat(path).st_mtime_ns}"


def inception_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 50,
                      device: str | torch.device | None = None,
                      desc: str = "fastebm: Inception features") -> tuple[np.ndarray, np.ndarray]:
    """Pool3 features and unbiased logits of images in [-1, 1].

    Args:
        model: :class:`InceptionOutputs` (run in eval mode, without gradients; its mode is restored).
        images: (N, 3, H, W) float tensor in [-1, 1] (1e-3 tolerance, then clamped), any device.
        batch_size: images per forward pass (>= 1).
        device: where batches go; default the model's.
        desc: what the progress report on stderr calls this pass (:mod:`fastebm.io.progress`).

    Returns:
        ``(pool (N, 2048), logits (N, 1008))`` float64 NumPy.

    Raises:
        ValueError: not (N, 3, H, W) with N >= 1, not float, non-finite or outside [-1, 1], batch_size < 1.
    """
    x = images
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or x.shape[0] == 0:
        raise ValueError(f"images: expected a tensor of shape (N, 3, H, W), N >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(f"images: expected float values in [-1, 1], got dtype {x.dtype} (uint8? use x / 127.5 - 1)")
    lo, hi = float(x.min()), float(x.max())
    if not (-1.001 <= lo and hi <= 1.001):
        raise ValueError(f"images: expected finite values in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size}")
    device = device or next(model.parameters()).device
    pools, logits = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), Progress(len(x), desc, unit="images") as bar:
            for i in range(0, len(x), batch_size):
                xb = ((x[i:i + batch_size].to(device, torch.float32) + 1) / 2).clamp_(0, 1)
                pool, lg = model(xb)
                pools.append(pool.double().cpu())
                logits.append(lg.double().cpu())
                bar.update(len(xb))
    finally:
        model.train(was_training)
    return torch.cat(pools).numpy(), torch.cat(logits).numpy()


@functools.lru_cache(maxsize=1)
def expected_inception_shapes() -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of the FID Inception's state dict: torchvision's ``inception_v3`` with 1008
    classes and no auxiliary classifier, the network pytorch-fid's ``fid_inception_v3`` loads the file into
    (its FID blocks keep torchvision's parameter names). Built on the meta device: no memory, no weights."""
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _names(keys: list[str]) -> str:
    return ", ".join(map(repr, keys[:2])) + (" ..." if len(keys) > 2 else "")


def read_inception_weights(path: str, given: bool = True) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, checked to be the FID Inception weights: loadable with ``weights_only=True``
    (tensors and plain values only), a dict of tensors with exactly the names and shapes of
    :func:`expected_inception_shapes`, every value finite.

    Args:
        path: the file. given: whether the user named it (``--inception-weights``); else it is the default
            (pytorch-fid's cache), and the message says how to name another.

    Raises:
        FileNotFoundError: no file at ``path``.
        InceptionWeightsError: anything else wrong, in one line (the file, what is wrong, where the right one
            comes from).
    """
    who = (f"--inception-weights {path!r}" if given else
           f"the FID Inception weights at {path!r} (pytorch-fid's cache; --inception-weights PATH names another file)")
    right = f"expected pytorch-fid's {FID_WEIGHTS_FILENAME}, from {FID_WEIGHTS_URL}"
    if not os.path.isfile(path):
        if given:
            raise FileNotFoundError(f"Inception weights file {path!r} not found (expected "
                                    f"{FID_WEIGHTS_FILENAME}, from {FID_WEIGHTS_URL})")
        raise FileNotFoundError(f"FID Inception weights not found at {path!r}. Nothing is downloaded at run time: "
                                f"put {FID_WEIGHTS_FILENAME} (from {FID_WEIGHTS_URL}) there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch says, the file is not the weights
        what = (f"refused, it holds objects that would run code when loaded ({load_error(e)})" if "GLOBAL" in str(e)
                else f"truncated or not a torch file ({os.path.getsize(path)} bytes: {load_error(e).split('. ')[0]})")
        raise InceptionWeightsError(f"{who}: {what}; {right}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionWeightsError(f"{who}: holds a {type(state).__name__}, not a state dict of tensors; {right}")
    expected = expected_inception_shapes()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    other = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or other:
        fc = tuple(state["fc.weight"].shape) if "fc.weight" in state else None
        if any(k.startswith("AuxLogits.") for k in extra) or (fc is not None and fc[0] == 1000):
            aux = ", AuxLogits" if extra else ""
            what = (f"torchvision's ImageNet inception_v3 weights (1000 classes{aux}), not the FID "
                    f"Inception's (TensorFlow's 2015-12-05 graph, 1008 classes) that FID and IS are defined with")
        else:
            parts = [f"{len(missing)} missing ({_names(missing)})" if missing else "",
                     f"{len(extra)} unexpected ({_names(extra)})" if extra else "",
                     f"{len(other)} of other shapes ({other[0]!r} {tuple(state[other[0]].shape)}, expected "
                     f"{expected[other[0]]})" if other else ""]
            what = f"not the FID Inception's weights: tensors {', '.join(p for p in parts if p)}"
        raise InceptionWeightsError(f"{who}: {what}; {right}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InceptionWeightsError(f"{who}: non-finite values in {len(bad)} tensor(s) ({_names(bad)}); {right}")
    _CHECKED.add(_identity(path))
    return state


_CHECKED: set = set()  # files read whole and found right, by (path, size, mtime): a second check is free


def _identity(path: str) -> tuple:
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def check_inception_weights(path: str | None = None) -> None:
    """At the start of a run or an evaluation: the Inception weights file ``path`` (None: pytorch-fid's cache,
    :func:`default_inception_weights_path`) is there and is the FID weights (:func:`read_inception_weights`;
    a file already found right, unchanged since, is not read again).

    Raises:
        FileNotFoundError, InceptionWeightsError: as :func:`read_inception_weights`.
    """
    file = path if path is not None else default_inception_weights_path()
    if os.path.isfile(file) and _identity(file) in _CHECKED:
        return
    read_inception_weights(file, given=path is not None)
