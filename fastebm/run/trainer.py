"""The training loop: Algorithm 1 of the paper (:class:`~fastebm.algorithm.algorithm1.Algorithm1`, run through
:class:`~fastebm.fastpath.fastpath.FastPath` by :meth:`Trainer.train_step`) and its cadence (:meth:`Trainer.fit`):
log rows, test evaluation, sample grids, checkpoints, buffer FID, and what ends a run early — a divergence
(:mod:`fastebm.run.recovery`: stop or roll back) or a signal (:mod:`fastebm.run.stopping`: checkpoint, then exit).

Around it, each in its own room: the run folder and its lock (:mod:`fastebm.run.folder`), the run log
(:mod:`fastebm.run.log`), checkpoint files (:mod:`fastebm.io.checkpoint`) and what they hold
(:mod:`fastebm.run.state`), the p0 of the run (:mod:`fastebm.p0`), the learning-rate schedule
(:mod:`fastebm.run.schedule`), what each option accepts (:mod:`fastebm.config.limits`), the fast path
(:mod:`fastebm.fastpath.fastpath`).
"""
from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from ..algorithm.algorithm1 import Algorithm1
from ..algorithm.buffer import ReplayBuffer
from ..algorithm.loss import classification_loss
from ..algorithm.model import build_model, model_outputs
from ..algorithm.optimizer import init_optimizer_state
from ..algorithm.sampler import Sampler, SGLDConfig
from ..config.limits import flag
from ..config.options import Config, resolve_device
from ..data.datasets import load_dataset, test_split
from ..data.imageset import Batches, ImageSet, to_uint8
from ..evaluation.bufferfid import BufferScore, fid_epoch
from ..fastpath.fastpath import FastPath
from ..io.checkpoint import CheckpointError, remove_stale_temporaries
from ..io.profiling import enable as enable_nvtx
from ..io.progress import TrainingProgress
from ..p0 import load_or_fit_p0
from .completion import complete
from .distributed import DistContext
from .log import RunLog
from .recovery import DivergenceError, DivergenceWatch, raise_if_diverged
from .schedule import lr_at
from .state import RunParts, RunState, restore_run, roll_back, save_run
from .stopping import GracefulStop, Stopped
from .threads import fast_low_precision

__all__ = ["DivergenceError", "Stopped", "Trainer", "lr_at"]


