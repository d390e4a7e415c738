"""The training loop: Algorithm 1 of the paper (:meth:`Trainer.train_step`), with logging, evaluation,
sample grids, atomic checkpoints, exact resume and divergence stops around it (:meth:`Trainer.fit`).

Run folder (``cfg.out``):
    config.json     the resolved configuration
    metrics.jsonl   one JSON object per line: {"kind": "train", "iter", "epoch", "loss", "loss_gen",
                    "loss_cls", "e_pos", "e_neg", "acc", "lr", "it_s"} and {"kind": "eval", "iter",
                    "test_acc", "test_loss", "test_energy"}; and once per process (before the first
                    iteration) {"kind": "fast_path", "iter", "policy", <component>: "ok: ..." | "off: ..." |
                    "unused (compiled step)"} from the fast-path self-check (:mod:`fastebm.selfcheck`)
    samples/        PNG grids of replay-buffer samples (negatives) and of p0 samples
    p0.pt           the fitted informative initialization (cache, reused by later runs)
    ckpt.pt         the latest checkpoint (written atomically)
"""
from __future__ import annotations

import json
import os
import random
import time

import numpy as np
import torch

from .buffer import ReplayBuffer
from .checkpoint import CheckpointError, atomic_save, load_checkpoint
from .config import Config, resolve_fast_flags
from .data import Batches, ImageSet, load_dataset, to_float, to_uint8
from .distributed import DistContext
from .init import default_cov_form, load_or_fit_p0, p0_from_state_dict
from .loss import classification_loss, generative_loss
from .model import build_model
from .profiling import enable as enable_nvtx
from .profiling import nvtx_range
from .sampler import AMP_DTYPES, Sampler, SGLDConfig, compile_mode, frozen_bn_stats
from .selfcheck import fast_components
from .step import compile_step, init_optimizer_state, optimizer_step


