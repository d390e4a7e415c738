"""The fast path: one object owns what runs, checks it, and switches off what fails its check.

Components (each with the plain path beside it; ``cfg`` holds what the user asked for, resolved for the
device, and is never changed; what actually runs is :meth:`FastPath.active`):

==================  ====================================================================================
``compile_step``    the whole iteration (:class:`~fastebm.algorithm.algorithm1.Algorithm1`) as one ``torch.compile``d
                    graph, CUDA graphs on CUDA (:mod:`fastebm.fastpath.compiled_step`); when it runs, the per-piece
                    components below are not used (the graph holds the plain network and SGLD loop)
``compile``         ``torch.compile`` of the network x → (E, logits), for SGLD and the loss pass
``cuda_graphs``     the K-step SGLD loop captured once in a CUDA graph and replayed
``triton_langevin`` the fused Langevin update (Eq. 3), noise drawn in-kernel
``triton_p0``       the fused p0 sampler (Eq. 6)
``amp``             bf16 / fp16 autocast of the loss pass (energies of x+ and x−, the classifier, backward)
``sgld_amp``        bf16 / fp16 autocast of the SGLD input gradients
==================  ====================================================================================

``channels_last`` is a memory layout of the network and chains, not a switchable component.

At the first iteration (``--fast-path auto`` or ``strict``) :meth:`FastPath.check` runs every enabled
component's check (:data:`CHECKS`: :mod:`fastebm.fastpath.selfcheck` against the plain path and float64,
:mod:`fastebm.fastpath.precision` for bf16 / fp16) from the run's own state, restores that state, and switches a
failing component off with one warning line (``auto``) or raises :class:`FastPathError` (``strict``).
"""
from __future__ import annotations

import sys
import warnings

import torch

from ..algorithm.algorithm1 import Algorithm1
from ..algorithm.sampler import AMP_DTYPES, Sampler, compile_mode, prepare_compiled_input_grad
from ..kernels import reseed_rng_state, rng_state_from_torch
from ..p0 import P0_KINDS
from .compiled_step import compile_step
from .precision import check_amp, check_sgld_amp
from .selfcheck import check_compile, check_compile_step, check_cuda_graphs, check_triton_langevin, check_triton_p0

COMPONENTS = ("amp", "sgld_amp", "compile_step", "compile", "cuda_graphs", "triton_langevin", "triton_p0")
PER_PIECE = ("compile", "cuda_graphs", "triton_langevin", "triton_p0")
# Each component's check: against the plain path and float64 (selfcheck), or the noise it adds (precision)
CHECKS = {"amp": check_amp, "sgld_amp": check_sgld_amp, "compile_step": check_compile_step, "compile": check_compile,
          "cuda_graphs": check_cuda_graphs, "triton_langevin": check_triton_langevin, "triton_p0": check_triton_p0}


class FastPathError(RuntimeError):
    """``--fast-path strict``: a fast component failed its self-check."""


def requested_components(cfg) -> list[str]:
    """The fast components a resolved configuration asks for, in check order."""
    on = {"amp": cfg.amp not in ("off", "auto", None), "sgld_amp": cfg.sgld_amp not in ("off", "auto", None),
          "compile_step": bool(cfg.compile_step), "compile": cfg.compile not in ("off", "auto", None),
          "cuda_graphs": bool(cfg.cuda_graphs), "triton_langevin": bool(cfg.triton),
          "triton_p0": bool(cfg.triton) and P0_KINDS[cfg.p0].triton}
    return [name for name in COMPONENTS if on[name]]


