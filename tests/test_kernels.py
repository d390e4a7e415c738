"""Correctness tests of the fused Triton kernels (fastebm.kernels.langevin, .lowrank_gaussian).

CPU variants run the kernels in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1
when there is no CUDA device); CUDA variants are marked ``gpu`` and skipped without a device.
Sizes are small so that the whole file runs in well under a minute on 2 CPU cores.
"""
import os

import pytest
import torch

from fastebm.fastpath.numerics import U_TF32, agree, gamma, tolerance
from fastebm.kernels.langevin import langevin_step, make_rng_state
from fastebm.kernels.lowrank_gaussian import lowrank_gaussian_sample
from fastebm.kernels.reference import langevin_reference, lowrank_gaussian_reference

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_CUDA = torch.cuda.is_available()

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")),
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs CUDA (and the compiler, not the interpreter)"),
        ],
    ),
]
gpu_only = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs CUDA (and the compiler, not the interpreter)"),
]


def assert_exact(actual, expected, device):
    """Bitwise equality on every device: the kernels are compiled with ``enable_fp_fusion=False``,
    so the GPU does not contract ``x - a*g`` into one FMA (which would round once instead of twice)."""
    assert torch.equal(actual, expected), (actual - expected).abs().max()


def langevin_noise(n, rng_state, device):
    """The Philox normals at counters offset .. offset+n-1: a Langevin step of x = 0, g = 0 with
    sigma = 1 and no clamp returns exactly ``0 + 1 * eps``."""
    z = torch.zeros(n, device=device)
    return langevin_step(z, z, 0.0, 1.0, rng_state, clamp=None)


def make_xg(shape, device, seed=0, gscale=20.0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=gen) * 2 - 1).to(device)
    g = (torch.randn(shape, generator=gen) * gscale).to(device)
    return x, g


