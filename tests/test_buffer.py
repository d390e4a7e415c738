import torch

from fastebm.algorithm.buffer import ReplayBuffer
from fastebm.p0.uniform import UniformInit


class Constant:
    """p0 that returns a constant marker value, to tell fresh samples from buffer samples."""

    def __init__(self, value):
        self.value = value

    def sample(self, n, device=None):
        return torch.full((n, 3, 2, 2), self.value, device=device)


def test_reinitialization_frequency():
    buf = ReplayBuffer(1000, Constant(0.5), reinit_freq=0.05)
    buf.samples.fill_(-0.25)
    torch.manual_seed(0)
    fresh = 0
    for _ in range(200):
        x0, idx = buf.sample(100)
        assert x0.shape == (100, 3, 2, 2) and idx.shape == (100,)
        fresh += int((x0[:, 0, 0, 0] == 0.5).sum())
    rate = fresh / 20000
    assert abs(rate - 0.05) < 0.006  # ≈ 4 standard deviations


def test_update_writes_back_and_skips_non_finite():
    buf = ReplayBuffer(10, UniformInit((3, 2, 2)), reinit_freq=0.0)
    x0, idx = buf.sample(4)
    assert torch.equal(x0, buf.samples[idx])
    new = torch.full((4, 3, 2, 2), 0.123)
    new[1, 0, 0, 0] = float("nan")
    old = buf.samples.clone()
    idx = torch.tensor([0, 1, 2, 3])
    ok = buf.update(idx, new.requires_grad_())
    assert ok.tolist() == [True, False, True, True]
    assert torch.equal(buf.samples[1], old[1]) and torch.all(buf.samples[[0, 2, 3]] == 0.123)
    assert not buf.samples.requires_grad and torch.isfinite(buf.samples).all()


def test_filled_from_p0_and_state_roundtrip():
    buf = ReplayBuffer(2500, Constant(0.75), reinit_freq=0.05)
    assert buf.samples.shape == (2500, 3, 2, 2) and torch.all(buf.samples == 0.75)
    other = ReplayBuffer(2500, Constant(0.0))
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.samples, buf.samples)


def test_repeated_indices_take_the_last_draw():
    buf = ReplayBuffer(4, UniformInit((3, 2, 2)), reinit_freq=0.0)
    idx = torch.tensor([1, 2, 1, 1, 2])
    x = torch.arange(5, dtype=torch.float32)[:, None, None, None].expand(5, 3, 2, 2) / 10
    nan = x.clone()
    nan[4] = float("nan")
    buf.update(idx, x)
    assert torch.all(buf.samples[1] == 0.3) and torch.all(buf.samples[2] == 0.4)
    before = buf.samples[2].clone()
    buf.update(idx, nan)  # the last draw of index 2 is non-finite: index 2 keeps its old value
    assert torch.equal(buf.samples[2], before) and torch.all(buf.samples[1] == 0.3)
