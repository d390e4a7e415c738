"""SGLD sampling of negatives (paper Eq. 3, Algorithm 1 lines 4–6).

    x_{k+1} = x_k − α ∂E_θ(x_k)/∂x_k + σ ε,   ε ~ N(0, I),   k = 0 … K−1

with step size α (1 in the paper) and noise σ (0.001; 0 for K ≤ 2 in the reference scripts). As in the
reference code the step size and noise are decoupled (not the α/2, √α of exact Langevin dynamics).
Options of the reference code: clamp the gradient to [−c, c], clamp x to [−1, 1] after each step.

Guarantees (tested):
- gradients are taken w.r.t. the input only: the parameters are frozen (``requires_grad=False``) while
  sampling, so no weight gradient is computed and every parameter's ``.grad`` is left untouched;
- no autograd graph is kept between steps or returned (the result is detached);
- BatchNorm layers normalize with batch statistics (``bn_mode="batch"``, as the reference code) but
  their running statistics are restored afterwards, so sampling never changes evaluation; or, with
  ``bn_mode="eval"``, sampling runs the network in eval mode; or, with ``bn_mode="update"``, they normalize
  with batch statistics and every step's forward updates the running statistics, as the authors' code
  (mebm ``train_maebm.py`` ``sample_q`` at f7ae2f1: ``f.eval()`` commented out, "Batch norm uses train
  status"), so the chains' statistics enter evaluation.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..io.profiling import nvtx_range
from ..kernels import rng_state_from_torch
from ..kernels.reference import langevin_reference

BN_MODES = ("batch", "eval", "update")


@dataclass
class SGLDConfig:
    """SGLD settings.

    Attributes:
        n_steps: K ≥ 1.
        step_size: α > 0 (pixel units of the [−1, 1] range per unit energy gradient).
        noise: σ ≥ 0, standard deviation of the Gaussian noise per step.
        grad_clip: clamp ∂E/∂x elementwise to [−c, c] (None: no clamp).
        clamp_x: clamp x to [−1, 1] after each step.
        bn_mode: ``"batch"`` (batch statistics, running stats restored), ``"eval"`` (running statistics) or
            ``"update"`` (batch statistics, running stats updated by each step's forward, not restored).
        inner_steps: updates per step from one input gradient (≥ 1): JEM++'s proximal YOPO-based Langevin
            dynamics, PYLD (github sndnyang/JEMPP ``train_jempp.py`` @fba6ba5 ``sample_q``: ``in_steps`` updates
            ``clamp(x + pyld_lr·clamp(η, −eps, eps), −1, 1)`` with η the gradient of the first layer's Hamiltonian,
            which for that linear layer is the step's own input gradient); the noise enters the last update only
            (theirs adds it after the clamp; its recipe has σ = 0). 1: plain SGLD (Eq. 3).
    """

    n_steps: int = 5
    step_size: float = 1.0
    noise: float = 0.001
    grad_clip: float | None = None
    clamp_x: bool = True
    bn_mode: str = "batch"
    inner_steps: int = 1

    @classmethod
    def of_run(cls, cfg, n_steps: int | None = None, bn_mode: str | None = None) -> SGLDConfig:
        """The SGLD settings of a run's :class:`~fastebm.config.options.Config` (``k``, ``step_size``, ``noise``,
        ``grad_clip``, ``clamp_x``, ``sgld_bn``, ``sgld_inner_steps``); ``n_steps`` / ``bn_mode`` replace K and
        the BN mode (evaluation's longer chains)."""
        return cls(cfg.k if n_steps is None else int(n_steps), cfg.step_size, cfg.noise, cfg.grad_clip, cfg.clamp_x,
                   cfg.sgld_bn if bn_mode is None else bn_mode, cfg.sgld_inner_steps)


_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def _bn_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]


def bn_snapshot(model: nn.Module) -> list:
    """Copies of every BatchNorm running mean / var / count (for :func:`bn_restore`)."""
    return [[m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()]
            for m in _bn_layers(model)]


def bn_restore(model: nn.Module, snapshot: list) -> None:
    """Copy a :func:`bn_snapshot` back in place (a device op, capturable in a CUDA graph)."""
    with torch.no_grad():
        for m, (mean, var, count) in zip(_bn_layers(model), snapshot):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """Context in which training-mode BatchNorm normalizes with batch statistics but leaves its running
    mean / var unchanged, so that they keep estimating the statistics of the data.

    Inside, each BatchNorm's momentum is 0 (running ← 1·running + 0·batch, exact for finite batches);
    no tensor saved for backward is written afterwards, so autograd graphs built inside stay valid and
    the backward may run after the context ends. The batch count is restored on exit.
    """
    bns = _bn_layers(model)
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (momentum, count) in zip(bns, saved):
                m.momentum = momentum
                m.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def sampling_mode(model: nn.Module, bn_mode: str = "batch"):
    """Context for sampling: parameters frozen, BatchNorm running statistics preserved (or updated).

    ``bn_mode="batch"`` keeps the model's mode (training BatchNorm normalizes with batch statistics)
    and restores the running statistics on exit (:func:`bn_restore`); ``"eval"`` switches the
    model to eval mode; ``"update"`` keeps the mode and leaves the running statistics as the forwards
    inside moved them (the authors' code). On exit ``requires_grad`` flags and the train/eval mode are restored.

    Inside a ``torch.compile``d step (``--compile-step``) the parameters are not frozen (Dynamo cannot
    trace ``requires_grad_`` on them): there ``torch.autograd.grad(E.sum(), x)`` is traced for the input
    only, so no weight gradient is computed or accumulated either way.
    """
    params = [] if torch.compiler.is_compiling() else [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    for p in params:
        p.requires_grad_(False)
    if bn_mode == "eval":
        model.eval()
    snapshot = None if bn_mode == "update" else bn_snapshot(model)
    try:
        yield
    finally:
        if snapshot is not None:
            bn_restore(model, snapshot)
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)


_TRACES_REQUIRES_GRAD: bool | None = None  # can Dynamo trace x.requires_grad_() here? (probed once)
_INPUT_LEAVES: dict = {}  # (shape, device) → zero leaf requiring grad, made outside any compiled graph


def energy_grad(energy_fn, x: torch.Tensor) -> torch.Tensor:
    """∂(Σ_i E(x_i))/∂x for a batch x (N, C, H, W) → (N, C, H, W) (the SGLD input gradient of Eq. 3);
    no graph kept. The one implementation of the input gradient (plain ``sgld``, the fast ``Sampler``).

    Inside a compiled training step on a torch whose Dynamo cannot trace ``requires_grad_`` (torch 2.11)
    the gradient is taken w.r.t. a zero leaf z added to x, ∂E(x + z)/∂z = ∂E/∂x, with z made beforehand
    by :func:`prepare_compiled_input_grad` (Dynamo cannot create a tensor that requires grad either).
    """
    z = _INPUT_LEAVES.get((tuple(x.shape), x.device)) if torch.compiler.is_compiling() else None
    if z is not None:
        with torch.enable_grad():
            (g,) = torch.autograd.grad(energy_fn(x.detach() + z).sum(), z)
        return g
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(energy_fn(x).sum(), x)
    return g


def prepare_compiled_input_grad(shape: tuple, device) -> bool:
    """Call before compiling a step that takes SGLD input gradients of chains of ``shape`` on ``device``:
    probes (once per process) whether Dynamo traces ``requires_grad_`` and, where it does not, makes the
    zero leaf that :func:`energy_grad` uses inside the graph. Returns whether ``requires_grad_`` is traced."""
    global _TRACES_REQUIRES_GRAD
    if _TRACES_REQUIRES_GRAD is None:
        def probe(t):
            t = t.detach().requires_grad_(True)
            with torch.enable_grad():
                return torch.autograd.grad((t * t).sum(), t)[0]

        try:
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                torch.compile(probe, backend="eager", fullgraph=True)(torch.ones(2))
            _TRACES_REQUIRES_GRAD = True
        except Exception:  # noqa: BLE001 - torch._dynamo.exc.Unsupported on torch 2.11
            _TRACES_REQUIRES_GRAD = False
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if not _TRACES_REQUIRES_GRAD:
        key = (tuple(shape), device)
        if key not in _INPUT_LEAVES:
            _INPUT_LEAVES[key] = torch.zeros(shape, device=device, requires_grad=True)
    return _TRACES_REQUIRES_GRAD


def langevin_update(x: torch.Tensor, grad: torch.Tensor, cfg: SGLDConfig, noise: torch.Tensor | None = None):
    """One SGLD update (Eq. 3): clamp(x − α·clamp(g) + σ·ε), the plain path of the fused kernel (its
    reference, :func:`fastebm.kernels.reference.langevin_reference`, with the settings of ``cfg``).

    Args:
        x: (N, C, H, W) float32 chain state; grad: ∂E/∂x, same shape (any float dtype).
        noise: ε of x's shape; drawn from the global RNG when None and σ > 0.
    Returns a new (N, C, H, W) float32 tensor.
    """
    if noise is None and cfg.noise > 0:
        noise = torch.randn_like(x)
    return langevin_reference(x, grad, cfg.step_size, cfg.noise, noise, cfg.grad_clip,
                              (-1.0, 1.0) if cfg.clamp_x else None)


def quiet_update(x: torch.Tensor, grad: torch.Tensor, cfg: SGLDConfig) -> torch.Tensor:
    """:func:`langevin_update` without noise: a PYLD inner update (``cfg.inner_steps``)."""
    return langevin_reference(x, grad, cfg.step_size, 0.0, None, cfg.grad_clip, (-1.0, 1.0) if cfg.clamp_x else None)


def chain_state(x0: torch.Tensor) -> torch.Tensor:
    """x0 detached, in at least float32 (float64 stays float64: the fast path's reference run)."""
    x0 = x0.detach()
    return x0.float() if x0.dtype in (torch.float16, torch.bfloat16) else x0


def sgld(model: nn.Module, x0: torch.Tensor, cfg: SGLDConfig, energy_fn=None, noise=None) -> torch.Tensor:
    """Run K SGLD steps from x0 (Algorithm 1 lines 4–6): Eq. 3 as a plain loop, the reference that
    :class:`Sampler` (what training runs) is tested against bit for bit, as ``kernels/reference.py`` is for the
    kernels; also the shortest reading of the sampler.

    Args:
        model: the :class:`~fastebm.algorithm.model.EnergyModel` (frozen and BN-protected while sampling).
        x0: (N, C, H, W) float32 initial chain states in [−1, 1].
        cfg: :class:`SGLDConfig`.
        energy_fn: x → E(x) (N,); defaults to ``model.energy``.
        noise: optional sequence of K noise tensors ε_k (tests); drawn from the global RNG otherwise.

    Returns:
        x_K: (N, C, H, W) float32, detached.
    """
    energy_fn = model.energy if energy_fn is None else energy_fn
    x = chain_state(x0)
    with sampling_mode(model, cfg.bn_mode):
        for k in range(cfg.n_steps):
            g = energy_grad(energy_fn, x)
            for _ in range(cfg.inner_steps - 1):  # PYLD: the same gradient again, without noise
                x = quiet_update(x, g, cfg)
            x = langevin_update(x, g, cfg, None if noise is None else noise[k])
    return x.detach()


# ---------------------------------------------------------------------------------------------- fast path
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def compile_mode(mode: str, cuda_graphs: bool) -> dict:
    """torch.compile keyword arguments for ``--compile`` (off | default | max-autotune | aot_eager).

    ``max-autotune`` uses Inductor's own CUDA graphs, which cannot nest inside ours, so with
    ``cuda_graphs`` it becomes ``max-autotune-no-cudagraphs``. ``aot_eager`` runs the compile pipeline
    (Dynamo + AOTAutograd) without code generation: for tests and debugging.
    """
    if mode == "aot_eager":
        return {"backend": "aot_eager", "dynamic": False}
    if mode == "max-autotune" and cuda_graphs:
        mode = "max-autotune-no-cudagraphs"
    return {"mode": mode, "dynamic": False}


class Sampler:
    """K-step SGLD (Eq. 3) with the fast-path switches beside the plain path of :func:`sgld`.

    Args:
        model: the :class:`~fastebm.algorithm.model.EnergyModel`.
        cfg: :class:`SGLDConfig`.
        net: the callable x → (energy, logits) to differentiate (``model`` itself, or its
            ``torch.compile``d version; static shapes, so one graph per batch size).
        triton: use the fused Triton Langevin kernel (``fastebm.kernels.langevin``), noise drawn from
            the device tensor ``rng_state`` ([seed, offset], int64) that each step advances.
        cuda_graphs: capture the whole K-step loop (forward, input gradient, update, BatchNorm
            restore; with ``bn_mode="update"`` the running-statistics updates instead) in one CUDA graph at
            the first call and replay it afterwards (CUDA only). The graph reads the model's parameters
            and buffers and ``rng_state`` by address: restore them in place (``load_state_dict``,
            ``copy_``) and it stays valid, as :meth:`Trainer.rollback <fastebm.run.trainer.Trainer.rollback>` does.
        amp: ``off``, ``bf16`` or ``fp16`` autocast for the network; the chain state stays fp32.
        channels_last: keep the chain in channels-last layout (the model must be converted too).
        rng_state: the Triton kernel's noise state (made from the global torch RNG when None).

    Calling ``sampler(x0)`` with x0 (N, C, H, W) float32 returns x_K, a new detached float32 tensor.
    Parameters are frozen and BatchNorm running statistics restored (or updated) exactly as in :func:`sgld`.
    """

    def __init__(self, model: nn.Module, cfg: SGLDConfig, net=None, triton: bool = False,
                 cuda_graphs: bool = False, amp: str = "off", channels_last: bool = False,
                 rng_state: torch.Tensor | None = None):
        if amp not in AMP_DTYPES:
            raise ValueError(f"Sampler: amp (the SGLD precision, --sgld-amp) must be one of {list(AMP_DTYPES)}, "
                             f"got {amp!r}")
        self.model, self.cfg, self.net = model, cfg, net if net is not None else model
        self.triton, self.cuda_graphs, self.amp, self.channels_last = triton, cuda_graphs, amp, channels_last
        self.rng_state = rng_state
        self._graph = None

    # -- one step ---------------------------------------------------------------------------------
    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        dtype = AMP_DTYPES[self.amp]
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None,
                            cache_enabled=False):
            return self.net(x)[0]

    def step(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One SGLD step of the fp32 chain state x (``inner_steps`` updates from its gradient, the noise in the
        last); returns the new state."""
        g = energy_grad(self._energy, x)
        x = x.detach()
        if not self.triton:
            for _ in range(self.cfg.inner_steps - 1):  # PYLD: the same gradient again, without noise
                x = quiet_update(x, g, self.cfg)
            return langevin_update(x, g, self.cfg, noise)
        from fastebm.kernels.langevin import langevin_step

        if g.stride() != x.stride():  # the fused kernel walks x and g in one memory order
            g = torch.empty_like(x, dtype=g.dtype).copy_(g)
        if self.rng_state is None:
            self.rng_state = rng_state_from_torch(x.device)
        clamp = (-1.0, 1.0) if self.cfg.clamp_x else None
        for j in range(self.cfg.inner_steps):  # σ = 0 draws nothing: only the last update advances the Philox state
            sigma = self.cfg.noise if j == self.cfg.inner_steps - 1 else 0.0
            x = langevin_step(x, g, self.cfg.step_size, sigma, self.rng_state, grad_clip=self.cfg.grad_clip,
                              clamp=clamp)
        return x

    def _loop(self, x0: torch.Tensor, noise=None) -> torch.Tensor:
        x = chain_state(x0)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        for k in range(self.cfg.n_steps):
            with nvtx_range("sgld/step"):
                x = self.step(x, None if noise is None else noise[k])
        return x

    # -- the whole chain ----------------------------------------------------------------------------
    def __call__(self, x0: torch.Tensor, noise=None) -> torch.Tensor:
        with nvtx_range("sgld"), sampling_mode(self.model, self.cfg.bn_mode):
            if self.cuda_graphs and noise is None:
                return self._replay(x0)
            return self._loop(x0, noise).detach()

    def _replay(self, x0: torch.Tensor) -> torch.Tensor:
        """CUDA-graph path: capture once (static shapes), then copy x0 in, replay, copy x_K out."""
        if self._graph is None or self._static_in.shape != x0.shape:
            self._capture(x0)
        self._static_in.copy_(x0)
        with nvtx_range("sgld/graph"):
            self._graph.replay()
        return self._static_out.clone()  # the next replay overwrites the static output

    def _capture(self, x0: torch.Tensor) -> None:
        if x0.device.type != "cuda":
            raise ValueError("--cuda-graphs needs CUDA tensors (this chain is on "
                             f"{x0.device.type})")
        if self.triton and self.rng_state is None:
            self.rng_state = rng_state_from_torch(x0.device)
        self._static_in = x0.detach().float().clone()
        snapshot = bn_snapshot(self.model)
        # Warm-up on a side stream (cuDNN / Triton autotuning, compile), as torch.cuda.graph requires.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._loop(self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        bn_restore(self.model, snapshot)  # undo what warm-up did to the running statistics
        keep = self.cfg.bn_mode != "update"  # update: the captured forwards' running-statistics writes stay
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            inner = bn_snapshot(self.model) if keep else None
            self._static_out = self._loop(self._static_in)
            if keep:
                bn_restore(self.model, inner)  # captured: every replay restores the statistics
        self._graph = graph

    def noise_draws(self, x0: torch.Tensor) -> list:
        """The K noise tensors ε_k (shaped like x0) that a call ``self(x0)`` draws from the current random
        state: the Triton kernel's Philox numbers (from a copy of ``rng_state``, which is not advanced), or
        torch's (drawn now from the global generator, in the chain's layout: restore the generator before
        running the chain). Zeros when σ = 0. For checks against a float64 run of the same chain."""
        x = chain_state(x0)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cfg.noise == 0:
            return [torch.zeros_like(x) for _ in range(self.cfg.n_steps)]
        if not self.triton:
            return [torch.randn_like(x) for _ in range(self.cfg.n_steps)]
        from fastebm.kernels.langevin import langevin_step

        rng, zero = self.rng_state.clone(), torch.zeros_like(x)
        return [langevin_step(zero, zero, 0.0, 1.0, rng, clamp=None) for _ in range(self.cfg.n_steps)]

