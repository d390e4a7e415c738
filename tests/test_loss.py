import pytest
import torch

from fastebm.algorithm.loss import classification_loss, generative_loss
from fastebm.fastpath.numerics import tolerance


def test_eq8_and_reference_forms():
    e_pos = torch.tensor([1.0, -2.0, 0.5])
    e_neg = torch.tensor([3.0, 0.0, 1.5])
    contrast = e_pos.mean() - e_neg.mean()
    eq8 = contrast + 0.5 * ((e_pos ** 2).mean() + (e_neg ** 2).mean())  # (1+4+.25)/3 + (9+0+2.25)/3
    assert torch.equal(generative_loss(e_pos, e_neg, 0.5), eq8)
    # fp32 means, differences and sums: 8 roundings at most of terms ≤ 4 (the contrast is −1/6 − 1.5 = −5/3)
    hand = tolerance(ops=8, magnitude=4)
    torch.testing.assert_close(eq8, torch.tensor(-5 / 3 + 0.5 * (5.25 / 3 + 11.25 / 3)), **hand)
    # mebm train_maebm.py: l2_coeff * (fp ** 2 + fq ** 2), fp and fq the batch means (-1/6 and 1.5 here)
    ref = contrast + 0.5 * (torch.tensor(-0.5 / 3) ** 2 + torch.tensor(1.5) ** 2)
    torch.testing.assert_close(generative_loss(e_pos, e_neg, 0.5, "squared-means"), ref, **hand)
    # mebm train_maebm.py since f7ae2f1: data energies squared per sample (5.25 / 3), negatives' mean squared (1.5²)
    latest = generative_loss(e_pos, e_neg, 0.5, "data-per-sample")
    torch.testing.assert_close(latest, torch.tensor(-5 / 3 + 0.5 * (5.25 / 3 + 2.25)), **hand)
    assert torch.equal(generative_loss(e_pos, e_neg, 0.0), contrast)


def test_gradient_lowers_positive_and_raises_negative_energy():
    e_pos = torch.zeros(4, requires_grad=True)
    e_neg = torch.zeros(4, requires_grad=True)
    generative_loss(e_pos, e_neg, 0.1).backward()
    assert torch.all(e_pos.grad > 0) and torch.all(e_neg.grad < 0)


def test_errors_and_cross_entropy():
    from fastebm.config.options import resolve

    with pytest.raises(ValueError, match="--reg-form"):  # validated once, at the boundary
        resolve({"reg_form": "l1"})
    with pytest.raises(ValueError, match="--l2"):
        resolve({"l2": -1.0})
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    expected = -torch.log_softmax(logits, 1)[[0, 1], [0, 0]].mean()
    assert torch.equal(classification_loss(logits, torch.tensor([0, 0])), expected)  # the same log-softmax, mean of 2
