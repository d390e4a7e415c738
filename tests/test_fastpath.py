"""The fast path agrees with the plain reference path: compiled energy, fused Triton update, channels-last,
AMP, one-forward energies; FLOPs of an SGLD step; no recompiles; GPU-only CUDA graphs. Agreement is judged
as the fast path's check judges it (:func:`fastebm.fastpath.numerics.agree`: against float64, relative to the plain
fp32 path's own error)."""
import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastebm.algorithm.sampler import Sampler, SGLDConfig, compile_mode, sampling_mode, sgld
from fastebm.config.options import resolve
from fastebm.data.imageset import ImageSet
from fastebm.fastpath.numerics import agree
from fastebm.run.trainer import Trainer


def _x(n=8, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _input_grad(fn, x):
    leaf = x.detach().requires_grad_(True)
    xin = leaf.view_as(leaf)  # a non-leaf input: FlopCounterMode's module tracker needs one
    return torch.autograd.grad(fn(xin).sum(), xin)[0]


def _model64(model):
    return copy.deepcopy(model).to(torch.float64)


def _assert_agree(*args, **kw):
    results = agree(*args, **kw)
    assert all(r.ok for r in results), "; ".join(map(str, results))


def _compiled(model):
    torch._dynamo.reset()
    return torch.compile(model, **compile_mode("aot_eager", False))


def test_plain_sampler_equals_reference_sgld(tiny_model):
    model = tiny_model("mjem").train()
    cfg = SGLDConfig(n_steps=3, noise=0.01)
    noise = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    torch.testing.assert_close(Sampler(model, cfg)(_x(), noise), sgld(model, _x(), cfg, noise=noise), rtol=0, atol=0)


@pytest.mark.parametrize("phase", ["train", "frozen", "no_grad_after"])
def test_compiled_energy_gradient_and_chain_match_eager(tiny_model, phase):
    model = tiny_model("mjem").train()
    model64 = _model64(model)
    net = _compiled(model)
    x = _x()
    if phase == "frozen":
        with sampling_mode(model), sampling_mode(model64):
            ge, gc, g64 = (_input_grad(model.energy, x), _input_grad(lambda t: net(t)[0], x),
                           _input_grad(model64.energy, x.double()))
    else:
        ge, gc, g64 = (_input_grad(model.energy, x), _input_grad(lambda t: net(t)[0], x),
                       _input_grad(model64.energy, x.double()))
    if phase == "no_grad_after":
        with torch.no_grad():
            _assert_agree("energy", net(x)[0][:, None], model.energy(x)[:, None],
                          model64.energy(x.double())[:, None], per_sample=True)
    _assert_agree("input gradient", gc, ge, g64, per_sample=True)
    cfg = SGLDConfig(n_steps=4, noise=0.005, clamp_x=False)
    noise = [torch.randn_like(x) for _ in range(4)]
    eager = Sampler(model, cfg)(x, noise)
    compiled = Sampler(model, cfg, net=net)(x, noise)
    ref = Sampler(model64, cfg)(x.double(), [n.double() for n in noise])
    _assert_agree("chain", compiled, eager, ref, scale=ref - x.double(), per_sample=True)
    assert all(p.requires_grad for p in model.parameters())  # freeze / unfreeze restored


def test_sgld_step_costs_two_forwards_in_flops(tiny_model):
    """One SGLD step = forward + input-gradient backward = 2× the forward FLOPs (no weight gradients)."""
    model = tiny_model("mebm", width=2).train()
    x = _x(4)
    with FlopCounterMode(display=False) as fc:
        model.energy(x)
    forward = fc.get_total_flops()
    net = _compiled(model)
    for fn in (model.energy, lambda t: net(t)[0]):
        with sampling_mode(model):
            _input_grad(fn, x)  # warm-up / compile in the frozen state
            with FlopCounterMode(display=False) as fc:
                _input_grad(fn, x)
        assert fc.get_total_flops() == 2 * forward
    # With trainable parameters a full backward would cost 3× (weight gradients too):
    with FlopCounterMode(display=False) as fc:
        out = model.energy(x.requires_grad_(True).view_as(x)).sum()
        torch.autograd.grad(out, [x] + list(model.parameters()))
    assert fc.get_total_flops() == 3 * forward


def test_triton_update_matches_plain_update(tiny_model):
    from fastebm.kernels import make_rng_state

    model = tiny_model("mebm").train()
    x = _x()
    cfg = SGLDConfig(n_steps=3, noise=0.0, grad_clip=0.01)
    plain = Sampler(model, cfg)(x)
    fused = Sampler(model, cfg, triton=True, rng_state=make_rng_state(0))(x)
    ref = Sampler(_model64(model), cfg)(x.double())
    _assert_agree("chain", fused, plain, ref, scale=ref - x.double(), per_sample=True)
    noisy = SGLDConfig(n_steps=2, noise=0.01)
    state = make_rng_state(123)
    s = Sampler(model, noisy, triton=True, rng_state=state)
    a = s(x)
    b = s(x)
    assert not torch.equal(a, b)  # the step advances the Philox offset: fresh noise
    state.copy_(make_rng_state(123))
    assert torch.equal(s(x), a)  # reseeding reproduces


def test_channels_last_matches_contiguous(tiny_model):
    model = tiny_model("mjem").train()
    model64 = _model64(model)
    x = _x()
    cfg = SGLDConfig(n_steps=3, noise=0.0)
    g, g64 = _input_grad(model.energy, x), _input_grad(model64.energy, x.double())
    plain, ref = Sampler(model, cfg)(x), Sampler(model64, cfg)(x.double())
    model_cl = tiny_model("mjem").train().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    _assert_agree("input gradient", _input_grad(model_cl.energy, x_cl), g, g64, per_sample=True)
    out = Sampler(model_cl, cfg, channels_last=True)(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    _assert_agree("chain", out, plain, ref, scale=ref - x.double(), per_sample=True)


def test_bf16_sgld_keeps_an_fp32_chain(tiny_model):
    """Autocast touches the network only: input gradients and chains stay fp32. (Whether bf16 SGLD samples
    the same chains is the sgld_amp check's question: tests/test_selfcheck.py, bench/test_precision.py.)"""
    model = tiny_model("mjem", norm="none").train()
    x = _x(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g16 = _input_grad(model.energy, x)
    assert g16.dtype == torch.float32 and torch.isfinite(g16).all()
    out = Sampler(model, SGLDConfig(n_steps=2, noise=0.0), amp="bf16")(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def _toy_data(n=64, size=16):
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.arange(n) % 10, 10, "toy")


TINY = dict(dataset="folder", depth=10, width=1, buffer_size=64, batch_size=8, cls_batch_size=16, k=2,
            epochs=1, progress=False, eval_every=1000, sample_every=1000, ckpt_every=1000, warmup_iters=1)


def test_one_forward_without_batchnorm_equals_two_forwards(tmp_path):
    t = Trainer(resolve(dict(TINY, norm="none", out=str(tmp_path))), _toy_data())
    assert not t.fast.plain.has_bn
    xp, xn = _x(8), _x(8, seed=1)
    e_pos, e_neg = t.fast.plain.energies(xp, xn)
    model64 = _model64(t.model)
    _assert_agree("E(x+)", e_pos[:, None], t.model(xp)[0][:, None], model64(xp.double())[0][:, None], per_sample=True)
    _assert_agree("E(x-)", e_neg[:, None], t.model.energy(xn)[:, None], model64.energy(xn.double())[:, None],
                  per_sample=True)


@pytest.mark.slow
def test_compiled_training_does_not_recompile(tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    t = Trainer(resolve(dict(TINY, compile="aot_eager", iters_per_epoch=6, out=str(tmp_path))), _toy_data())
    for it in range(3):  # warm-up: one graph per (batch size, grad mode, BN momentum) variant
        t.train_step(it)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    for it in range(3, 6):
        t.train_step(it)
    assert counters["stats"]["unique_graphs"] == graphs


def test_fast_flags_resolve_and_refuse_cuda_only_options_on_cpu(tmp_path):
    t = Trainer(resolve(dict(TINY, iters_per_epoch=1, out=str(tmp_path))), _toy_data())
    assert (t.cfg.compile, t.cfg.cuda_graphs, t.cfg.amp, t.cfg.triton) == ("off", False, "off", False)
    assert t.cfg.check_every == 1
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Trainer(resolve(dict(TINY, cuda_graphs=True, out=str(tmp_path / "b"))), _toy_data())


# ------------------------------------------------------------------------------------------- GPU only
def _gpu_model(kind="mjem"):
    from fastebm.algorithm.model import EnergyModel

    torch.manual_seed(0)
    return EnergyModel(kind, depth=10, width=2, norm="batch", image_size=32).cuda().train()


@pytest.mark.gpu
def test_graph_replay_equals_eager_sgld_with_the_same_noise():
    from fastebm.kernels import make_rng_state

    model = _gpu_model()
    x0 = torch.rand(16, 3, 32, 32, device="cuda") * 2 - 1
    cfg = SGLDConfig(n_steps=5, noise=0.01)
    state = make_rng_state(7, "cuda")
    graphed = Sampler(model, cfg, triton=True, cuda_graphs=True, rng_state=state)
    graphed(x0)  # capture (warm-up advances the state)
    state.copy_(make_rng_state(7, "cuda"))
    noise = graphed.noise_draws(x0)  # the kernel's Philox numbers, from a copy of the state
    replay = graphed(x0)
    state.copy_(make_rng_state(7, "cuda"))
    eager = Sampler(model, cfg, triton=True, rng_state=state)(x0)
    ref = Sampler(_model64(model), cfg)(x0.double(), [n.double() for n in noise])
    _assert_agree("chain", replay, eager, ref, scale=ref - x0.double(), per_sample=True)
    assert not torch.equal(graphed(x0), replay)  # later replays draw fresh noise


@pytest.mark.gpu
def test_graph_replays_do_not_grow_memory_and_keep_bn_stats():
    model = _gpu_model()
    x0 = torch.rand(16, 3, 32, 32, device="cuda") * 2 - 1
    s = Sampler(model, SGLDConfig(n_steps=3, noise=0.01), cuda_graphs=True)
    stats = [b.clone() for b in model.buffers()]
    for _ in range(5):
        s(x0)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(200):
        s(x0)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))


@pytest.mark.gpu
def test_graph_replay_updates_bn_stats_as_the_eager_loop_in_update_mode():
    """``--sgld-bn update``: the captured loop keeps its forwards' running-statistics writes (momentum 0.9, the
    authors'), and one replay moves them as the same loop run op by op (same chain, σ = 0)."""
    model = _gpu_model()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.9
    x0 = torch.rand(16, 3, 32, 32, device="cuda") * 2 - 1
    cfg = SGLDConfig(n_steps=3, noise=0.0, bn_mode="update")
    start = copy.deepcopy(model.state_dict())
    replay = Sampler(model, cfg, cuda_graphs=True)(x0)  # capture (warm-up undone), then one replay
    graphed = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(start)
    # judged against float64, the yardstick the same loop op by op in both memory layouts (numerics.agree)
    model64, model_cl = _model64(model), copy.deepcopy(model).to(memory_format=torch.channels_last)
    eager = Sampler(model, cfg)(x0)
    eager_cl = Sampler(model_cl, cfg, channels_last=True)(x0)
    ref = Sampler(model64, cfg)(x0.double())
    _assert_agree("chain", replay, [eager, eager_cl], ref, scale=ref - x0.double(), per_sample=True)
    cl_stats, ref_stats = model_cl.state_dict(), model64.state_dict()
    for k, v in model.state_dict().items():
        if "num_batches_tracked" in k:
            assert int(graphed[k]) == int(start[k]) + 3 == int(v) == int(cl_stats[k])
        elif "running" in k:
            assert not torch.equal(v, start[k])
            _assert_agree(k, graphed[k], [v, cl_stats[k]], ref_stats[k], scale=ref_stats[k] - start[k].double())


@pytest.mark.gpu
def test_graph_reseed_reproduces_with_torch_noise():
    model = _gpu_model("mebm")
    x0 = torch.rand(16, 3, 32, 32, device="cuda") * 2 - 1
    s = Sampler(model, SGLDConfig(n_steps=3, noise=0.01), cuda_graphs=True)
    s(x0)
    torch.manual_seed(3)  # the graph's noise comes from torch's generator (no Triton kernel here)
    a = s(x0)
    torch.manual_seed(3)
    assert torch.equal(s(x0), a)


@pytest.mark.gpu
def test_bf16_gpu_gradients_and_fast_training_step(tmp_path):
    model = _gpu_model().to(memory_format=torch.channels_last)
    x = (torch.rand(32, 3, 32, 32, device="cuda") * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        g16 = _input_grad(model.energy, x)
    assert g16.dtype == torch.float32 and torch.isfinite(g16).all()  # the chain state stays fp32
    t = Trainer(resolve(dict(TINY, device="cuda", iters_per_epoch=3, out=str(tmp_path))), _toy_data(256, 32))
    assert t.cfg.cuda_graphs and t.cfg.triton and t.cfg.amp == "bf16" and t.cfg.sgld_amp == "off"
    assert t.cfg.channels_last
    t.fit()
    assert torch.isfinite(t.buffer.samples).all()


@pytest.mark.gpu
def test_rollback_keeps_the_captured_sgld_graph_valid(tmp_path):
    """A rollback restores the weights in place, so the SGLD CUDA graph captured before it is
    replayed (not re-captured) and reads the restored, finite weights."""
    t = Trainer(resolve(dict(TINY, device="cuda", noise=0.0, iters_per_epoch=6, ckpt_every=2,
                             out=str(tmp_path))), _toy_data(256, 32))
    assert t.cfg.cuda_graphs and t.cfg.triton and t.cfg.check_every == t.cfg.log_every  # checks at 2, 4, 6
    step, graphs = t.train_step, []

    def nan_weight_at_5(it):
        m = step(it)
        if it + 1 == 5 and not graphs:
            graphs.append(t.fast.sampler._graph)
            with torch.no_grad():
                t.model.energy_head.weight.fill_(float("nan"))  # read by the captured graph at iteration 6
        return m

    t.train_step = nan_weight_at_5
    t.fit()
    assert t.state.iteration == 6 and t.state.rollbacks == 1 and graphs[0] is not None
    assert t.fast.sampler._graph is graphs[0]  # the same capture, replayed after the rollback
    assert torch.isfinite(t.model.energy_head.weight).all() and torch.isfinite(t.buffer.samples).all()
    x0 = t.buffer.samples[:TINY["batch_size"]].clone()
    replay = t.fast.sampler(x0)
    with sampling_mode(t.model, t.fast.sgld.bn_mode):
        eager = t.fast.sampler._loop(x0).detach()
    assert torch.isfinite(replay).all()
    ref = Sampler(_model64(t.model).to(memory_format=torch.contiguous_format), t.fast.sgld)(x0.double())
    _assert_agree("chain", replay, eager, ref, scale=ref - x0.double(), per_sample=True)