# ----------------------------------------------------------------------------------------------
# Langevin step
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gdtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad_clip", [None, 3.0])
def test_langevin_no_noise_equals_reference(device, gdtype, grad_clip):
    x, g = make_xg((4, 3, 8, 8), device)
    g = g.to(gdtype)
    rs = make_rng_state(1, device)
    rs0 = rs.clone()
    y = langevin_step(x, g, 0.01, 0.0, rs, grad_clip=grad_clip)
    ref = langevin_reference(x, g, 0.01, 0.0, grad_clip=grad_clip)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert_exact(y, ref, device)
    # the x clamp is active on some elements but not all
    at_bound = (y.abs() == 1.0).float().mean().item()
    assert 0.01 < at_bound < 0.9
    # without noise nothing is drawn and rng_state is untouched
    assert torch.equal(rs, rs0)
    # no x clamp
    y = langevin_step(x, g, 0.01, 0.0, rs, grad_clip=grad_clip, clamp=None)
    ref = langevin_reference(x, g, 0.01, 0.0, grad_clip=grad_clip, clamp=None)
    assert_exact(y, ref, device)
    assert y.abs().max() > 1.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_langevin_non_finite_values_agree_with_the_reference(device, grad_clip):
    """NaN stays NaN through the gradient clamp and the x clamp (as torch.clamp), ±inf clamps like torch:
    the trainer's non-finite-negatives guard sees what the plain path would show it."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([0.5, 0.5, 0.5, 0.5, nan, 0.2, 2.0, -0.3], device=device)
    g = torch.tensor([nan, inf, -inf, 1.0, 0.0, 0.5, 0.0, 40.0], device=device)
    y = langevin_step(x, g, 0.1, 0.0, make_rng_state(0, device), grad_clip=grad_clip)
    ref = langevin_reference(x, g, 0.1, 0.0, grad_clip=grad_clip)
    assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().sum() >= 2
    assert torch.equal(y.nan_to_num(7.0), ref.nan_to_num(7.0))


@pytest.mark.parametrize("device", DEVICES)
def test_langevin_odd_size_and_custom_clamp(device):
    x, g = make_xg((37, 300), device, seed=3, gscale=5.0)
    rs = make_rng_state(2, device)
    y = langevin_step(x, g, 0.05, 0.0, rs, grad_clip=1.5, clamp=(-0.5, 0.75), block=64)
    assert_exact(y, langevin_reference(x, g, 0.05, 0.0, grad_clip=1.5, clamp=(-0.5, 0.75)), device)
    assert y.min() == -0.5 and y.max() == 0.75


@pytest.mark.parametrize("device", DEVICES)
def test_langevin_channels_last_and_inplace(device):
    x, g = make_xg((4, 3, 8, 8), device, seed=5)
    rs = make_rng_state(3, device)
    y = langevin_step(x, g, 0.01, 0.0, rs, grad_clip=3.0)
    xc, gc = x.to(memory_format=torch.channels_last), g.to(memory_format=torch.channels_last)
    yc = langevin_step(xc, gc, 0.01, 0.0, rs, grad_clip=3.0)
    assert yc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(yc, y)
    # a size-1 channel dim: channels_last and contiguous strides differ only on that dim (irrelevant)
    x1, g1 = x[:, :1].contiguous(), g[:, :1].to(memory_format=torch.channels_last)
    assert x1.stride() != g1.stride()
    y1 = langevin_step(x1, g1, 0.01, 0.0, rs, grad_clip=3.0)
    assert_exact(y1, langevin_reference(x1, g1, 0.01, 0.0, grad_clip=3.0), device)
    # in place (out=x), channels_last
    ret = langevin_step(xc, gc, 0.01, 0.0, rs, grad_clip=3.0, out=xc)
    assert ret is xc and torch.equal(xc, y)
    # with noise the element at memory index i gets the noise of counter offset + i, whatever the
    # logical layout: the same buffer viewed as NCHW or as NHWC gives the same output buffer.
    buf_x, buf_g = make_xg((4 * 3 * 8 * 8,), device, seed=6)
    v_nchw = lambda b: b.view(4, 3, 8, 8)  # noqa: E731
    v_nhwc = lambda b: b.view(4, 8, 8, 3).permute(0, 3, 1, 2)  # noqa: E731  (channels_last view)
    ya = langevin_step(v_nchw(buf_x), v_nchw(buf_g), 0.01, 0.1, make_rng_state(9, device), clamp=None)
    yb = langevin_step(v_nhwc(buf_x), v_nhwc(buf_g), 0.01, 0.1, make_rng_state(9, device), clamp=None)
    assert yb.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ya.reshape(-1), yb.permute(0, 2, 3, 1).reshape(-1))


@pytest.mark.parametrize("device", DEVICES)
def test_langevin_noise_statistics_and_reproducibility(device):
    shape = (8, 3, 64, 64)  # 98304 elements
    x, g = make_xg(shape, device, seed=7, gscale=1.0)
    x = x * 0.5
    sigma, alpha = 0.01, 0.005
    rs = make_rng_state(1234, device)
    rs0 = rs.clone()
    y1 = langevin_step(x, g, alpha, sigma, rs, clamp=None)
    assert rs.tolist() == [1234, x.numel()]  # offset advanced on the device by numel
    y2 = langevin_step(x, g, alpha, sigma, rs, clamp=None)
    assert rs.tolist() == [1234, 2 * x.numel()]
    base = langevin_reference(x, g, alpha, 0.0, clamp=None)
    e1 = ((y1 - base) / sigma).double().flatten()
    e2 = ((y2 - base) / sigma).double().flatten()
    # N = 98304: standard errors 0.0032 (mean) and 0.0023 (std); tolerances are ~6 standard errors
    for e in (e1, e2):
        assert abs(e.mean().item()) < 0.02
        assert abs(e.std().item() - 1.0) < 0.015
        assert abs((e.abs() < 1).double().mean().item() - 0.6827) < 0.01  # Gaussian shape
        assert abs(torch.corrcoef(torch.stack([e[1:], e[:-1]]))[0, 1].item()) < 0.02  # neighbours
    # two calls draw different, uncorrelated noise
    assert abs(torch.corrcoef(torch.stack([e1, e2]))[0, 1].item()) < 0.02
    # the noise is exactly the Philox stream at counters offset + memory index, added as in Eq. 3
    rs.copy_(rs0)
    eps = langevin_noise(x.numel(), rs, device).view(shape)
    assert_exact(y1, langevin_reference(x, g, alpha, sigma, noise=eps, clamp=None), device)
    # resetting rng_state reproduces exactly
    rs.copy_(rs0)
    assert torch.equal(langevin_step(x, g, alpha, sigma, rs, clamp=None), y1)
    assert torch.equal(langevin_step(x, g, alpha, sigma, rs, clamp=None), y2)
    # with the default clamp the result still lies in [-1, 1]
    y = langevin_step(x, g, alpha, 1.0, rs)
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_langevin_counter_ranges_are_consecutive_and_disjoint(device):
    rs = make_rng_state(42, device)
    a = langevin_noise(1000, rs, device)
    b = langevin_noise(333, rs, device)
    rs.copy_(make_rng_state(42, device))
    ab = langevin_noise(1333, rs, device)
    assert torch.equal(torch.cat([a, b]), ab)  # call 2 continues exactly where call 1 stopped
    assert not torch.equal(a[:333], b)
    # the high 32 bits of the seed matter (Philox key word 2)
    hi = langevin_noise(1000, make_rng_state(42 + 2**32, device), device)
    assert not torch.equal(hi, a)
    # an offset above 2**32 (64-bit counter) still draws fine and differently
    rs_big = torch.tensor([42, 2**32], dtype=torch.int64, device=device)
    big = langevin_noise(1000, rs_big, device)
    assert not torch.equal(big, a) and abs(big.std().item() - 1) < 0.15


@pytest.mark.parametrize("device", DEVICES)
def test_langevin_launcher_asserts_its_inputs(device, monkeypatch):
    """The launcher checks with asserts (user options are validated once, in fastebm.config.options): each bad
    input stops it before the launch."""
    x, g = make_xg((2, 3, 8, 8), device)
    rs = make_rng_state(0, device)
    bad = [
        lambda: langevin_step(x, g[:1], 0.01, 0.0, rs),  # shapes differ
        lambda: langevin_step(x, g.to(memory_format=torch.channels_last), 0.01, 0.0, rs),  # strides differ
        lambda: langevin_step(x[..., ::2], g[..., ::2], 0.01, 0.0, rs),  # not dense
        lambda: langevin_step(x.double(), g.double(), 0.01, 0.0, rs),  # chain state not fp32
        lambda: langevin_step(x, g.to(torch.int64), 0.01, 0.0, rs),  # gradient not a float type
        lambda: langevin_step(x, g, 0.01, 0.1, rs.to(torch.int32)),  # rng_state dtype
        lambda: langevin_step(x, g, 0.01, 0.1, torch.zeros(3, dtype=torch.int64, device=device)),  # its shape
        lambda: langevin_step(x, g, 0.01, -0.1, rs),  # σ < 0
        lambda: langevin_step(x, g, 0.01, 0.1, rs, grad_clip=0.0),
        lambda: langevin_step(x, g, 0.01, 0.1, rs, clamp=(1.0, -1.0)),
        lambda: langevin_step(x, g, 0.01, 0.1, rs, out=torch.empty_like(x, memory_format=torch.channels_last)),
        lambda: langevin_step(x, g, 0.01, 0.1, rs, block=8),
        lambda: make_rng_state(-1, device),
    ]
    for i, call in enumerate(bad):
        with pytest.raises(AssertionError):
            call()
            pytest.fail(f"bad input {i} was accepted")
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(AssertionError, match="TRITON_INTERPRET=1"):
            langevin_step(x, g, 0.01, 0.1, rs)
    assert rs.tolist() == [0, 0]  # nothing was launched


# ----------------------------------------------------------------------------------------------
# Low-rank-plus-diagonal Gaussian sampler
# ----------------------------------------------------------------------------------------------


def make_params(D, r, device, seed=0, uscale=0.1):
    gen = torch.Generator().manual_seed(seed)
    mean = torch.rand(D, generator=gen) * 0.6 - 0.3
    U = torch.randn(D, r, generator=gen) * uscale
    dsq = torch.rand(D, generator=gen) * 0.2 + 0.05
    return mean.to(device), U.to(device), dsq.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "D,r,n,blocks",
    [
        (300, 5, 37, (None, None)),  # odd sizes, 2 column tiles with the CPU defaults
        (192, 1, 16, (16, 16)),  # r = 1, many small tiles: z must agree across column tiles
        (50, 70, 9, (None, None)),  # r > 64: two K steps
    ],
)
def test_lowrank_equals_torch_formula_on_kernel_noise(device, D, r, n, blocks):
    mean, U, dsq = make_params(D, r, device, uscale=0.3)
    rs = make_rng_state(11, device)
    x, z, eps = lowrank_gaussian_sample(
        mean, U, dsq, n, rs, return_noise=True, block_m=blocks[0], block_n=blocks[1]
    )
    assert x.shape == (n, D) and x.dtype == torch.float32 and x.is_contiguous()
    assert z.shape == (n, r) and eps.shape == (n, D)
    assert rs.tolist() == [11, n * (D + r)]
    f64 = [t.double() for t in (mean, U, dsq, z, eps)]
    # the kernel's GEMM sums in its own order: judged against float64, relative to torch's fp32 GEMM
    result, = agree("p0 samples", x, lowrank_gaussian_reference(mean, U, dsq, z, eps),
                   lowrank_gaussian_reference(*f64))
    assert result.ok, str(result)
    # unclamped too, and the debug outputs do not change the sample
    rs.copy_(make_rng_state(11, device))
    x2 = lowrank_gaussian_sample(mean, U, dsq, n, rs, clamp=None, block_m=blocks[0], block_n=blocks[1])
    result, = agree("p0 samples", x2, lowrank_gaussian_reference(mean, U, dsq, z, eps, clamp=None),
                   lowrank_gaussian_reference(*f64, clamp=None))
    assert result.ok, str(result)
    assert torch.equal(x2.clamp(-1, 1), x)


@pytest.mark.parametrize("device", DEVICES)
def test_lowrank_philox_index_scheme(device):
    """eps[i, j] uses counter offset + i*D + j and z[i, k] counter offset + n*D + i*r + k: the same
    counters drawn through the Langevin kernel (which uses offset + flat index) give the same values."""
    D, r, n = 40, 3, 7
    mean, U, dsq = make_params(D, r, device)
    _, z, eps = lowrank_gaussian_sample(mean, U, dsq, n, make_rng_state(5, device), return_noise=True)
    flat = langevin_noise(n * (D + r), make_rng_state(5, device), device)
    assert torch.equal(eps.flatten(), flat[: n * D])
    assert torch.equal(z.flatten(), flat[n * D :])


@pytest.mark.parametrize("device", DEVICES)
def test_lowrank_moments_match_target_covariance(device):
    D, r, n = 48, 3, 20000
    mean, U, dsq = make_params(D, r, device, seed=1, uscale=0.3)
    x = lowrank_gaussian_sample(mean, U, dsq, n, make_rng_state(2024, device), clamp=None)
    cov_target = (U @ U.T + torch.diag(dsq**2)).double().cpu()
    x = x.double().cpu()
    # sample mean: per-dimension standard error <= sqrt(max var / n) ~ 0.0045
    assert (x.mean(0) - mean.double().cpu()).abs().max() < 0.03
    cov = torch.cov(x.T)
    rel = ((cov - cov_target).norm() / cov_target.norm()).item()
    assert rel < 0.05, rel  # observed 0.008-0.02 for several seeds
    # the target is torch.distributions' own covariance of N(mean, U U^T + diag(d))
    dist = torch.distributions.LowRankMultivariateNormal(mean.cpu(), cov_factor=U.cpu(), cov_diag=dsq.cpu() ** 2)
    # both fp32: r products summed, d² and the diagonal added (r + 2 roundings), terms ≤ the largest variance
    torch.testing.assert_close(dist.covariance_matrix.double(), cov_target,
                               **tolerance(ops=r + 2, magnitude=float(cov_target.diagonal().max())))


@pytest.mark.parametrize("device", DEVICES)
def test_lowrank_moments_of_each_part(device):
    """The two noise terms separately (the full covariance above is dominated by U U^T): a pure
    diagonal (U = 0) and a pure low-rank (diag_sqrt = 0) target."""
    D, r, n = 48, 3, 10000
    mean, U, dsq = make_params(D, r, device, seed=4, uscale=0.3)
    x = lowrank_gaussian_sample(mean, torch.zeros_like(U), dsq, n, make_rng_state(8, device), clamp=None)
    var = x.double().cpu().var(0)
    target = (dsq.double().cpu() ** 2)
    assert ((var - target) / target).abs().max() < 0.08  # se of a variance: sqrt(2/n) = 1.4%
    x = lowrank_gaussian_sample(mean, U, torch.zeros_like(dsq), n, make_rng_state(9, device), clamp=None)
    cov, target = torch.cov(x.double().cpu().T), (U @ U.T).double().cpu()
    assert ((cov - target).norm() / target.norm()).item() < 0.06
    # the samples' fp32 rounding (γ_{r+1} of their terms) adds eigenvalues ~γ² of the largest: far below γ
    assert torch.linalg.matrix_rank(cov, rtol=gamma(r + 1)).item() == r


@pytest.mark.parametrize("device", DEVICES)
def test_lowrank_reproducible_and_clamped(device):
    D, r, n = 192, 4, 33
    mean, U, dsq = make_params(D, r, device, uscale=1.0)  # wide: many values leave [-1, 1]
    rs = make_rng_state(77, device)
    a = lowrank_gaussian_sample(mean, U, dsq, n, rs)
    b = lowrank_gaussian_sample(mean, U, dsq, n, rs)
    assert not torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert 0.05 < (a.abs() == 1).float().mean().item() < 0.95  # the clamp is active
    rs.copy_(make_rng_state(77, device))
    out = torch.empty(n, D, device=device)
    ret = lowrank_gaussian_sample(mean, U, dsq, n, rs, out=out)
    assert ret is out and torch.equal(out, a)
    assert torch.equal(lowrank_gaussian_sample(mean, U, dsq, n, rs), b)
    # custom clamp, and a non-contiguous U (transposed storage) gives the same samples
    rs.copy_(make_rng_state(77, device))
    c = lowrank_gaussian_sample(mean, U.T.contiguous().T, dsq, n, rs, clamp=(-0.5, 0.5))
    assert torch.equal(c, torch.clamp(a, -0.5, 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_lowrank_launcher_asserts_its_inputs(device):
    mean, U, dsq = make_params(48, 3, device)
    rs = make_rng_state(0, device)
    bad = [
        lambda: lowrank_gaussian_sample(mean[:47], U, dsq, 4, rs),
        lambda: lowrank_gaussian_sample(mean, U, dsq[:10], 4, rs),
        lambda: lowrank_gaussian_sample(mean, U[:, :0], dsq, 4, rs),  # r = 0
        lambda: lowrank_gaussian_sample(mean, U.double(), dsq, 4, rs),
        lambda: lowrank_gaussian_sample(mean.to(torch.int64), U, dsq, 4, rs),
        lambda: lowrank_gaussian_sample(mean, U, dsq, -1, rs),
        lambda: lowrank_gaussian_sample(mean, U, dsq, 4, rs.float()),
        lambda: lowrank_gaussian_sample(mean, U, dsq, 4, rs, input_precision="fp16"),
        lambda: lowrank_gaussian_sample(mean, U, dsq, 4, rs, out=torch.empty(48, 4, device=device).T),
        lambda: lowrank_gaussian_sample(mean, U, dsq, 4, rs, block_m=8),
    ]
    for i, call in enumerate(bad):
        with pytest.raises(AssertionError):
            call()
            pytest.fail(f"bad input {i} was accepted")
    assert rs.tolist() == [0, 0]
    assert lowrank_gaussian_sample(mean, U, dsq, 0, rs).shape == (0, 48)


# ----------------------------------------------------------------------------------------------
# GPU only
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("_", [0], ids=[""])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs CUDA (and the compiler, not the interpreter)")
def test_langevin_cuda_graph_capture(_):
    x, g = make_xg((16, 3, 32, 32), "cuda", seed=8, gscale=1.0)
    g = g.bfloat16()
    out = torch.empty_like(x)
    init = make_rng_state(2024, "cuda")
    rs = init.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compile outside the capture
        langevin_step(x, g, 0.01, 0.05, rs, grad_clip=0.5, out=out)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        langevin_step(x, g, 0.01, 0.05, rs, grad_clip=0.5, out=out)
    rs.copy_(init)
    graph.replay()
    y1 = out.clone()
    graph.replay()
    y2 = out.clone()
    torch.cuda.synchronize()
    assert rs.tolist() == [2024, 2 * x.numel()]  # the captured add_ advanced the offset per replay
    assert not torch.equal(y1, y2)
    rs.copy_(init)
    graph.replay()
    assert torch.equal(out, y1)
    # the replay equals an eager call from the same state
    rs.copy_(init)
    assert torch.equal(langevin_step(x, g, 0.01, 0.05, rs, grad_clip=0.5), y1)


@pytest.mark.parametrize("_", [0], ids=[""])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs CUDA (and the compiler, not the interpreter)")
def test_lowrank_cuda_graph_capture_and_tf32(_):
    D, r, n = 3 * 16 * 16, 8, 64
    mean, U, dsq = make_params(D, r, "cuda", uscale=0.3)
    out = torch.empty(n, D, device="cuda")
    init = make_rng_state(5, "cuda")
    rs = init.clone()
    lowrank_gaussian_sample(mean, U, dsq, n, rs, out=out)  # warm-up / compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lowrank_gaussian_sample(mean, U, dsq, n, rs, out=out)
    rs.copy_(init)
    graph.replay()
    y1 = out.clone()
    graph.replay()
    assert not torch.equal(out, y1)
    rs.copy_(init)
    graph.replay()
    assert torch.equal(out, y1)
    # tf32 tensor-core product: same noise, close to the exact fp32 result
    rs.copy_(init)
    x32, z, eps = lowrank_gaussian_sample(mean, U, dsq, n, rs, clamp=None, return_noise=True)
    rs.copy_(init)
    xt = lowrank_gaussian_sample(mean, U, dsq, n, rs, clamp=None, input_precision="tf32")
    # TF32: U and z enter the product with 10 mantissa bits, rounded or truncated (< 2 U_TF32 each, < 4 U_TF32 a
    # product); the r products, μ and √d ε are summed in fp32 by both (γ_{r+2} each)
    terms = z.double().abs() @ U.double().abs().T
    bound = 4 * U_TF32 * terms + 2 * gamma(r + 2) * (mean.double().abs() + terms + (dsq.double() * eps.double()).abs())
    worst = float(((xt.double() - x32.double()).abs() / bound).max())
    assert worst <= 1, f"tf32 product off by {worst:.3g}x its bound"
    f64 = [t.double() for t in (mean, U, dsq, z, eps)]
    result, = agree("p0 samples", x32, lowrank_gaussian_reference(mean, U, dsq, z, eps, clamp=None),
                   lowrank_gaussian_reference(*f64, clamp=None))
    assert result.ok, str(result)


# ----------------------------------------------------------------------------------------------
# Compiled path without a GPU: ahead-of-time compile for sm_90 (catches compile-only errors that the
# interpreter cannot see, and checks that the Langevin update is compiled without FMA contraction)
# ----------------------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
import re, sys
try:
    import triton
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
except Exception as e:  # API of another Triton version
    print("SKIP", repr(e)); sys.exit(0)
from fastebm.kernels.langevin import _langevin_step_kernel
from fastebm.kernels.lowrank_gaussian import _lowrank_gaussian_kernel
tgt = GPUTarget("cuda", 90, 32)
opts = {"enable_fp_fusion": False}
sig = dict(x_ptr="*fp32", g_ptr="*bf16", out_ptr="*fp32", rng_ptr="*i64", n_elements="i64", step_size="fp32",
           noise_std="fp32", grad_clip="fp32", lo="fp32", hi="fp32", HAS_NOISE="constexpr",
           CLIP_GRAD="constexpr", CLAMP_X="constexpr", BLOCK="constexpr")
def compile_(fn, sig, consts):
    try:
        return triton.compile(ASTSource(fn, sig, constexprs=consts), target=tgt, options=opts)
    except Exception as e:
        if "ptxas" in str(e) or "CUDA" in type(e).__name__:
            print("SKIP", repr(e)[:300]); sys.exit(0)
        raise
for noise in (False, True):
    k = compile_(_langevin_step_kernel, sig, dict(HAS_NOISE=noise, CLIP_GRAD=True, CLAMP_X=True, BLOCK=1024))
    assert "cubin" in k.asm
    if not noise:
        assert not re.search(r"\bfma\.", k.asm["ptx"]), "x - a*g was contracted into an FMA"
sig2 = dict(mean_ptr="*fp32", u_ptr="*fp32", dsq_ptr="*fp32", out_ptr="*fp32", z_ptr="*fp32", eps_ptr="*fp32",
            rng_ptr="*i64", n="i32", D="i32", R="constexpr", nD="i64", stride_ud="i32", stride_ur="constexpr",
            lo="fp32", hi="fp32", CLAMP="constexpr", WRITE_NOISE="constexpr", INPUT_PRECISION="constexpr",
            BLOCK_M="constexpr", BLOCK_N="constexpr", BLOCK_K="constexpr")
for prec, rank in (("ieee", 1), ("tf32", 1), ("ieee", 100)):  # R = 100: the K loop runs 2 iterations
    k = compile_(_lowrank_gaussian_kernel, sig2, dict(R=rank, stride_ur=1, CLAMP=True, WRITE_NOISE=True,
                 INPUT_PRECISION=prec, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64 if rank > 1 else 16))
    assert "cubin" in k.asm
print("OK")
"""


def test_kernels_compile_for_sm90_without_gpu():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    if res.stdout.startswith("SKIP"):
        pytest.skip(res.stdout.strip())
    assert res.stdout.strip().endswith("OK"), res.stdout
