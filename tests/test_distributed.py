"""Data-parallel training on CPU with the gloo backend and 2 processes.

One ``torch.multiprocessing.spawn`` job (module fixture ``ddp``) runs, in each of 2 ranks:
  A. M-JEM with BatchNorm through ``Trainer.fit`` with a comm hook that counts DDP's gradient buckets:
     parameters must be identical across ranks, replay-buffer shards must differ, and SGLD must
     trigger no all-reduce while a training step does;
  B. JEM with ``norm="none"``, SGD, no data noise, SGLD noise 0 and negatives from a fixed global batch, to
     compare the logged (rank-averaged) loss and the final parameters with a single-process run of the
     same global batch, both judged against that run in float64. Per-rank BatchNorm statistics would make
     this comparison inexact (each rank normalizes over B/N images), hence ``norm="none"`` here.
  C. M-JEM with a NaN loss noted on rank 1 only (after the rank average, so rank 0's own metrics are
     clean): both ranks must roll back together to ckpt.pt, lower the lr and finish identical.
Then a real ``torchrun --nproc-per-node 2 -m fastebm.train`` run writes a checkpoint that resumes on 1
process with the full-size buffer, and a 2-rank run whose rank 1 alone gets SIGUSR1 stops on both ranks at
the same --check-every iteration (exit 138 each, one checkpoint, one ``stop`` row) and resumes.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from fastebm.algorithm.sampler import sgld
from fastebm.config.options import resolve
from fastebm.data.datasets import load_dataset
from fastebm.data.imageset import Batches
from fastebm.fastpath.numerics import agree, float64_draws
from fastebm.fastpath.selfcheck import float64_copy
from fastebm.run.distributed import DistContext
from fastebm.run.schedule import lr_at
from fastebm.run.trainer import Trainer
from fastebm.train import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = 2
TINY = dict(dataset="digits", depth=10, width=1, train_subset=200, test_subset=32, progress=False, log_every=1,
            warmup_iters=2, decay_epochs=[], epochs=1, device="cpu")
CFG_A = dict(TINY, model="mjem", k=2, batch_size=16, cls_batch_size=16, buffer_size=64, iters_per_epoch=3)
# no per-rank randomness; SGD, whose update is linear in the gradient: a gradient averaged over the wrong world
# size or 2 % off moves θ by as much (Adam's g / √v hides a scale and lets rounding flip its ±lr steps where g ≈ 0);
# p0 uniform: the negatives come from FixedNegatives, a fitted p0 would go unused; 16 px: a quarter of the work
CFG_B = dict(TINY, model="jem", k=2, batch_size=16, buffer_size=16, iters_per_epoch=3, data_noise=0.0,
             noise=0.0, norm="none", lr=1e-3, optimizer="sgd", p0="uniform", augment_px=False, augment_cls=False,
             image_size=16)
CFG_C = dict(TINY, model="mjem", k=1, batch_size=16, cls_batch_size=16, buffer_size=32, iters_per_epoch=3, epochs=2,
             ckpt_every=2, eval_every=1000, sample_every=1000)


def _free_port() -> int:
    """A free TCP port *below* the kernel's ephemeral range. A port from the ephemeral range (what
    binding port 0 returns) can be handed to rank 1's own outgoing socket while it connects before
    rank 0 listens: a TCP self-connection, which made gloo abort ("terminate called without an
    active exception") in about one run of six."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError):
        low = 32768
    rng = random.Random(os.getpid())
    for _ in range(100):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def _records(out, kind="train"):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


class FixedNegatives:
    """Replay-buffer stand-in: the x0 of the i-th draw is this rank's slice of a fixed global batch
    (a function of i only), so a 2-rank run and a 1-rank run see the same global negatives."""

    def __init__(self, rank: int, global_batch: int, side: int = CFG_B["image_size"]):
        self.rank, self.global_batch, self.side, self.calls = rank, global_batch, side, 0
        self.samples = torch.zeros(4, 3, side, side)

    def sample(self, n):
        g = torch.Generator().manual_seed(1000 + self.calls)
        self.calls += 1
        x = torch.rand(self.global_batch, 3, self.side, self.side, generator=g) * 2 - 1
        return x[self.rank * n:(self.rank + 1) * n], torch.arange(n)

    def update(self, idx, x):
        return torch.ones(len(idx), dtype=torch.bool)

    def state_dict(self):
        return {"samples": self.samples, "reinit_freq": 0.0}


