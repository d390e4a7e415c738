"""Multi-process data-parallel training (``torchrun --nproc-per-node N -m fastebm.train ...``).

A plain ``python -m fastebm.train`` run creates no process group and is unchanged: every hook of
:class:`DistContext` is a no-op for it (``enabled`` is False). Under torchrun with WORLD_SIZE > 1,
:func:`init_from_env` creates the process group from torchrun's RANK / WORLD_SIZE / LOCAL_RANK (and
MASTER_ADDR / MASTER_PORT) with the ``nccl`` backend on CUDA (each rank on ``cuda:LOCAL_RANK``) and
``gloo`` on CPU, and the :class:`~fastebm.run.trainer.Trainer` picks it up through
:meth:`DistContext.for_run`.

In short: rank r trains on the r-th slice of the single-process global batch, keeps its own replay-buffer
shard and RNG stream, normalizes with per-rank BatchNorm statistics (averaged before each evaluation and
checkpoint), all-reduces gradients once per iteration through :class:`DDPEnergyModel` and never communicates
during SGLD; p0 comes from rank 0, only rank 0 writes, and a checkpoint resumes on any number of ranks. The
design and its reasons: docs/clusters.md, "Multi-process data-parallel training (DDP)".
"""
from __future__ import annotations

import datetime
import inspect
import os
import random
import sys
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ..data.imageset import DatasetError
from ..io.checkpoint import set_rng_state

RANK_SEED_STRIDE = 1_000_003


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "auto", timeout_s: float | None = None) -> bool:
    """Create the process group when launched by torchrun with WORLD_SIZE > 1; return whether it did.

    Backend: ``nccl`` when the run is on CUDA (``device`` auto with CUDA available, ``cuda``), each
    rank pinned to ``cuda:LOCAL_RANK``; ``gloo`` otherwise. Does nothing for a plain single-process
    run (no RANK/WORLD_SIZE, or WORLD_SIZE=1) or when a process group already exists.

    Raises:
        ValueError: ``device`` names one CUDA device (``cuda:N``) in a multi-process run.
    """
    if env_world_size() <= 1 or dist.is_initialized():
        return dist.is_initialized()
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and ":" in device:
        raise ValueError(f"--device {device}: with torchrun pass --device auto or cuda "
                         f"(rank r uses cuda:LOCAL_RANK)")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    kw = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group("nccl" if use_cuda else "gloo", **kw)
    return True


def shutdown() -> None:
    """Destroy the process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(status: int, multi_process: bool) -> NoReturn:
    """End the process with ``status``; a multi-process run (torchrun) ends with ``os._exit`` after flushing
    stdout and stderr, skipping the interpreter's finalization.

    Why: DDP keeps the gloo process group alive after :func:`shutdown` (torch 2.11 and 2.14 alike), so its
    worker threads outlive ``main``; a worker that is still releasing the tensors of a finished collective
    when the interpreter finalizes needs the GIL, cannot have it, and aborts the process ("terminate called
    without an active exception", SIGABRT, 7 times in 80 two-rank runs on a busy 2-core machine; gdb:
    ``ProcessGroupGloo::runLoop`` → ``~AsyncGatherWork`` → ``decref_pyobject``). Every file of the run is
    closed by then (checkpoints, metrics.jsonl, TensorBoard), so nothing is lost by skipping finalization.
    """
    if not multi_process:
        sys.exit(status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _no_forward_buffer_sync() -> dict:
    """DDP keyword that stops the per-forward broadcast of rank 0's buffers (BN running stats): newer
    torch calls it ``forward_sync_buffers`` (``broadcast_buffers`` is deprecated there), older torch
    only has ``broadcast_buffers``. The buffers are still equal at start (same seed, init sync)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


class DDPEnergyModel:
    """The loss-side view of a DDP-wrapped :class:`~fastebm.algorithm.model.EnergyModel`: ``net(x)`` runs
    ``DDP.forward`` (one backbone pass returning (energy, logits)), so its gradients are all-reduced.
    Sampling must use the bare module."""

    def __init__(self, ddp: nn.parallel.DistributedDataParallel):
        self.ddp, self.module = ddp, ddp.module

    @property
    def has_classifier(self) -> bool:
        return self.module.has_classifier

    def __call__(self, x):
        return self.ddp(x)



class DataMismatch(DatasetError):
    """The ranks of a run loaded different data (or one could not load it); raised on every rank alike, with the
    same message (the training CLI prints it once, on rank 0)."""