class FastPath:
    """The run's network, sampler and step function, fast where the configuration asks and checked.

    Args:
        cfg: the resolved :class:`~fastebm.config.options.Config` (read only).
        alg: the plain :class:`~fastebm.algorithm.algorithm1.Algorithm1` of the run (model, buffer, optimizer, batch
            streams; ``net`` may be the DDP wrapper of the model, ``sampler`` the plain SGLD loop).
        device: the training device (the compiled step is single-process: the completed Config never asks for it
            under DDP, :func:`fastebm.run.completion.check_world_size`).
        is_main: whether this process prints warnings (rank 0).

    Attributes:
        step: the callable ``(idx, idx_cls, lr) -> dict`` to run (:meth:`step`).
        lr: the 0-dim learning-rate tensor a compiled step reads: a copy of the optimizer's group ``lr`` (the
            learning rate's one source, which eager steps read), made by :meth:`batch` before every step.
        rng: the Triton kernels' Philox state ([seed, offset] int64 on the device), or None.
        report: component → ``"ok (margin Mx): ..."``, ``"off: ..."`` or ``"unused (compiled step)"`` after
            :meth:`check` (M: the limit over the error of the tightest statistic,
            :class:`~fastebm.fastpath.selfcheck.Outcome`).
    """

    def __init__(self, cfg, alg: Algorithm1, device: torch.device, is_main: bool = True):
        self.cfg, self.device, self.is_main = cfg, torch.device(device), is_main
        self.plain = alg
        self.model, self.buffer, self.opt, self.sgld = alg.model, alg.buffer, alg.opt, alg.sampler.cfg
        self.batch_size = cfg.batch_size
        self.lr = torch.zeros((), device=self.device)
        self.amp_dtype, self.sgld_amp = AMP_DTYPES[_precision(cfg.amp)], _precision(cfg.sgld_amp)
        self.on = {name: True for name in requested_components(cfg)}
        self.rng = None
        if self.on.get("triton_langevin"):  # the fused kernels' Philox state: a device tensor
            self.rng = rng_state_from_torch(self.device)
        self.net = (torch.compile(self.model, **compile_mode(cfg.compile, bool(self.on.get("cuda_graphs"))))
                    if self.on.get("compile") else self.model)
        self.report: dict = {}
        self._compiled = None
        self._build()
        self.pending = cfg.fast_path != "off" and bool(self.on)

    # ------------------------------------------------------------------ what runs
    def _build(self) -> None:
        """(Re)build the per-piece iteration and, when on, the compiled one from the components that are on."""
        on = self.on
        self.sampler = Sampler(self.model, self.sgld, net=self.net, triton=bool(on.get("triton_langevin")),
                               cuda_graphs=bool(on.get("cuda_graphs")), amp=self._sgld_precision(),
                               channels_last=self.cfg.channels_last, rng_state=self.rng)
        loss_net = self.plain.net if self.plain.net is not self.model else self.net  # DDP keeps its wrapper
        self.per_piece = self.plain.replace(net=loss_net, sampler=self.sampler, amp=self._amp(),
                                            channels_last=self.cfg.channels_last)
        self._compiled = None
        if on.get("compile_step"):
            self._compile()
        self.buffer.p0.use_triton(self.rng if on.get("triton_p0") and not on.get("compile_step") else None)

    def _compile(self) -> None:
        eager = self.eager_of_compiled()
        static = [self.buffer.samples, self.lr] + [t for st in self.opt.state.values() for t in st.values()
                                                   if isinstance(t, torch.Tensor)]
        prepare_compiled_input_grad((self.batch_size, *self.buffer.samples.shape[1:]), self.device)
        self._compiled = compile_step(eager.__call__, self.cfg.compile, self.device.type, static)

    def _amp(self):
        return self.amp_dtype if self.on.get("amp") else None

    def _sgld_precision(self) -> str:
        return self.sgld_amp if self.on.get("sgld_amp") else "off"

    @property
    def step(self):
        """The iteration to run: the compiled step when it is on, else the per-piece one."""
        return self.compiled_step if self.on.get("compile_step") else self.per_piece

    def compiled_step(self, idx, idx_cls, lr):
        """One compiled iteration (compiled at its first call). Raises RuntimeError when it is not built."""
        if self._compiled is None:
            raise RuntimeError("the compiled step is off")
        return self._compiled(idx, idx_cls, lr)

    def eager_of_compiled(self) -> Algorithm1:
        """The iteration the compiled step traces, run eagerly: the plain network and SGLD loop, with the
        precision and layout that are on."""
        sampler = Sampler(self.model, self.sgld, net=self.model, amp=self._sgld_precision(),
                          channels_last=self.cfg.channels_last)
        return self.plain.replace(net=self.model, sampler=sampler, amp=self._amp(),
                                  channels_last=self.cfg.channels_last)

    def eager_plain(self) -> Algorithm1:
        """The plain fp32 iteration (no fast component), on the bare model (no DDP wrapper: a check is local)."""
        return self.plain.replace(net=self.model)

    def active(self) -> dict:
        """What runs now: component → bool (``amp`` / ``sgld_amp``: the precision), plus ``channels_last``."""
        out = {name: (name in self.on and self.on[name]) for name in COMPONENTS}
        out["amp"] = _precision(self.cfg.amp) if out["amp"] else "off"
        out["sgld_amp"] = self.sgld_amp if out["sgld_amp"] else "off"
        out["channels_last"] = bool(self.cfg.channels_last)
        return out

    # ------------------------------------------------------------------ switching
    def disable(self, name: str) -> None:
        """Switch one fast component off; the plain path takes its place. Raises ValueError for an unknown name."""
        if name not in COMPONENTS:
            raise ValueError(f"unknown fast component {name!r}; expected one of {COMPONENTS}")
        if not self.on.get(name):
            return
        self.on[name] = False
        if name == "compile":
            self.net = self.model
        self._build()

    def reload(self) -> None:
        """After a checkpoint load or rollback: the optimizer state and p0 are new objects; attach p0 to the
        Triton sampler and trace the compiled step again (captured SGLD graphs stay valid: parameters, buffer
        and Philox state are restored in place)."""
        self.buffer.p0.use_triton(self.rng if self.on.get("triton_p0") and not self.on.get("compile_step") else None)
        if self.on.get("compile_step"):
            self._compile()

    def reseed(self, seed: int) -> None:
        """New chain noise: torch's generators and the Triton Philox state."""
        torch.manual_seed(seed)
        if self.rng is not None:
            reseed_rng_state(self.rng, seed)

    # ------------------------------------------------------------------ the check
    def batch(self, it: int):
        """(idx, idx_cls, lr) of iteration ``it`` (this rank's shard); ``lr`` is :attr:`lr`, refilled here from the
        optimizer's group (a device fill, no host sync)."""
        self.lr.fill_(self.opt.param_groups[0]["lr"])
        data, cls = self.plain.data, self.plain.cls_data
        return data.shard_indices(it), (cls.shard_indices(it) if cls is not None else None), self.lr

    def snapshot(self) -> dict:
        """Copies of everything a check may change: parameters, BN statistics, optimizer state, replay buffer,
        RNG states (torch CPU / CUDA, Philox)."""
        clone = lambda d: {k: v.detach().clone() for k, v in d.items() if isinstance(v, torch.Tensor)}  # noqa: E731
        snap = {"model": clone(self.model.state_dict()), "buffer": self.buffer.samples.clone(),
                "opt": [(st, clone(st)) for st in self.opt.state.values()], "cpu_rng": torch.get_rng_state(),
                "rng": None if self.rng is None else self.rng.clone()}
        if torch.cuda.is_available():
            snap["cuda_rng"] = torch.cuda.get_rng_state_all()
        return snap

    def restore(self, snap: dict) -> None:
        """Copy a :meth:`snapshot` back in place (addresses kept: compiled and captured graphs read them)."""
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(snap["model"][k])
            self.buffer.samples.copy_(snap["buffer"])
            for st, saved in snap["opt"]:
                for k, v in saved.items():
                    st[k].copy_(v)
            for p in self.model.parameters():
                p.grad = None
        torch.set_rng_state(snap["cpu_rng"])
        if "cuda_rng" in snap:
            torch.cuda.set_rng_state_all(snap["cuda_rng"])
        if snap["rng"] is not None:
            self.rng.copy_(snap["rng"])

    def check(self, it: int, lr: float) -> dict:
        """Check every component that is on at iteration ``it`` (learning rate ``lr`` > 0, so that the weight
        update is compared; the trainer passes the schedule's peak) against the plain path
        (:mod:`fastebm.fastpath.selfcheck`), leave the run's state as it was, and switch failing components off.

        Returns :attr:`report`. Raises FastPathError for a failure under ``--fast-path strict``.
        """
        self.pending = False
        lr_before = [g["lr"] for g in self.opt.param_groups]
        for g in self.opt.param_groups:  # the one source; batch() copies it into the compiled step's tensor
            g["lr"] = lr
        snap = self.snapshot()
        was_training = self.model.training
        self.model.train()
        report = {}
        try:
            for name in [n for n in COMPONENTS if self.on.get(n)]:
                if name in PER_PIECE and self.on.get("compile_step"):
                    report[name] = "unused (compiled step)"
                    continue
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ok, detail, margin = CHECKS[name](self, it)
                except Exception as e:  # noqa: BLE001 - any failure of a fast component is what is checked
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    ok, detail, margin = False, f"raised {type(e).__name__}: {msg}", 0.0
                finally:
                    self.restore(snap)
                if ok:
                    report[name] = f"ok (margin {margin:.3g}x): {detail}"
                    continue
                if self.cfg.fast_path == "strict":
                    raise FastPathError(f"--fast-path strict: fast component {name} failed its self-check: {detail}")
                report[name] = f"off: {detail}"
                if self.is_main:
                    print(f"fastebm: warning: fast component {name} switched off: {detail}", file=sys.stderr)
                self.disable(name)  # after compile_step: the per-piece components below get checked
        finally:
            self.restore(snap)
            self.model.train(was_training)
            for g, v in zip(self.opt.param_groups, lr_before):
                g["lr"] = v
        self.report = report
        return report

    def summary(self) -> str:
        """One banner line: which fast components run, which were switched off and why."""
        if not self.report and not self.on:
            return "fast path: plain (no fast component enabled)"
        parts = []
        for name in COMPONENTS:
            status = self.report.get(name) or ("on (not checked)" if self.on.get(name) else None)
            if status is None:
                continue
            word = status.split(":")[0]
            parts.append(f"{name} OFF ({status[5:]})" if word == "off" else f"{name} {word}")
        return "fast path: " + ", ".join(parts)


def _precision(value) -> str:
    return "off" if value in (None, "auto") else value