class DivergenceError(RuntimeError):
    """Training diverged (non-finite or exploding loss/energies); the last good checkpoint is intact."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise ``torch.device(name)``.

    Raises ValueError for an unknown device string or an unavailable CUDA device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def default_run_folder(cfg: Config) -> str:
    """``runs/<dataset>-<model>-k<K>``, or the first ``...-2``, ``...-3`` without a checkpoint in it, so
    that a repeated command starts a new run and never touches an earlier one."""
    base = os.path.join("runs", f"{cfg.dataset}-{cfg.model}-k{cfg.k}")
    out, i = base, 1
    while os.path.isfile(os.path.join(out, "ckpt.pt")):
        i += 1
        out = f"{base}-{i}"
    return out


def lr_at(cfg: Config, it: int) -> float:
    """Learning rate at iteration ``it``: linear warm-up over ``warmup_iters``, then ×decay_rate at each
    epoch in ``decay_epochs``."""
    lr = cfg.lr * cfg.decay_rate ** sum(it >= e * cfg.iters_per_epoch for e in cfg.decay_epochs)
    if it < cfg.warmup_iters:
        lr *= (it + 1) / cfg.warmup_iters
    return lr


def rng_state() -> dict:
    """States of the torch (CPU and CUDA), numpy and Python generators, for checkpoints."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (exact resume)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Builds a run from a :class:`Config` and trains it.

    Args:
        cfg: resolved configuration (:func:`fastebm.config.resolve`).
        train_data, test_data: optional preloaded :class:`ImageSet` (else loaded from cfg).

    Raises:
        DatasetError: missing or malformed data. ValueError: bad configuration.
    """

    def __init__(self, cfg: Config, train_data: ImageSet | None = None, test_data: ImageSet | None = None):
        self.device = resolve_device(cfg.device)
        resolve_fast_flags(cfg, self.device.type)
        enable_nvtx(cfg.nvtx)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        if train_data is None:
            train_data = load_dataset(cfg.dataset, cfg.data_root, "train", cfg.download, cfg.max_per_class)
        self.train_data = train_data.subset(cfg.train_subset, cfg.seed)
        self.test_data = test_data
        cfg.image_size, cfg.n_classes = self.train_data.image_size, self.train_data.n_classes
        self.cfg = cfg
        self.out = cfg.out = cfg.out or default_run_folder(cfg)
        os.makedirs(os.path.join(self.out, "samples"), exist_ok=True)

        self.model = build_model(cfg).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in self.model.modules())
        # Fast path: one compiled callable x → (energy, logits) for SGLD and the loss (static shapes:
        # one graph per batch size and grad mode; parameters frozen while sampling, so the SGLD graph
        # computes input gradients only).
        self.compiled = (torch.compile(self.model, **compile_mode(cfg.compile, cfg.cuda_graphs))
                         if cfg.compile != "off" else self.model)
        self.dist = DistContext.for_run(cfg, self.device)           # issue 6: no-op without a process group
        self.net = self.dist.wrap(self.model) if self.dist.world_size > 1 else self.compiled
        self.dist.seed_rank(cfg.seed)                                # per-rank RNG stream (buffer, SGLD)
        params = self.model.parameters()
        if cfg.compile_step and self.dist.world_size > 1:
            raise ValueError("--compile-step: not supported with DDP (torchrun); pass --no-compile-step")
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:  # capturable: Adam's step counter on the device, as a CUDA graph needs
            self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                                        capturable=bool(cfg.compile_step) and self.device.type == "cuda")
        init_optimizer_state(self.opt)                              # static shapes from the first step
        self.lr = torch.zeros((), device=self.device)               # η as a tensor: no recompile per value
        form = default_cov_form(cfg.image_size) if cfg.cov == "auto" else cfg.cov
        self.p0 = self.dist.from_rank0(lambda: load_or_fit_p0(
            self.train_data, cfg.p0, form, cfg.rank, os.path.join(self.out, "p0.pt"), self.device))
        self.buffer = ReplayBuffer(self.dist.buffer_size(cfg.buffer_size), self.p0, cfg.reinit_freq, self.device)
        self.sgld_cfg = SGLDConfig(cfg.k, cfg.step_size, cfg.noise, cfg.grad_clip, cfg.clamp_x, cfg.sgld_bn)
        rng = None
        if cfg.triton:  # the fused kernels' Philox state: a device tensor, advanced on the device
            from .kernels import make_rng_state
            rng = make_rng_state(int(torch.randint(0, 2 ** 62, (1,))), self.device)
        self.sampler = Sampler(self.model, self.sgld_cfg, net=self.compiled, triton=cfg.triton,
                               cuda_graphs=cfg.cuda_graphs, amp=cfg.amp, channels_last=cfg.channels_last,
                               rng_state=rng)
        if cfg.triton:
            self.p0.use_triton(rng)
        self.gen_batches = Batches(self.train_data, cfg.batch_size, self.device, cfg.seed, stream=0,
                                   data_noise=cfg.data_noise, shard=self.dist.shard)
        self.cls_batches = None
        if cfg.model == "mjem":  # M-JEM: a second, augmented batch for p(y|x)
            self.cls_batches = Batches(self.train_data, cfg.cls_batch_size, self.device, cfg.seed, stream=1,
                                       augment=True, data_noise=cfg.data_noise, shard=self.dist.shard)
        self.iteration = 0
        self.last_checkpoint: str | None = None
        self._log_file = None
        # Fast path II (issue 12): the whole step as one graph, and the run-time self-check.
        self._fast = {"sampler": self.sampler, "net": self.net, "p0_triton": bool(cfg.triton)}  # per-piece path
        self._step = self.step
        if cfg.compile_step:
            self.use_compiled_step(True)
        self.fast_path_report: dict = {}
        self.fast_path_pending = cfg.fast_path != "off" and bool(fast_components(cfg))

    # ------------------------------------------------------------------ Algorithm 1
    def train_step(self, it: int) -> dict:
        """One iteration of Algorithm 1 at global iteration ``it``; returns device tensors (no host sync).

        The host part is only which dataset indices iteration ``it`` reads and the current lr; the
        algorithm itself is :meth:`step`, run eagerly or as one compiled graph (``--compile-step``).
        The first call (and the first after :meth:`request_fast_path_check`) runs the fast-path
        self-check first (:mod:`fastebm.selfcheck`).
        """
        if self.fast_path_pending:
            self.check_fast_path(it)
        idx_cls = self.cls_batches.shard_indices(it) if self.cls_batches is not None else None
        self.lr.fill_(self.opt.param_groups[0]["lr"])
        return self._step(self.gen_batches.shard_indices(it), idx_cls, self.lr)

    def step(self, idx: torch.Tensor, idx_cls: torch.Tensor | None, lr: torch.Tensor) -> dict:
        """Algorithm 1 as a function of tensors (traced whole by ``--compile-step``).

        Args:
            idx: (B,) int64 dataset indices of the p(x) batch; idx_cls: (B_cls,) those of the augmented
                p(y|x) batch (None without one); lr: 0-dim float32 η.
        """
        cfg, net = self.cfg, self.net                               # net: compiled / DDP view of the model
        with nvtx_range("data"):
            x_pos, y_pos = self.gen_batches.gather(idx)             # x+ ~ p_data (not augmented)
        with nvtx_range("p0"):
            x0, buf_idx = self.buffer.sample(len(x_pos))            # lines 2–3: x0 ~ B, ρ of them from p0
        x_neg = self.sampler(x0)                                    # lines 4–6: K SGLD steps (Eq. 3)
        written = self.buffer.update(buf_idx, x_neg)                # line 7: B ← x−
        with self.autocast():
            e_pos, e_neg, logits = self.energies(x_pos, x_neg)      # E(x+), E(x−) (+ JEM's logits of x+)
            loss_gen = generative_loss(e_pos, e_neg, cfg.l2, cfg.reg_form)  # Eq. 8
            loss, loss_cls, acc = loss_gen, torch.zeros_like(loss_gen), torch.zeros_like(loss_gen)
            if self.model.has_classifier:                           # M-JEM / JEM: − log p(y|x)
                with nvtx_range("classify"):
                    if self.cls_batches is not None:                # M-JEM: separate augmented batch
                        x_cls, y = self.cls_batches.gather(idx_cls)
                        logits = net(self.layout(x_cls))[1]
                    else:                                           # JEM: the same batch as p(x)
                        y = y_pos
                    loss_cls = classification_loss(logits, y)
                loss = loss + cfg.cls_weight * loss_cls
                acc = (logits.argmax(1) == y).float().mean()
        for p in self.model.parameters():                           # line 8: θ ← θ − η ∇θ L
            p.grad = None
        with nvtx_range("backward"):
            loss.backward()
        with nvtx_range("optimizer"):
            optimizer_step(self.opt, lr)
        return {"loss": loss.detach(), "loss_gen": loss_gen.detach(), "loss_cls": loss_cls.detach(),
                "e_pos": e_pos.detach().mean(), "e_neg": e_neg.detach().mean(), "acc": acc.detach(),
                "finite_negatives": written.float().mean(), "_x_pos": x_pos, "_x_neg": x_neg}

    # ------------------------------------------------------------------ fast path II (issue 12)
    def use_compiled_step(self, on: bool) -> None:
        """Run :meth:`step` as one compiled graph (``on``) or eagerly with the per-piece fast path.

        Inside the compiled step the network is the plain module and SGLD the plain loop (the graph
        holds them; no nested compile or CUDA-graph capture), and p0 / the Langevin update are the
        PyTorch expressions that Inductor fuses.
        """
        cfg = self.cfg
        if on:
            self.net = self.model
            self.sampler = Sampler(self.model, self.sgld_cfg, net=self.model, amp=cfg.amp,
                                   channels_last=cfg.channels_last)
            self.p0.use_triton(None)
            static = [self.buffer.samples, self.lr] + [t for st in self.opt.state.values() for t in st.values()
                                                       if isinstance(t, torch.Tensor)]
            self._step = compile_step(self.step, cfg.compile, self.device.type, static)
        else:
            self.net, self.sampler, self._step = self._fast["net"], self._fast["sampler"], self.step
            if self._fast["p0_triton"]:
                self.p0.use_triton(self.sampler.rng_state)
            cfg.compile_step = False

    def request_fast_path_check(self) -> None:
        """Run the fast-path self-check again before the next iteration (e.g. after a re-capture)."""
        self.fast_path_pending = self.cfg.fast_path != "off" and bool(fast_components(self.cfg))

    def check_fast_path(self, it: int | None = None) -> dict:
        """Check every enabled fast component against the plain path (:func:`fastebm.selfcheck.run`),
        switch off the failing ones (``--fast-path auto``) or raise (``strict``), and log the outcome as a
        ``{"kind": "fast_path"}`` row of metrics.jsonl. Leaves the run's state as it was. Returns
        component → "ok" or "off: reason"."""
        from .selfcheck import run as run_self_check

        self.fast_path_pending = False
        self.fast_path_report = run_self_check(self, self.iteration if it is None else it)
        if self.dist.is_main:
            with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"kind": "fast_path", "iter": self.iteration, "policy": self.cfg.fast_path,
                                    **self.fast_path_report}) + "\n")
        return self.fast_path_report

    def energies(self, x_pos: torch.Tensor, x_neg: torch.Tensor):
        """E(x+) (N,), E(x−) (N,) and the logits of x+ (None for mebm).

        Without BatchNorm one forward over [x+; x−] is exact and cheaper; with BatchNorm two forwards,
        as the reference code (each batch normalized by its own statistics), and the negatives' pass
        leaves the running statistics to the data (:func:`~fastebm.sampler.frozen_bn_stats`).
        """
        x_pos, x_neg = self.layout(x_pos), self.layout(x_neg)
        if not self.has_bn:
            with nvtx_range("energy/pos+neg"):
                e, logits = self.net(torch.cat([x_pos, x_neg]))
            n = len(x_pos)
            return e[:n], e[n:], None if logits is None else logits[:n]
        with nvtx_range("energy/pos"):
            e_pos, logits = self.net(x_pos)
        with nvtx_range("energy/neg"), frozen_bn_stats(self.model):
            e_neg = self.net(x_neg)[0]
        return e_pos, e_neg, logits

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the model's memory format (channels-last on the fast path)."""
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def autocast(self):
        """Autocast context of ``--amp`` for the network (energies and losses are reduced in fp32)."""
        dtype = AMP_DTYPES[self.cfg.amp]
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train from ``self.iteration`` to ``cfg.total_iters``; returns the last logged metrics.

        Raises:
            DivergenceError: non-finite or |loss| > max_loss; a diagnostic grid is saved and the last
                good checkpoint is left as it was.
        """
        cfg = self.cfg
        if self.dist.is_main:                                       # only rank 0 writes
            with open(os.path.join(self.out, "config.json"), "w") as f:
                f.write(cfg.to_json())
        eval_every = cfg.eval_every or cfg.iters_per_epoch
        sample_every = cfg.sample_every or cfg.iters_per_epoch
        ckpt_every = cfg.ckpt_every or cfg.iters_per_epoch
        self._log_file = open(os.path.join(self.out, "metrics.jsonl") if self.dist.is_main else os.devnull, "a")
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm import tqdm
            bar = tqdm(total=cfg.total_iters, initial=self.iteration, dynamic_ncols=True, mininterval=1.0)
        last, t0, it0 = {}, time.perf_counter(), self.iteration
        try:
            while self.iteration < cfg.total_iters:
                it = self.iteration
                for g in self.opt.param_groups:
                    g["lr"] = lr_at(cfg, it)
                self.model.train()
                m = self.dist.average_metrics(self.train_step(it))  # mean over ranks (no-op single process)
                self.iteration = it + 1
                done = self.iteration
                if done % cfg.check_every == 0 or done % cfg.log_every == 0 or done % ckpt_every == 0:
                    self._check(m, done)
                if done % cfg.log_every == 0 or done == cfg.total_iters:
                    rate = (done - it0) / max(time.perf_counter() - t0, 1e-9)
                    last = {"kind": "train", "iter": done, "epoch": done / cfg.iters_per_epoch,
                            **{k: float(v) for k, v in m.items() if not k.startswith("_")},
                            "lr": lr_at(cfg, it), "it_s": rate}
                    self.log(last)
                    if bar is not None:
                        bar.set_postfix(loss=f"{last['loss']:.3g}", e_pos=f"{last['e_pos']:.3g}",
                                        e_neg=f"{last['e_neg']:.3g}", acc=f"{last['acc']:.2f}")
                if done % eval_every == 0 or done == cfg.total_iters:
                    self.log({"kind": "eval", "iter": done, **self.evaluate()})
                if done % sample_every == 0 or done == cfg.total_iters:
                    self.save_samples(f"iter_{done:07d}")
                if done % ckpt_every == 0 or done == cfg.total_iters:
                    self.save_checkpoint()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            self._log_file.close()
        return last

    def _check(self, m: dict, it: int) -> None:
        """Stop on non-finite or exploding loss/energies (host sync; every ``check_every`` iterations)."""
        vals = torch.stack([m["loss"], m["e_pos"], m["e_neg"]]).float().cpu()
        if bool(torch.isfinite(vals).all()) and float(vals[0].abs()) <= self.cfg.max_loss:
            return
        path = self.save_samples(f"diverged_iter_{it:07d}", extra=(m["_x_pos"], m["_x_neg"]))
        raise DivergenceError(
            f"training diverged at iteration {it}: loss {float(vals[0]):.4g}, E(x+) {float(vals[1]):.4g}, "
            f"E(x-) {float(vals[2]):.4g} (limit |loss| <= {self.cfg.max_loss:g}); diagnostic grid {path}; "
            f"last good checkpoint: {self.last_checkpoint or 'none written yet'}")

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (flushed)."""
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()

    # ------------------------------------------------------------------ evaluation and samples
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test accuracy / loss (classifier models) and mean test energy, in eval mode."""
        cfg = self.cfg
        self.dist.average_buffers(self.model)                       # BN running stats: mean over ranks
        if self.test_data is None:
            try:
                self.test_data = load_dataset(cfg.dataset, cfg.data_root, "test", False, cfg.max_per_class)
            except ValueError:
                self.test_data = False  # no test split: evaluation reports nothing
        if self.test_data is False:
            return {}
        data = self.test_data.subset(cfg.test_subset, 0)
        self.model.eval()
        n, correct, loss, energy = len(data), 0.0, 0.0, 0.0
        for i in range(0, n, 256):
            x = to_float(data.images[i:i + 256].to(self.device))
            y = data.labels[i:i + 256].to(self.device)
            e, logits = self.model(x)
            energy += float(e.sum())
            if logits is not None:
                correct += float((logits.argmax(1) == y).sum())
                loss += float(classification_loss(logits, y)) * len(y)
        self.model.train()
        out = {"test_energy": energy / n}
        if self.model.has_classifier:
            out.update(test_acc=correct / n, test_loss=loss / n)
        return out

    def save_samples(self, name: str, extra=None) -> str:
        """PNG grid of 64 replay-buffer samples (or of ``extra`` tensors) under samples/; returns the path."""
        from torchvision.utils import save_image

        imgs = torch.cat([t[:32] for t in extra]) if extra is not None else self.buffer.samples[:64]
        path = os.path.join(self.out, "samples", f"{name}.png")
        if not self.dist.is_main:                                   # only rank 0 writes
            return path
        save_image(to_uint8(imgs).float() / 255.0, path, nrow=8)
        return path

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a checkpoint holds: model, optimizer, buffer, p0, RNG states, iteration, config."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "buffer": self.buffer.state_dict(), "p0": self.p0.state_dict(), "rng": rng_state(),
                "iteration": self.iteration, "epoch": self.iteration / self.cfg.iters_per_epoch,
                "config": self.cfg.to_dict(), "arch": self.cfg.arch(), "format": "fastebm-1",
                "triton_rng": None if self._fast["sampler"].rng_state is None else self._fast["sampler"].rng_state.cpu()}

    def save_checkpoint(self, path: str | None = None) -> str:
        """Write ckpt.pt atomically (never with non-finite parameters or buffer)."""
        path = path or os.path.join(self.out, "ckpt.pt")
        self.dist.average_buffers(self.model)                       # BN running stats: mean over ranks
        finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        if not self.dist.all_ranks(finite and bool(torch.isfinite(self.buffer.samples).all())):
            raise DivergenceError(f"refusing to write a checkpoint with non-finite values at iteration "
                                  f"{self.iteration}; last good checkpoint: {self.last_checkpoint}")
        state = self.dist.gather_checkpoint(self.state_dict())      # every rank's buffer shard → rank 0
        if state is not None:
            atomic_save(state, path)
        self.last_checkpoint = path
        return path

    def load_checkpoint(self, path: str) -> None:
        """Restore model, optimizer, buffer, p0, RNG states and iteration from ``path`` (exact resume).

        Raises:
            CheckpointError: missing/unreadable file, or a checkpoint of another model/architecture.
        """
        ckpt = load_checkpoint(path, map_location="cpu")
        if ckpt.get("arch") != self.cfg.arch():
            raise CheckpointError(f"checkpoint {path!r} is for model {ckpt.get('arch')}, "
                                  f"expected {self.cfg.arch()}")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.buffer.load_state_dict(self.dist.buffer_shard(ckpt["buffer"]))  # re-split across ranks
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path!r} does not fit this run: {e}") from None
        self.p0 = p0_from_state_dict(ckpt["p0"]).to(self.device)
        if self.cfg.triton:
            rng = self._fast["sampler"].rng_state
            self.p0.use_triton(None if self.cfg.compile_step else rng)
            if ckpt.get("triton_rng") is not None:  # a checkpoint of a CPU run has none
                rng.copy_(ckpt["triton_rng"])
        self.buffer.p0 = self.p0
        if self.cfg.compile_step:  # the loaded optimizer state is new tensors: mark and trace them again
            self.use_compiled_step(True)
        self.iteration = int(ckpt["iteration"])
        set_rng_state(ckpt["rng"])
        self.dist.restore_rng(ckpt, self.iteration, self.cfg.seed)  # per-rank streams (no-op single process)
        self.last_checkpoint = path


def checkpoint_config(path: str) -> dict:
    """The configuration stored in a checkpoint (raises CheckpointError if unreadable)."""
    return load_checkpoint(path)["config"]