def data_difference(fingerprints: list[dict]) -> str | None:
    """What differs between the ranks' data, in one line, or None when every rank loaded the same.

    ``fingerprints[r]``: rank r's :meth:`ImageSet.fingerprint <fastebm.data.imageset.ImageSet.fingerprint>` plus
    ``"test images"`` (int or None), or ``{"error": message}`` when its load failed."""
    failed = [r for r, f in enumerate(fingerprints) if "error" in f]
    if failed:
        errors = {fingerprints[r]["error"] for r in failed}
        if len(failed) == len(fingerprints) and len(errors) == 1:  # the same error everywhere: as one process
            return errors.pop()
        also = f" (and rank(s) {', '.join(map(str, failed[1:]))})" if len(failed) > 1 else ""
        return f"rank {failed[0]}{also} could not load the data: {fingerprints[failed[0]]['error']}"
    odd = [r for r, f in enumerate(fingerprints) if f != fingerprints[0]]
    if not odd:
        return None
    also = f" (and rank(s) {', '.join(map(str, odd[1:]))})" if len(odd) > 1 else ""
    return (f"the ranks loaded different data: rank {odd[0]}{also} differs from rank 0: "
            f"{_differences(fingerprints[0], fingerprints[odd[0]], odd[0])}; every rank must read the same data "
            f"(a partial node-local copy of --data-root?)")


def _differences(a: dict, b: dict, r: int) -> str:
    def names(cs):
        return ", ".join(map(repr, cs[:3])) + (" ..." if len(cs) > 3 else "")

    parts = []
    if a["classes"] != b["classes"] and isinstance(a["classes"], list) and isinstance(b["classes"], list):
        lacks, extra = ([c for c in x if c not in y] for x, y in ((a["classes"], b["classes"]),
                                                                 (b["classes"], a["classes"])))
        parts += [f"rank {r} lacks class(es) {names(lacks)}"] if lacks else []
        parts += [f"rank {r} has class(es) {names(extra)} that rank 0 lacks"] if extra else []
    elif a["classes"] != b["classes"]:
        parts.append(f"{a['classes']} classes on rank 0, {b['classes']} on rank {r}")
    if a["images"] != b["images"] or a["per_class"] != b["per_class"]:
        which = ""
        if a["classes"] == b["classes"]:  # the first class whose count differs
            k = next(i for i, (x, y) in enumerate(zip(a["per_class"], b["per_class"])) if x != y)
            label = a["classes"][k] if isinstance(a["classes"], list) else k
            which = f" (class {label!r}: {a['per_class'][k]} vs {b['per_class'][k]})"
        parts.append(f"{a['images']} training images on rank 0, {b['images']} on rank {r}{which}")
    if a["shape"] != b["shape"]:
        parts.append(f"images of shape {a['shape']} on rank 0, {b['shape']} on rank {r}")
    if not parts and a["files"] != b["files"]:
        parts.append("the same counts, but other files (names or contents)")
    if a["test images"] != b["test images"]:
        parts.append(f"test split: {a['test images']} images on rank 0, {b['test images']} on rank {r}")
    return "; ".join(parts)