class Trainer:
    """Builds a run from a :class:`Config` and trains it.

    Args:
        cfg: configuration from :func:`fastebm.config.options.resolve` (or already completed); the trainer completes it
            once for its device, ranks and data (:func:`fastebm.run.completion.complete`) into :attr:`cfg`, never
            changed afterwards.
        train_data, test_data: optional preloaded :class:`ImageSet` (else loaded from cfg).
        requested: the options the user gave explicitly (stored in checkpoints, so that a resume on another
            device resolves the device-dependent rest again); None when unknown.
        on_stage: called as ``on_stage(trainer, stage)`` at the slow stages of the build, for a caller that
            reports them: ``"checked"`` once :attr:`cfg` is complete and every check of the options and the data
            has passed (sizes fit, run folder made: bad input has failed before it), before the model, optimizer
            and p0 are built; ``"p0"`` once the model and optimizer are built, before p0 is read or fitted (torch's
            first optimizer imports torch._dynamo, then the p0 fit: seconds each, bench/RESULTS.md "The digits
            demo, whole runs"); the CLI prints a line at each.

    Attributes:
        state: the run's progress (:class:`~fastebm.run.state.RunState`: iteration, lr scale, rollbacks, best
            scores, last checkpoint), which checkpoints store and a resume or rollback restores.
    Raises:
        DatasetError: missing or malformed data. ValueError: bad configuration.
    """

    def __init__(self, cfg: Config, train_data: ImageSet | None = None, test_data: ImageSet | None = None,
                 requested: dict | None = None, on_stage: Callable[[Trainer, str], None] | None = None):
        self.device = resolve_device(cfg.device)
        self.dist = DistContext.for_run(self.device)                 # no-op without a process group
        self.requested = dict(requested) if requested is not None else None
        enable_nvtx(cfg.nvtx)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        def data():  # on every rank; under DDP the ranks then agree on what they loaded (one collective)
            train = train_data if train_data is not None else load_dataset(
                cfg.dataset, cfg.data_root, "train", cfg.download, cfg.max_per_class, cfg.image_size)
            return train, *((True, len(test_data)) if test_data is not None else test_split(
                cfg.dataset, cfg.data_root, train.classes, cfg.max_per_class, self.dist.is_main))

        train_data, has_test, self.test_size = self.dist.same_data(data)
        self.train_data = train_data.subset(cfg.train_subset, cfg.seed)
        self.test_data, self._no_test_split = test_data, not has_test
        # the one completion of the Config (device, ranks, data) and every check of the options against them
        cfg = complete(cfg, self.device, self.dist.world_size, len(self.train_data), self.train_data.image_size,
                       self.train_data.n_classes, has_test)
        self.cfg, self.out = cfg, cfg.out
        slow = [f"{flag(name)} {getattr(cfg, name)}" for name in ("amp", "sgld_amp")
                if self.device.type == "cpu" and getattr(cfg, name) in ("bf16", "fp16")
                and not fast_low_precision(getattr(cfg, name))]
        if slow and self.dist.is_main:
            print(f"fastebm: warning: {' and '.join(slow)} on a CPU without hardware support for it: emulated, "
                  f"many times slower than fp32 (pass off)", file=sys.stderr)
        try:
            os.makedirs(os.path.join(self.out, "samples"), exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {self.out}: cannot make the run folder there ({e.strerror})") from None
        if self.dist.is_main:  # the one writer removes what a killed save left
            remove_stale_temporaries(self.out)
        say = on_stage or (lambda *_: None)
        say(self, "checked")

        self.model = build_model(cfg).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dist.seed_rank(cfg.seed)                                # per-rank RNG stream (buffer, SGLD)
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:  # capturable: Adam's step counter on the device, as a CUDA graph needs
            self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                                        capturable=bool(cfg.compile_step) and self.device.type == "cuda")
        init_optimizer_state(self.opt)                              # static shapes from the first step
        say(self, "p0")
        p0 = self.dist.from_rank0(lambda: load_or_fit_p0(  # --cov auto: decided at the side p0 is fitted at; a
            self.train_data, cfg.p0 if cfg.px_weight else "uniform",  # classifier only: the authors' uniform buffer
            cfg.cov, cfg.rank, os.path.join(self.out, "p0.pt"), self.device, size=cfg.p0_size))
        self.buffer = ReplayBuffer(self.dist.buffer_size(cfg.buffer_size), p0, cfg.reinit_freq, self.device)
        sgld = SGLDConfig.of_run(cfg)
        # x+ for p(x): unaugmented (M-EBM / M-JEM: mebm utils.get_data transform_px) or augmented (JEM).
        self.gen_batches = Batches(self.train_data, cfg.batch_size, self.device, cfg.seed, stream=0,
                                   augment=cfg.augment_px, data_noise=cfg.data_noise, shard=self.dist.shard)
        self.cls_batches = None
        if self.model.has_classifier:  # a second, augmented batch for p(y|x), its own permutation stream
            self.cls_batches = Batches(self.train_data, cfg.cls_batch_size, self.device, cfg.seed, stream=1,
                                       augment=cfg.augment_cls, data_noise=cfg.data_noise, shard=self.dist.shard)
        plain = Algorithm1(self.model, self.dist.wrap(self.model) if self.dist.world_size > 1 else self.model,
                           Sampler(self.model, sgld), self.buffer, self.opt, self.gen_batches, self.cls_batches,
                           cfg.l2, cfg.reg_form, cfg.cls_weight, sgld_bn=cfg.sgld_bn, px_weight=cfg.px_weight)
        self.fast = FastPath(cfg, plain, self.device, self.dist.is_main)
        self.state = RunState()                                     # iteration, lr scale, rollbacks, best, last ckpt
        self.ckpt_path = os.path.join(self.out, "ckpt.pt")          # the checkpoint a rollback returns to
        self.watch = DivergenceWatch(cfg.max_loss)                   # device-side note of a divergence
        self.runlog = RunLog(self.out, write=self.dist.is_main)     # metrics.jsonl, TensorBoard, grids
        self.scorer = BufferScore(cfg, self.device)  # in-training FID / IS

    @property
    def p0(self):
        """The informative initialization (Eq. 6) of the replay buffer's restarts."""
        return self.buffer.p0

    @property
    def parts(self) -> RunParts:
        """The objects a checkpoint is written from and restored into (:class:`~fastebm.run.state.RunParts`)."""
        return RunParts(self.cfg, self.model, self.opt, self.buffer, self.fast, self.dist, self.train_data.classes,
                        self.requested, self.device)

    # ------------------------------------------------------------------ Algorithm 1
    def train_step(self, it: int) -> dict:
        """One iteration of Algorithm 1 (:class:`~fastebm.algorithm.algorithm1.Algorithm1`) at global iteration ``it``
        with the learning rate of the optimizer's group; returns device tensors (no host sync).

        The host part is only which dataset indices iteration ``it`` reads and the current lr; what runs
        (eager or compiled, which fast components) is :attr:`fast`'s. The first call (and the first after
        :meth:`request_fast_path_check`) runs the fast-path self-check first.
        """
        if self.fast.pending:
            self.check_fast_path(it)
        idx, idx_cls, lr = self.fast.batch(it)
        return self.fast.step(idx, idx_cls, lr)

    def request_fast_path_check(self) -> None:
        """Run the fast-path self-check again before the next iteration (e.g. after a re-capture)."""
        self.fast.pending = self.cfg.fast_path != "off" and any(self.fast.on.values())

    def check_fast_path(self, it: int | None = None) -> dict:
        """Check every fast component that is on against the plain path (:meth:`FastPath.check`), switch off
        the failing ones (``--fast-path auto``) or raise (``strict``), and log the outcome as a
        ``{"kind": "fast_path"}`` row of metrics.jsonl (with ``active``: what runs now). Leaves the run's
        state as it was. Returns component → "ok (margin Mx): ..." / "off: ..." / "unused (compiled step)"."""
        it = self.state.iteration if it is None else it
        report = self.fast.check(it, self.cfg.lr * self.state.lr_scale)  # peak lr: a warm-up lr of 0 moves nothing
        self.runlog({"kind": "fast_path", "iter": it, "policy": self.cfg.fast_path, **report,
                     "active": self.fast.active()})
        return report

    # ------------------------------------------------------------------ loop
    def fit(self, stop: GracefulStop | None = None) -> dict:
        """Train from ``self.state.iteration`` to ``cfg.total_iters``; returns the last logged metrics.

        A divergence rolls the run back to ``ckpt.pt`` (``cfg.on_divergence == "rollback"``, at most
        ``cfg.max_rollbacks`` times over the run) or stops it (:mod:`fastebm.run.recovery`).

        Args:
            stop: signals to stop on (:class:`~fastebm.run.stopping.GracefulStop`, entered by the caller): the run
                finishes the iteration, writes ckpt.pt and raises :class:`~fastebm.run.stopping.Stopped`. Under DDP
                the ranks agree at every ``check_every``-th iteration, so all stop at the same one.
        Raises:
            DivergenceError: non-finite or |loss| > max_loss with ``on_divergence="stop"``, after
                ``max_rollbacks`` rollbacks, when ckpt.pt cannot be read back, or (rollback) when the
                starting state itself is non-finite; a diagnostic grid is saved and the last good
                checkpoint is left as it was.
            Stopped: after a signal, once ckpt.pt holds the last iteration.
            CheckpointError: a checkpoint, or a file of the run log (:class:`~fastebm.run.log.RunLogError`), could
                not be written (e.g. a full disk); the previous checkpoint stays, and every row logged before.
        """
        cfg = self.cfg
        self.runlog.write_text("config.json", cfg.to_json())       # only rank 0 writes
        eval_every = cfg.eval_every or cfg.iters_per_epoch
        sample_every = cfg.sample_every or cfg.iters_per_epoch
        ckpt_every = cfg.ckpt_every or cfg.iters_per_epoch
        if cfg.on_divergence == "rollback" and not _same_file(self.state.last_checkpoint, self.ckpt_path):
            self.save_checkpoint()                                  # a state to return to from the start
        self.on_fit_start()
        bar = TrainingProgress(cfg.total_iters, self.state.iteration) if cfg.progress and self.dist.is_main else None
        last, t0, it0 = {}, time.perf_counter(), self.state.iteration
        try:
            while self.state.iteration < cfg.total_iters:
                it = self.state.iteration
                try:
                    lr = lr_at(cfg, it) * self.state.lr_scale           # the schedule × the rollback scale
                    for g in self.opt.param_groups:
                        g["lr"] = lr
                    self.model.train()
                    m = self.dist.average_metrics(self.train_step(it))  # mean over ranks (no-op single process)
                    self.state.iteration = done = it + 1
                    self.watch.note(m, done)                            # device-side divergence note, no sync
                    log_now, eval_now, sample_now, ckpt_now = (
                        done % every == 0 or done == cfg.total_iters
                        for every in (cfg.log_every, eval_every, sample_every, ckpt_every))
                    epoch = done // cfg.iters_per_epoch if done % cfg.iters_per_epoch == 0 else 0
                    epoch_now = epoch > 0 and (fid_epoch(cfg, epoch) or bool(cfg.keep_every and
                                                                              epoch % cfg.keep_every == 0))
                    if done % cfg.check_every == 0 or log_now or eval_now or sample_now or ckpt_now or epoch_now:
                        self._raise_if_diverged(m, done)                            # before anything is logged or saved
                    if log_now:
                        rate = (done - it0) / max(time.perf_counter() - t0, 1e-9)
                        last = {"kind": "train", "iter": done, "epoch": done / cfg.iters_per_epoch,
                                **{k: float(v) for k, v in m.items() if not k.startswith("_")},
                                "lr": lr, "it_s": rate}
                        self.log(last)
                        if bar is not None:
                            bar.metrics(last)
                    if eval_now:
                        self.log({"kind": "eval", "iter": done, **self.evaluate()})
                    if sample_now:
                        self.save_samples(f"iter_{done:07d}")
                    if ckpt_now:
                        self.save_checkpoint()
                    if epoch_now:                                       # buffer FID, epoch history
                        self.on_epoch_end(epoch)
                    signum = self._stop_signal(stop, done) if stop is not None else 0
                    if signum:
                        self._stop(stop, signum, m, saved=ckpt_now)
                except DivergenceError as e:                            # agreed by every rank
                    if cfg.on_divergence == "stop":
                        raise
                    if self.state.rollbacks >= cfg.max_rollbacks:
                        raise DivergenceError(f"{e}; stopped after {self.state.rollbacks} rollback(s) "
                                              f"(--max-rollbacks {cfg.max_rollbacks})") from None
                    try:
                        self.rollback(str(e))
                    except CheckpointError as ce:
                        raise DivergenceError(f"{e}; rollback failed: {ce}") from None
                    t0, it0 = time.perf_counter(), self.state.iteration
                if bar is not None:
                    bar.update(self.state.iteration)
        finally:
            if bar is not None:
                bar.close()
            self.runlog.close()
        return last

    def _stop_signal(self, stop: GracefulStop, done: int) -> int:
        """The signal every rank stops on after iteration ``done``, 0 to go on: at once in one process; under
        DDP at the iterations where all ranks check, the largest signal number any rank received (one
        all-reduce), so that every rank exits with the same status."""
        if self.dist.world_size == 1:
            return stop.requested or 0
        return self.dist.largest(stop.requested or 0) if done % self.cfg.check_every == 0 else 0

    def _stop(self, stop: GracefulStop, signum: int, m: dict, saved: bool) -> None:
        """Write ckpt.pt for the iteration just finished (unless the cadence just did), log a ``stop`` row,
        raise :class:`Stopped` with ``signum``."""
        import signal

        if not saved:
            self._raise_if_diverged(m, self.state.iteration)                    # never a checkpoint of a diverged state
            with stop.saving():
                self.save_checkpoint()
        self.log({"kind": "stop", "iter": self.state.iteration, "signal": signal.Signals(signum).name,
                  "checkpoint": self.ckpt_path})
        self.dist.barrier()  # no rank exits before the stop row: a launcher ends the job when one rank exits
        raise Stopped(signum, self.ckpt_path, self.state.iteration)

    def _raise_if_diverged(self, m: dict, it: int) -> None:
        """Raise :class:`DivergenceError` if any rank noted a divergence
        (:func:`fastebm.run.recovery.raise_if_diverged`)."""
        raise_if_diverged(self.watch, self.dist, m, it, self.runlog, self.state.last_checkpoint)

    def rollback(self, reason: str) -> None:
        """Return to ckpt.pt with a lower lr and new RNG streams (:func:`fastebm.run.state.roll_back`; every
        rank together). Raises CheckpointError when ckpt.pt is missing or unreadable."""
        self.log(roll_back(self.parts, self.state, self.watch, self.ckpt_path, reason))

    def drop_rows_after(self, iteration: int) -> int:
        """Remove metrics.jsonl rows of iterations after ``iteration`` (a resume logs them again); returns how
        many (:meth:`RunLog.drop_rows_after <fastebm.run.log.RunLog.drop_rows_after>`)."""
        return self.runlog.drop_rows_after(iteration)

    def log(self, record: dict) -> None:
        """Append ``record`` to the run log (metrics.jsonl, TensorBoard) and keep best_acc.pt / best_fid.pt
        (:meth:`keep_best`)."""
        self.runlog(record)
        self.keep_best(record)

    # ------------------------------------------------------------------ evaluation during training
    def on_fit_start(self) -> None:
        """Rank 0: open the TensorBoard writer (``cfg.tensorboard``) and, at iteration 0, write μ of p0
        and a grid of 64 p0 samples (``samples/p0_mean.png``, ``samples/p0_samples.png``; Fig. 7)."""
        if not self.dist.is_main:
            return
        if self.cfg.tensorboard:
            self.runlog.start_tensorboard()
        if self.state.iteration == 0:
            from ..evaluation.plots import save_p0_pictures

            with self.runlog.guard(os.path.join(self.out, "samples")):
                save_p0_pictures(self.p0, os.path.join(self.out, "samples"), device=self.device)

    def on_epoch_end(self, epoch: int) -> None:
        """Every ``fid_every`` epochs: FID / IS of the whole replay buffer (logged as a ``fid`` record,
        which may write best_fid.pt); every ``keep_every`` epochs: ``ckpt_e{epoch:03d}.pt``. Collective
        under DDP (every rank calls it)."""
        cfg = self.cfg
        if fid_epoch(self.cfg, epoch):
            record = self.buffer_fid()
            improved = self.dist.all_ranks(record is None or record["fid"] < self.state.best["fid"])
            if record is not None:
                self.log({"kind": "fid", "iter": self.state.iteration, "epoch": epoch, **record})
            if improved:
                self._save_copy("best_fid.pt")
        if cfg.keep_every and epoch % cfg.keep_every == 0:
            self._save_copy(f"ckpt_e{epoch:03d}.pt")

    def buffer_fid(self) -> dict | None:
        """FID / IS of the replay buffer (every rank's shard, gathered) as the authors score it
        (:class:`~fastebm.evaluation.bufferfid.BufferScore`); the record on rank 0, None on the other ranks."""
        state = self.dist.gather_checkpoint({"buffer": {"samples": self.buffer.samples}, "rng": None})
        if state is None:
            return None
        return self.scorer(self.model, state["buffer"]["samples"], self.train_data)

    def keep_best(self, record: dict) -> None:
        """best_acc.pt when an ``eval`` record beats the best test accuracy so far; remembers the best FID
        (best_fid.pt itself is written by :meth:`on_epoch_end`, on every rank)."""
        if record.get("kind") == "fid" and record["fid"] < self.state.best["fid"]:
            self.state.best["fid"] = record["fid"]
        if record.get("kind") == "eval" and "test_acc" in record and record["test_acc"] > self.state.best["test_acc"]:
            self.state.best["test_acc"] = record["test_acc"]
            self._save_copy("best_acc.pt")

    def _save_copy(self, name: str) -> None:
        """Atomic checkpoint ``name`` beside ckpt.pt (``last_checkpoint`` keeps pointing at ckpt.pt)."""
        last = self.state.last_checkpoint, self.state.last_checkpoint_iteration
        self.save_checkpoint(os.path.join(self.out, name))
        self.state.last_checkpoint, self.state.last_checkpoint_iteration = last

    # ------------------------------------------------------------------ evaluation and samples
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test accuracy / loss (classifier models) and mean test energy, in eval mode."""
        cfg = self.cfg
        self.dist.average_buffers(self.model)                       # BN running stats: mean over ranks
        if self.test_data is None:
            if self._no_test_split:
                self.test_data = False
            else:
                self.test_data = load_dataset(cfg.dataset, cfg.data_root, "test", False, cfg.max_per_class,
                                              cfg.image_size, classes=self.train_data.classes)
        if self.test_data is False:
            return {}
        data = self.test_data.subset(cfg.test_subset, 0)
        energy, logits = model_outputs(self.model, data.images, 256, self.device, desc="fastebm: test evaluation")
        out = {"test_energy": float(energy.mean())}
        if logits is not None:
            out.update(test_acc=float((logits.argmax(1) == data.labels).float().mean()),
                       test_loss=float(classification_loss(logits, data.labels)))
        return out

    def save_samples(self, name: str, extra=None) -> str:
        """PNG grid of 64 replay-buffer samples (or of ``extra`` tensors) under samples/; returns the path."""
        imgs = torch.cat([t[:32] for t in extra]) if extra is not None else self.buffer.samples[:64]
        return self.runlog.grid(name, to_uint8(imgs), self.state.iteration)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | None = None) -> str:
        """Write ckpt.pt (or ``path``) atomically; returns the path (:func:`~fastebm.run.state.save_run`).

        Raises:
            DivergenceError: non-finite weights, buffer or energies (nothing written).
            CheckpointError: the write failed (the previous file stays).
        """
        return save_run(self.parts, self.state, path or self.ckpt_path)

    def load_checkpoint(self, path: str) -> None:
        """Restore the whole run from ``path`` (:func:`~fastebm.run.state.restore_run`).

        Raises:
            CheckpointError: missing/unreadable file, or a checkpoint of another model/architecture.
        """
        restore_run(self.parts, self.state, path)


def _same_file(a: str | None, b: str) -> bool:
    return a is not None and os.path.abspath(a) == os.path.abspath(b)

