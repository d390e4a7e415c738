"""Training losses: the contrastive generative loss with L2 energy regularization (paper Eq. 8) and
the classification term of M-JEM / JEM.

Eq. 8 (energies, low = likely; x+ data, x− SGLD negatives):

    L_gen = mean_i(E(x+_i) − E(x−_i)) + λ · mean_i(E(x+_i)² + E(x−_i)²)

Minimizing it lowers the energy of data and raises that of negatives; the L2 term keeps energies near 0.
The authors' code (github sndnyang/mebm) squares differently; each form is offered, named by what it squares:

- ``eq8`` (default): λ · mean_i(E(x+_i)² + E(x−_i)²), the paper's Eq. 8.
- ``squared-means``: λ · ((mean_i E(x+_i))² + (mean_i E(x−_i))²), both batch means squared: ``train_maebm.py`` up to
  20bbf21 and ``train_maebm_celeba.py`` (``l2_coeff * (fp ** 2 + fq ** 2)`` with ``fp``, ``fq`` batch means).
- ``data-per-sample``: λ · (mean_i E(x+_i)² + (mean_i E(x−_i))²), data per sample and negatives by their batch
  mean: ``train_maebm.py`` since f7ae2f1 (2022-07-24), the latest.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REG_FORMS = ("eq8", "squared-means", "data-per-sample")


def generative_loss(e_pos: torch.Tensor, e_neg: torch.Tensor, l2: float, reg_form: str = "eq8") -> torch.Tensor:
    """Contrastive loss with L2 energy regularization (Eq. 8).

    Args:
        e_pos: (N+,) energies of positive samples (data), float32.
        e_neg: (N−,) energies of negative samples (SGLD), float32.
        l2: λ ≥ 0 (0.1 for K ≤ 2, 0.5 for K ≥ 5 in the authors' scripts).
        reg_form: ``"eq8"`` (default), ``"squared-means"`` or ``"data-per-sample"`` (see module docstring).

    Returns:
        scalar float32 loss.

    Both options are validated once by :func:`fastebm.config.limits.validate` (``--l2``, ``--reg-form``).
    """
    contrast = e_pos.mean() - e_neg.mean()
    if l2 == 0:
        return contrast
    if reg_form == "eq8":
        return contrast + l2 * ((e_pos ** 2).mean() + (e_neg ** 2).mean())
    if reg_form == "data-per-sample":
        return contrast + l2 * ((e_pos ** 2).mean() + e_neg.mean() ** 2)
    return contrast + l2 * (e_pos.mean() ** 2 + e_neg.mean() ** 2)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy −log p(y|x): logits (N, C) float, labels (N,) int64 in [0, C) → scalar, at least float32."""
    return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, labels)