class FixedNegatives64(FixedNegatives):
    """The same negatives in float64, for the float64 run of the plain path."""

    def sample(self, n):
        x, idx = super().sample(n)
        return x.double(), idx


def use_negatives(t, buffer) -> None:
    """Put a replay-buffer stand-in into trainer ``t``'s iteration (plain and per-piece); it keeps the run's p0."""
    buffer.p0 = t.buffer.p0
    t.buffer = t.fast.buffer = t.fast.plain.buffer = t.fast.per_piece.buffer = buffer


def _data_b():
    """B's train and test digits at its image size."""
    return tuple(load_dataset("digits", split=s, image_size=CFG_B["image_size"]) for s in ("train", "test"))


def _worker(rank, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from fastebm.run.distributed import exit_process, init_from_env, shutdown

    assert init_from_env("cpu", timeout_s=120)
    try:
        data = load_dataset("digits", split="train"), load_dataset("digits", split="test")
        # A: M-JEM with BatchNorm, counting DDP's all-reduced gradient buckets.
        t = Trainer(resolve(dict(CFG_A, out=os.path.join(tmp, "a"))), *data)
        buckets = []
        count = lambda state, bucket: (buckets.append(1), allreduce_hook(None, bucket))[1]  # noqa: E731
        t.fast.step.net.ddp.register_comm_hook(None, count)
        t.fit()
        n_fit = len(buckets)
        grads = [p.grad.clone() for p in t.model.parameters()]
        buffer_at_ckpt = t.buffer.samples.clone()
        x0, _ = t.buffer.sample(8)
        sgld(t.model, x0, t.fast.sgld)  # SGLD after training: no all-reduce, gradients untouched
        n_sgld = len(buckets) - n_fit
        grads_untouched = all(torch.equal(g, p.grad) for g, p in zip(grads, t.model.parameters()))
        t.model.train()
        t.train_step(t.state.iteration)  # one more optimizer step: the same number of buckets as each fit step
        n_step = len(buckets) - n_fit - n_sgld
        torch.save({"params": [p.detach().clone() for p in t.model.parameters()], "buffer": buffer_at_ckpt,
                    "buffer_len": len(t.buffer), "n_fit": n_fit, "n_sgld": n_sgld, "n_step": n_step,
                    "grads_untouched": grads_untouched, "x_pos": t.gen_batches.get(0)[0]},
                   os.path.join(tmp, f"a{rank}.pt"))
        # B: JEM without normalization on a fixed global batch of negatives.
        t = Trainer(resolve(dict(CFG_B, out=os.path.join(tmp, "b"))), *_data_b())
        use_negatives(t, FixedNegatives(rank, CFG_B["batch_size"]))
        t.fit()
        torch.save({"params": [p.detach().clone() for p in t.model.parameters()]}, os.path.join(tmp, f"b{rank}.pt"))
        # C: a divergence seen by rank 1 only → every rank rolls back together.
        t = Trainer(resolve(dict(CFG_C, out=os.path.join(tmp, "c"))), *data)
        watch, hits = t.watch.note, []

        def watch_rank1(m, it):
            if rank == 1 and it == 4 and not hits:
                hits.append(it)
                m = dict(m, loss=m["loss"] * float("nan"))
            watch(m, it)

        t.watch.note = watch_rank1
        t.fit()
        torch.save({"params": [p.detach().clone() for p in t.model.parameters()], "iteration": t.state.iteration,
                    "rollbacks": t.state.rollbacks, "lr_scale": t.state.lr_scale, "lr": t.opt.param_groups[0]["lr"]},
                   os.path.join(tmp, f"c{rank}.pt"))
    finally:
        shutdown()
    # As fastebm.train under torchrun: a worker that used DDP ends with os._exit, or a gloo thread can abort
    # it at interpreter shutdown (fastebm.run.distributed.exit_process); reached only when no exception was raised.
    exit_process(0, multi_process=True)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(_worker, args=(_free_port(), tmp), nprocs=WORLD, join=True)
    return tmp, [torch.load(os.path.join(tmp, f"a{r}.pt")) for r in range(WORLD)], \
        [torch.load(os.path.join(tmp, f"b{r}.pt")) for r in range(WORLD)], \
        [torch.load(os.path.join(tmp, f"c{r}.pt")) for r in range(WORLD)]


def test_parameters_stay_identical_across_ranks(ddp):
    _, a, b, _ = ddp
    for res in (a, b):
        for p0, p1 in zip(res[0]["params"], res[1]["params"]):
            assert torch.equal(p0, p1)
    # and training did move them: rank 0 of A differs from a fresh model of the same seed
    torch.manual_seed(1)
    from fastebm.algorithm.model import build_model
    fresh = build_model(resolve(dict(CFG_A, n_classes=10)))
    assert any(not torch.equal(p, q) for p, q in zip(fresh.parameters(), a[0]["params"]))


def test_ranks_take_their_slice_of_the_global_batch(ddp):
    _, a, _, _ = ddp
    data = load_dataset("digits", split="train").subset(200, 1)
    full, _ = Batches(data, CFG_A["batch_size"], "cpu", seed=1).get(0)
    assert torch.equal(torch.cat([a[0]["x_pos"], a[1]["x_pos"]]), full)


def test_buffer_shards_differ_and_add_up_to_the_configured_size(ddp):
    tmp, a, _, _ = ddp
    assert [r["buffer_len"] for r in a] == [CFG_A["buffer_size"] // WORLD] * WORLD
    assert not torch.allclose(a[0]["buffer"], a[1]["buffer"])  # not fp32 rounding: each rank's own chains
    ckpt = torch.load(os.path.join(tmp, "a", "ckpt.pt"), weights_only=False)
    assert torch.equal(ckpt["buffer"]["samples"], torch.cat([r["buffer"] for r in a]))
    assert ckpt["dist"]["world_size"] == WORLD and ckpt["dist"]["shard_sizes"] == [32, 32]
    assert len(ckpt["dist"]["rng"]) == WORLD
    files = sorted(os.listdir(os.path.join(tmp, "a")))
    events = [f for f in files if f.startswith("events.out.tfevents.")]
    assert len(events) == 1  # TensorBoard: rank 0 only
    assert [f for f in files if f not in events] == ["best_acc.pt", "ckpt.pt", "config.json", "metrics.jsonl", "p0.pt",
                                                     "samples"]


def test_sgld_triggers_no_all_reduce(ddp):
    _, a, _, _ = ddp
    for r in a:
        assert r["n_sgld"] == 0 and r["grads_untouched"]
        assert r["n_step"] >= 1 and r["n_fit"] == CFG_A["iters_per_epoch"] * r["n_step"]


def _single_b(out: str, **overrides) -> Trainer:
    """B in one process with the whole global batch (not yet trained)."""
    t = Trainer(resolve(dict(CFG_B, out=out, **overrides)), *_data_b())
    use_negatives(t, FixedNegatives(0, CFG_B["batch_size"]))
    return t


def _float64_b(t: Trainer) -> tuple[list[dict], list[torch.Tensor]]:
    """B's iterations on the plain path in float64 from untrained ``t``'s state (the same batches, negatives and
    learning rates): each iteration's metrics and the final parameters."""
    alg = float64_copy(t.fast.plain)
    alg.buffer = FixedNegatives64(0, CFG_B["batch_size"])
    rows = []
    for it in range(t.cfg.total_iters):
        lr = lr_at(t.cfg, it)
        for group in alg.opt.param_groups:
            group["lr"] = lr
        idx, idx_cls, _ = t.fast.batch(it)
        with float64_draws():
            out = alg(idx, idx_cls, torch.tensor(lr, dtype=torch.float64))
        rows.append({k: float(v) for k, v in out.items() if not k.startswith("_")})
    return rows, [p.detach() for p in alg.model.parameters()]


def test_loss_matches_single_process_run_with_the_same_global_batch(ddp, tmp_path, single_threaded):
    """2 ranks of 8 = 1 process with the global batch of 16, judged as the fast path's check judges
    (:func:`fastebm.fastpath.numerics.agree`): against the same run in float64, the yardstick of honest rounding being
    the single-process fp32 runs in both memory layouts (their convolutions sum in other orders, as batches of
    8 do). Each logged metric over the iterations; θ_T − θ_0 per parameter tensor. The same judgement
    rejects an update 2 % too large, so it can fail. One thread, as each rank has (two on a busy 2-core
    machine made these runs 20x slower)."""
    tmp, _, b, _ = ddp
    runs = [_single_b(str(tmp_path / name), channels_last=layout) for name, layout in (("nchw", False), ("cl", True))]
    t = runs[0]
    assert not t.dist.enabled and t.fast.step.net is t.model
    theta0 = [p.detach().double().clone() for p in t.model.parameters()]
    rows64, theta64 = _float64_b(t)
    for run in runs:
        run.fit()
    single, multi = [_records(run.out) for run in runs], _records(os.path.join(tmp, "b"))
    assert len(multi) == len(rows64) == CFG_B["iters_per_epoch"] and all(len(s) == len(multi) for s in single)
    series = lambda rows, key: torch.tensor([r[key] for r in rows], dtype=torch.float64)  # noqa: E731
    results = [a for key in ("loss", "loss_gen", "loss_cls", "e_pos", "e_neg", "acc")
               for a in agree(key, series(multi, key), [series(s, key) for s in single], series(rows64, key))]
    moved = lambda params: [p.detach().double() - p0 for p, p0 in zip(params, theta0)]  # noqa: E731
    names = [n for n, _ in t.model.named_parameters()]
    update = lambda params: agree("θ_T − θ_0", moved(params), [moved(run.model.parameters()) for run in runs],  # noqa: E731
                                  moved(theta64), grouped=True, group_names=names)
    results += update(b[0]["params"])
    assert all(r.ok for r in results), "; ".join(str(r) for r in results if not r.ok)
    too_far = [p0 + 1.02 * (q.double() - p0) for q, p0 in zip(b[0]["params"], theta0)]
    assert not all(r.ok for r in update(too_far))


def test_all_ranks_roll_back_together(ddp):
    tmp, _, _, c = ddp
    for r in c:
        assert (r["iteration"], r["rollbacks"], r["lr_scale"]) == (6, 1, 0.5)
    assert c[0]["lr"] == c[1]["lr"]
    for p0, p1 in zip(c[0]["params"], c[1]["params"]):
        assert torch.equal(p0, p1) and torch.isfinite(p0).all()
    out = os.path.join(tmp, "c")
    [rb] = _records(out, "rollback")  # one row: only rank 0 writes
    assert (rb["iter"], rb["from_iter"], rb["rollbacks"]) == (2, 4, 1)
    assert [r["iter"] for r in _records(out)] == [1, 2, 3, 3, 4, 5, 6]
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    assert (ckpt["iteration"], ckpt["lr_scale"], ckpt["dist"]["world_size"]) == (6, 0.5, WORLD)


def test_torchrun_checkpoint_resumes_on_one_process(tmp_path):
    out = str(tmp_path / "run")
    argv = ["--depth", "10", "--width", "1", "--buffer-size", "40", "--batch-size", "8", "--cls-batch-size", "8",
            "--train-subset", "200", "--test-subset", "32", "--no-progress", "--warmup-iters", "2",
            "--log-every", "1", "--k", "1", "--epochs", "1", "--iters-per-epoch", "2", "--device", "cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--master-port",
           str(_free_port()), "-m", "fastebm.train", *argv, "--out", out]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("fastebm: done at iteration 2") == 1  # only rank 0 talks
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    assert ckpt["buffer"]["samples"].shape == (40, 3, 32, 32) and ckpt["dist"]["world_size"] == WORLD
    assert [r["iter"] for r in _records(out)] == [1, 2]

    cfg = resolve(dict(ckpt["config"], epochs=2))
    t = Trainer(cfg)
    t.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert len(t.buffer) == 40 and torch.equal(t.buffer.samples, ckpt["buffer"]["samples"])
    assert main(["--resume", os.path.join(out, "ckpt.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert [r["iter"] for r in _records(out)] == [1, 2, 3, 4]
    assert "dist" not in torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)  # a plain 1-process ckpt


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_checked_iteration(tmp_path):
    """SIGUSR1 (SLURM's warning before a requeue) to rank 1 only, one preempted pod of a job whose ranks are
    one process each, started with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT as torchrun, srun or a Kubeflow
    PyTorchJob set them: both ranks finish the iteration at the next multiple of --check-every (the one
    all-reduce that agrees on a stop, and on its signal), both exit 128 + SIGUSR1 = 138, and rank 0, which got
    no signal itself, writes ckpt.pt of that iteration and the one ``stop`` row; a resume goes on from there.
    Each rank is its own child here, not a torchrun worker, so the test sees both exit statuses."""
    out, every, total = str(tmp_path / "run"), 4, 12
    argv = ["--depth", "10", "--width", "1", "--buffer-size", "40", "--batch-size", "8", "--cls-batch-size", "8",
            "--train-subset", "200", "--test-subset", "32", "--no-progress", "--warmup-iters", "2",
            "--log-every", "1", "--k", "1", "--epochs", "1", "--iters-per-epoch", str(total), "--check-every",
            str(every), "--ckpt-every", "1000", "--eval-every", "1000", "--sample-every", "1000", "--device", "cpu",
            "--out", out]
    port, procs, logs = _free_port(), [], []
    try:
        for rank in range(WORLD):
            env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                       OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                       LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
            logs.append((open(tmp_path / f"out{rank}", "w+"), open(tmp_path / f"err{rank}", "w+")))
            procs.append(subprocess.Popen([sys.executable, "-m", "fastebm.train", *argv], cwd=REPO, env=env,
                                          stdout=logs[-1][0], stderr=logs[-1][1], text=True))
        deadline = time.monotonic() + 300  # start-up is 10-40 s on a busy 2-core machine
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            if os.path.isfile(os.path.join(out, "metrics.jsonl")) and _records(out):
                break  # iteration 1 logged: the ranks are training, iteration 2 is under way
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), [open(e.name).read()[-2000:] for _, e in logs]
        procs[1].send_signal(signal.SIGUSR1)
        status = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
        for f in (f for pair in logs for f in pair):
            f.close()
    out0, err0, out1, err1 = (open(tmp_path / n).read() for n in ("out0", "err0", "out1", "err1"))
    assert status == [128 + signal.SIGUSR1] * 2, (status, err0[-3000:], err1[-3000:])
    assert "fastebm: SIGUSR1: stopping after this iteration" in err1 and "fastebm: SIGUSR1" not in err0  # rank 1 only
    [stop] = _records(out, "stop")  # one row: only rank 0 writes
    at = stop["iter"]
    assert at % every == 0 and every <= at < total and stop["signal"] == "SIGUSR1", stop
    assert [r["iter"] for r in _records(out)] == list(range(1, at + 1))  # no rank went past it
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ckpt["iteration"] == at and ckpt["dist"]["world_size"] == WORLD  # both ranks' shards and RNG, gathered
    assert f"stopped by SIGUSR1 at iteration {at}" in err0
    assert json.loads(out0)["stopped"] == "SIGUSR1" and json.loads(out0)["iteration"] == at and out1 == ""

    assert main(["--resume", os.path.join(out, "ckpt.pt"), "--no-progress"]) == 0  # the requeued job, 1 process
    assert [r["iter"] for r in _records(out)] == list(range(1, total + 1))
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["iteration"] == total


def test_single_process_has_no_process_group_and_no_op_hooks():
    import torch.distributed as dist

    ctx = DistContext(0, 1)
    assert not ctx.enabled and ctx.is_main and ctx.shard == (0, 1) and ctx.buffer_size(10) == 10
    m = torch.nn.Linear(2, 2)
    assert ctx.wrap(m) is m
    state = {"buffer": {"samples": torch.zeros(3)}, "rng": None}
    assert ctx.gather_checkpoint(state) is state and ctx.buffer_shard(state["buffer"]) is state["buffer"]
    assert not dist.is_initialized()
    sizes = [DistContext(r, 3).buffer_size(10) for r in range(3)]
    assert sizes == [len(s) for s in torch.tensor_split(torch.arange(10), 3)] and sum(sizes) == 10


def test_batch_shards_concatenate_to_the_global_batch():
    data = load_dataset("digits", split="train").subset(100, 0)
    full = Batches(data, 12, "cpu", seed=3, stream=1).indices(5)
    full_x, full_y = Batches(data, 12, "cpu", seed=3, stream=1).get(5)
    parts = [Batches(data, 12, "cpu", seed=3, stream=1, shard=(r, 3)).get(5) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_y)
    assert len(full) == 12 and all(len(p[1]) == 4 for p in parts)
    with pytest.raises(ValueError, match="rank"):
        Batches(data, 12, "cpu", shard=(3, 3))


@pytest.mark.parametrize("multi", [True, False])
def test_exit_process_flushes_and_keeps_the_status(multi):
    """A torchrun rank ends with os._exit (no interpreter finalization, where a live gloo worker thread can
    abort the process): what it printed still arrives, the exit status is kept, and atexit handlers are
    skipped only in the multi-process case."""
    code = ("import atexit; from fastebm.run.distributed import exit_process; atexit.register(print, 'atexit'); "
            f"print('done', end=''); exit_process(3, multi_process={multi})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 3
    assert proc.stdout == ("done" if multi else "doneatexit\n")