class DistContext:
    """Rank, world size and the distributed hooks of a run (all no-ops when ``enabled`` is False)."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cpu") if device is None else torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

    @classmethod
    def for_run(cls, device) -> DistContext:
        """The context of a run on ``device``: distributed iff a process group is initialized with world size > 1
        (whether the options split over the ranks: :func:`fastebm.run.completion.check_world_size`)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls(0, 1, device)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def enabled(self) -> bool:
        """True in a multi-process run (world size > 1); every collective is a no-op otherwise."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that prints, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size), for :class:`~fastebm.data.imageset.Batches`."""
        return self.rank, self.world_size

    # ---------------------------------------------------------------- setup
    def wrap(self, model: nn.Module):
        """The module the loss forwards go through: ``model`` itself, or a :class:`DDPEnergyModel`."""
        if not self.enabled:
            return model
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=False, **_no_forward_buffer_sync())
        return DDPEnergyModel(ddp)

    def seed_rank(self, seed: int, iteration: int = 0) -> None:
        """Give this rank its own torch / numpy / python RNG stream (buffer, SGLD noise, augmentation)."""
        if not self.enabled:
            return
        s = (seed + RANK_SEED_STRIDE * self.rank + 7919 * iteration) % (2 ** 31)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    def buffer_size(self, total: int) -> int:
        """This rank's share of a buffer of ``total`` samples (``tensor_split`` sizes; they sum to total)."""
        return total // self.world_size + (1 if self.rank < total % self.world_size else 0)

    def from_rank0(self, build):
        """p0 = ``build()`` on rank 0, broadcast to the other ranks (``build`` runs once in all)."""
        if not self.enabled:
            return build()
        from ..p0 import p0_from_state_dict

        obj = [build().state_dict() if self.is_main else None]
        dist.broadcast_object_list(obj, src=0, device=self._comm_device())
        return p0_from_state_dict(obj[0]).to(self.device)

    def same_data(self, load):
        """``load()`` → ``(data, has_test, n_test)`` (the training :class:`~fastebm.data.imageset.ImageSet`, whether
        there is a test split, its image count or None), run on this rank; under DDP the ranks then compare what they
        loaded (:meth:`~fastebm.data.imageset.ImageSet.fingerprint` and the test split's size, or the error of a rank
        whose load failed) in one ``all_gather_object``, before the first iteration, and stop together when it differs.

        Raises:
            DataMismatch: under DDP, on every rank alike, one line naming the ranks and what differs
                (:func:`data_difference`). In one process: what ``load`` raises.
        """
        if not self.enabled:
            return load()
        try:
            out = load()
            mine = {**out[0].fingerprint(), "test images": out[2]}
        except (ValueError, OSError) as e:  # DatasetError and the like: the other ranks must hear of it
            out, mine = None, {"error": " ".join(str(e).split())}
        every: list = [None] * self.world_size
        dist.all_gather_object(every, mine)
        problem = data_difference(every)
        if problem:
            raise DataMismatch(problem)
        return out

    # ---------------------------------------------------------------- per step
    def average_metrics(self, m: dict) -> dict:
        """Average the scalar metrics (keys not starting with ``_``) over ranks (one all-reduce)."""
        if not self.enabled:
            return m
        keys = [k for k in m if not k.startswith("_")]
        vals = torch.stack([m[k].detach().float().reshape(()) for k in keys])
        dist.all_reduce(vals)
        vals /= self.world_size
        return {**m, **dict(zip(keys, vals.unbind()))}

    def all_ranks(self, flag: bool) -> bool:
        """True iff ``flag`` is true on every rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([0.0 if flag else 1.0], device=self._comm_device())
        dist.all_reduce(t)
        return float(t) == 0.0

    def largest(self, value: int) -> int:
        """The largest of the ranks' ``value`` (a non-negative integer below 2**24, e.g. a signal number)."""
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t)

    @torch.no_grad()
    def average_buffers(self, model: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running mean / var) over ranks, in place."""
        if not self.enabled:
            return
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b /= self.world_size

    # ---------------------------------------------------------------- checkpoints
    def gather_checkpoint(self, state: dict) -> dict | None:
        """Rank 0: ``state`` with the buffer replaced by the concatenation of every rank's shard (the
        single-process format) and every rank's RNG state under ``state["dist"]``; other ranks: None."""
        if not self.enabled:
            return state
        shards = [None] * self.world_size if self.is_main else None
        dist.gather_object({"samples": state["buffer"]["samples"], "rng": state["rng"]}, shards, dst=0)
        if not self.is_main:
            return None
        buf = dict(state["buffer"], samples=torch.cat([s["samples"] for s in shards]))
        return {**state, "buffer": buf,
                "dist": {"world_size": self.world_size, "rng": [s["rng"] for s in shards],
                         "shard_sizes": [len(s["samples"]) for s in shards]}}

    def buffer_shard(self, buffer_state: dict) -> dict:
        """This rank's slice of a checkpoint's (concatenated) buffer state."""
        if not self.enabled:
            return buffer_state
        part = torch.tensor_split(buffer_state["samples"], self.world_size)[self.rank]
        return dict(buffer_state, samples=part)

    def restore_rng(self, ckpt: dict, iteration: int, seed: int) -> None:
        """After the rank-0 RNG state of ``ckpt`` was set: give each rank its own stream back."""
        if not self.enabled:
            return
        saved = ckpt.get("dist")
        if saved and saved.get("world_size") == self.world_size:
            set_rng_state(saved["rng"][self.rank])
        elif not self.is_main:
            self.seed_rank(seed, iteration)

    def barrier(self) -> None:
        """Wait until every rank reaches this line (no-op in a single process)."""
        if self.enabled:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")
