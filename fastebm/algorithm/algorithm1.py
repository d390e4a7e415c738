"""Algorithm 1 of the paper (M-EBM / M-JEM training), one iteration, over a small state. The numbers are the
paper's line numbers, which the other modules cite too:

    2      x+ ~ p_data; for M-JEM (x, y) ~ p_data, augmented             batches()
    3      x0 ~ B; with probability ρ, x0 ~ p0 (Eq. 6)                    negatives()
    4–6    for t = 1..K: x_t = x_{t−1} − α ∂E(x_{t−1})/∂x + σ ε (Eq. 3)
    7      x− = StopGrad(x_K)
    12     B ← x−
    8–10   L = E(x+) − E(x−) + λ (E(x+)² + E(x−)²) (Eq. 8) [+ CE(p(y|x))]   update()
    11     θ ← θ − η ∇θ L

(line 12, the buffer write, happens inside negatives(): it depends on x− alone.)

:class:`Algorithm1` holds what one iteration reads and writes (network, sampler, replay buffer, optimizer,
the two batch streams) and is a function of tensors: the dataset indices of the iteration and the learning
rate come in, the losses come out, with static shapes and no host sync. The same object runs eagerly or
as one compiled graph (:mod:`fastebm.fastpath.compiled_step`); which network and sampler it holds (plain, compiled, CUDA
graphs, Triton) is decided by :class:`fastebm.fastpath.fastpath.FastPath`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch

from ..data.imageset import Batches
from ..io.profiling import nvtx_range
from .buffer import ReplayBuffer
from .loss import classification_loss, generative_loss
from .optimizer import optimizer_step
from .sampler import frozen_bn_stats


@dataclasses.dataclass
class Algorithm1:
    """One training iteration (module docstring); call it as ``alg(idx, idx_cls, lr)``.

    Attributes:
        model: the :class:`~fastebm.algorithm.model.EnergyModel`; its parameters are θ.
        net: x → (E(x) (N,), logits or None) used by the loss pass: ``model``, its ``torch.compile``d form
            or its DDP wrapper.
        sampler: x0 (N, C, H, W) → x_K after K SGLD steps (:class:`~fastebm.algorithm.sampler.Sampler`).
        buffer: the replay buffer B (with p0 for the ρ-restarts).
        opt: SGD or Adam on θ (state created up front, :func:`~fastebm.algorithm.optimizer.init_optimizer_state`).
        data: the p(x) batch stream (positives x+); cls_data: the augmented p(y|x) stream or None.
        l2, reg_form: λ and the form of the L2 term (Eq. 8, :func:`~fastebm.algorithm.loss.generative_loss`).
        cls_weight: weight of the cross-entropy term.
        amp: autocast dtype of the loss pass (None: the network's own precision).
        channels_last: feed the network channels-last tensors.
        sgld_bn: the ``--sgld-bn`` mode (:data:`~fastebm.algorithm.sampler.BN_MODES`); ``"update"``: the negatives' pass
            updates the BatchNorm running statistics too, as every forward of the authors' code.
        px_weight: weight of the generative term (Eq. 8; the authors' ``--px``). 0: a classifier only (mebm
            ``train_maebm.py --px 0``): no buffer draw, no SGLD, no energies; the cross-entropy alone is trained.
    """

    model: torch.nn.Module
    net: Callable
    sampler: Callable
    buffer: ReplayBuffer
    opt: torch.optim.Optimizer
    data: Batches
    cls_data: Batches | None
    l2: float
    reg_form: str
    cls_weight: float
    amp: torch.dtype | None = None
    channels_last: bool = False
    sgld_bn: str = "batch"
    px_weight: float = 1.0

    def __post_init__(self):
        self.has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in self.model.modules())

    def replace(self, **changes) -> Algorithm1:
        """A copy with some attributes replaced (another network or sampler over the same state)."""
        return dataclasses.replace(self, **changes)

    def __call__(self, idx: torch.Tensor, idx_cls: torch.Tensor | None, lr: torch.Tensor) -> dict:
        """One iteration.

        Args:
            idx: (B,) int64 dataset indices of the p(x) batch; idx_cls: (B_cls,) of the p(y|x) batch or None.
            lr: 0-dim float32 η (a tensor, so a compiled step does not recompile along the schedule).

        Returns a dict of device tensors (no host sync): scalars ``loss``, ``loss_gen``, ``loss_cls``,
        ``e_pos``, ``e_neg`` (batch means), ``acc``, ``finite_negatives`` (fraction written to B); and,
        for checks and diagnostics, ``_x_pos``, ``_x0``, ``_x_neg`` (N, C, H, W), ``_e_pos``, ``_e_neg`` (N,),
        ``_logits`` (B_cls, C) with a p(y|x) batch.
        """
        x_pos, x_cls, y = self.batches(idx, idx_cls)                # line 2
        x0, x_neg, written = self.negatives(len(x_pos))              # lines 3–7, 12
        out = self.update(x_pos, x_neg, x_cls, y, lr)                # lines 8–11
        out.update(finite_negatives=written.float().mean(), _x0=x0)
        return out

    def batches(self, idx, idx_cls):
        """x+ (B, C, H, W) and, with a p(y|x) term, the augmented (x, y); all random draws of the data."""
        with nvtx_range("data"):
            x_pos, _ = self.data.gather(idx)                         # augmented only for JEM
            x_cls = y = None
            if self.cls_data is not None:
                x_cls, y = self.cls_data.gather(idx_cls)
        return x_pos, x_cls, y

    def negatives(self, n: int):
        """x0 from B (ρ of them from p0), K SGLD steps, x_K written back to B. Returns (x0, x_K, written).
        A classifier only (``px_weight`` 0) draws nothing: the first n buffer samples, as they are, all "written"."""
        if self.px_weight == 0:
            x = self.buffer.samples[:n]
            return x, x, torch.ones(n, dtype=torch.bool, device=x.device)
        with nvtx_range("p0"):
            x0, buf_idx = self.buffer.sample(n)
        x_neg = self.sampler(x0)
        written = self.buffer.update(buf_idx, x_neg)
        return x0, x_neg, written

    def update(self, x_pos, x_neg, x_cls, y, lr) -> dict:
        """Eq. 8 (+ cross-entropy on the p(y|x) batch), backward, optimizer step (lines 8–11)."""
        dtype = self.amp
        with torch.autocast(x_pos.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if self.px_weight == 0:  # a classifier only: no energies (mebm train_maebm.py: "if arg.px > 0")
                e_pos = e_neg = torch.zeros(len(x_pos), device=x_pos.device)
                loss_gen = e_pos.sum()
            else:
                e_pos, e_neg = self.energies(x_pos, x_neg)
                loss_gen = generative_loss(e_pos, e_neg, self.l2, self.reg_form)
            loss, zero = self.px_weight * loss_gen, torch.zeros_like(loss_gen)
            loss_cls, acc, logits = zero, zero, None
            if x_cls is not None:                                    # − log p(y|x) on its own batch
                with nvtx_range("classify"):
                    logits = self.net(self.layout(x_cls))[1]
                    loss_cls = classification_loss(logits, y)
                loss = loss + self.cls_weight * loss_cls
                acc = (logits.argmax(1) == y).float().mean()
        if not torch.compiler.is_compiling():  # compiled: cleared before the graph runs (zero_grad says why)
            self.zero_grad()
        with nvtx_range("backward"):
            loss.backward()
        with nvtx_range("optimizer"):
            optimizer_step(self.opt, lr)
        out = {"loss": loss.detach(), "loss_gen": loss_gen.detach(), "loss_cls": loss_cls.detach(),
               "e_pos": e_pos.detach().mean(), "e_neg": e_neg.detach().mean(), "acc": acc.detach(),
               "_x_pos": x_pos, "_x_neg": x_neg, "_e_pos": e_pos.detach(), "_e_neg": e_neg.detach()}
        if logits is not None:  # no None outputs: a compiled graph returned a (1,) tensor for one (torch 2.14)
            out["_logits"] = logits.detach()
        return out

    def zero_grad(self) -> None:
        """θ's gradients ← None, so that line 11's backward writes ∇θ L afresh (no accumulation across
        iterations). :meth:`update` calls it when eager; a compiled step
        (:func:`fastebm.fastpath.compiled_step.compile_step`) calls it eagerly before each run of its graph, which must
        not assign ``p.grad = None`` itself: on torch 2.14 that, followed by the traced ``backward()``, makes Dynamo
        write the attribute's source onto its process-wide None constant, and every function compiled later in the
        process then returns that attribute of its own ``self`` for a plain ``None`` (AttributeError;
        pytorch/pytorch#193725)."""
        for p in self.model.parameters():
            p.grad = None

    def energies(self, x_pos: torch.Tensor, x_neg: torch.Tensor):
        """E(x+) (N,) and E(x−) (N,), at least float32.

        Without BatchNorm one forward over [x+; x−] is exact and cheaper; with BatchNorm two forwards, as
        the authors' code (each batch normalized by its own statistics), and the negatives' pass leaves the
        running statistics to the data (:func:`~fastebm.algorithm.sampler.frozen_bn_stats`), except with
        ``sgld_bn="update"``, where it updates them as the authors' ``f(x_q)`` (mebm ``train_maebm.py``, f7ae2f1).
        """
        x_pos, x_neg = self.layout(x_pos), self.layout(x_neg)
        if not self.has_bn:
            with nvtx_range("energy/pos+neg"):
                e = self.net(torch.cat([x_pos, x_neg]))[0]
            return e[:len(x_pos)], e[len(x_pos):]
        with nvtx_range("energy/pos"):
            e_pos = self.net(x_pos)[0]
        freeze = frozen_bn_stats(self.model) if self.sgld_bn != "update" else contextlib.nullcontext()
        with nvtx_range("energy/neg"), freeze:
            e_neg = self.net(x_neg)[0]
        return e_pos, e_neg

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the network's memory format (channels-last on the fast path)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
