"""The whole training iteration as one compiled graph (``--compile-step``, issue 12), on CPU.

For every model kind (``fastebm.model.MODEL_KINDS``, so a kind added later is covered): Dynamo traces
``Trainer.step`` without a graph break; five compiled steps equal five eager steps from the same seeds
(losses, parameters, replay buffer); no recompilation after the first step although the warm-up changes
the learning rate at every step. The compile backend here is ``aot_eager`` (Dynamo + AOTAutograd, the
graph capture that Inductor compiles; Inductor's C++ code for the whole step takes minutes to build on a
2-core machine, so the Inductor run is the benchmark's, bench/test_engine_speed.py). GPU: CUDA graphs.
"""
import pytest
import torch
from torch._dynamo.utils import counters

from fastebm.config import resolve
from fastebm.data import ImageSet
from fastebm.model import MODEL_KINDS
from fastebm.sampler import prepare_compiled_input_grad
from fastebm.step import graph_breaks, init_optimizer_state, optimizer_step
from fastebm.trainer import Trainer, lr_at

TINY = dict(dataset="folder", device="cpu", depth=10, width=1, buffer_size=64, batch_size=8, cls_batch_size=16, k=2,
            epochs=1, iters_per_epoch=20, progress=False, eval_every=1000, sample_every=1000,
            ckpt_every=1000, warmup_iters=10, fast_path="off")


def _toy_data(n=64, size=16):
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.arange(n) % 10, 10, "toy")


def _trainer(path, kind, compiled, **over):
    flags = dict(compile_step=True, compile="aot_eager") if compiled else dict(compile_step=False, compile="off")
    return Trainer(resolve(dict(TINY, model=kind, out=str(path), **dict(flags, **over))), _toy_data())


def _run(t, n):
    losses = []
    for it in range(n):
        for g in t.opt.param_groups:  # the schedule of Trainer.fit: a new lr every warm-up step
            g["lr"] = lr_at(t.cfg, it)
        losses.append(t.train_step(it)["loss"].detach().clone())
    return torch.stack(losses)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_compiled_step_has_no_graph_breaks(tmp_path, kind):
    t = _trainer(tmp_path, kind, compiled=False)
    idx_cls = t.cls_batches.shard_indices(0) if t.cls_batches is not None else None
    prepare_compiled_input_grad((8, *t.buffer.samples.shape[1:]), "cpu")  # as use_compiled_step does
    n, reasons = graph_breaks(t.step, t.gen_batches.shard_indices(0), idx_cls, t.lr)
    assert n == 0, reasons


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_five_compiled_steps_equal_five_eager_steps_without_recompiling(tmp_path, kind):
    torch._dynamo.reset()
    eager = _trainer(tmp_path / "eager", kind, compiled=False)
    loss_e = _run(eager, 5)
    compiled = _trainer(tmp_path / "compiled", kind, compiled=True)
    counters.clear()
    loss_c = _run(compiled, 1)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 1  # the whole step is one graph
    loss_c = torch.cat([loss_c, _run_from(compiled, 1, 5)])
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled after the first step (lr schedule?)"
    assert not counters["recompiles"]
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-6)
    # Parameters, BatchNorm running statistics and the replay buffer: within 1e-4 relative, in norm over
    # each whole state. (Elementwise, fp32 rounding of another op order under AOTAutograd is "large" only
    # relative to values near 0: LSE-JEM's BatchNorm biases, norm 0.003 after five steps, differ by 1.6e-6,
    # while the whole parameter vector agrees to 1.4e-6 relative.)
    for what, c, e in (("parameters", compiled.model.parameters(), eager.model.parameters()),
                       ("BatchNorm statistics", compiled.model.buffers(), eager.model.buffers()),
                       ("replay buffer", [compiled.buffer.samples], [eager.buffer.samples])):
        vc, ve = ([t.detach().float().flatten() for t in ts] for ts in (c, e))
        if not ve:  # JEM: no BatchNorm
            continue
        vc, ve = torch.cat(vc), torch.cat(ve)
        rel = float((vc - ve).norm() / ve.norm())
        assert rel < 1e-4, f"{what} differ by {rel:.2e} relative (norm)"
    assert lr_at(compiled.cfg, 4) != lr_at(compiled.cfg, 0)  # the lr did change under the graph


def _run_from(t, start, stop):
    losses = []
    for it in range(start, stop):
        for g in t.opt.param_groups:
            g["lr"] = lr_at(t.cfg, it)
        losses.append(t.train_step(it)["loss"].detach().clone())
    return torch.stack(losses)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_functional_optimizer_step_equals_optimizer_step(opt):
    """optimizer_step (torch's functional SGD / Adam on pre-created state) = Optimizer.step()."""
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    make = ((lambda v: torch.optim.SGD(v, lr=0.1, momentum=0.9, weight_decay=1e-3)) if opt == "sgd" else
            (lambda v: torch.optim.Adam(v, lr=0.01, weight_decay=1e-3)))
    ref, ours = make(ps), make(qs)
    init_optimizer_state(ours)
    for i in range(3):
        for p, q in zip(ps, qs):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        for o in (ref, ours):
            o.param_groups[0]["lr"] *= 0.5
        ref.step()
        optimizer_step(ours, torch.tensor(ours.param_groups[0]["lr"]))
        for p, q in zip(ps, qs):
            torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert ours.state_dict()["state"].keys() == ref.state_dict()["state"].keys()


def test_compile_step_flags_and_cpu_default(tmp_path):
    t = _trainer(tmp_path, "mebm", compiled=False, compile_step=None)
    assert t.cfg.compile_step is False  # auto: off on CPU
    with pytest.raises(TypeError, match="--optimizer"):
        init_optimizer_state(torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))]))


# ------------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["mjem"])
def test_gpu_compiled_step_cuda_graphs_match_eager(tmp_path, kind):
    """CUDA: the compiled step (Inductor, fallback_random, CUDA graphs) equals the eager step over five
    iterations in fp32 and replays without recompiling. One kind (M-JEM: both batches, both heads) to
    keep bench/gpu_check.sh within its time; every kind is traced and compared on CPU above."""
    over = dict(device="cuda", compile="off", cuda_graphs=False, triton=False, amp="off", channels_last=False)
    eager = Trainer(resolve(dict(TINY, model=kind, out=str(tmp_path / "e"), compile_step=False, **over)), _toy_data())
    loss_e = _run(eager, 5)
    torch._dynamo.reset()
    counters.clear()
    over["compile"] = "default"
    comp = Trainer(resolve(dict(TINY, model=kind, out=str(tmp_path / "c"), compile_step=True, **over)), _toy_data())
    loss_c = _run(comp, 5)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"]
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-3, atol=1e-5)
    for pc, pe in zip(comp.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(pc, pe, rtol=1e-3, atol=1e-5)


def test_compiled_step_under_bf16_autocast_and_channels_last_equals_eager(tmp_path):
    """The autocast and memory-format choices are traced into the graph: compiled = eager with them on."""
    torch._dynamo.reset()
    over = dict(amp="bf16", channels_last=True)
    loss_e = _run(_trainer(tmp_path / "eager", "mjem", compiled=False, **over), 3)
    compiled = _trainer(tmp_path / "compiled", "mjem", compiled=True, **over)
    loss_c = _run(compiled, 3)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-3, atol=1e-5)
