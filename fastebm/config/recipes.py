"""The recipes of the models beside M-EBM / M-JEM: the Config values each ``--model`` sets on top of the defaults
and the dataset preset (:func:`fastebm.config.options.resolve`), every value with its source. A value equal to the
Config default is named in a comment, not repeated (a dataset preset such as the digits demo keeps its own).

- ``jem``: the JEM baseline as JEM's code (github wgrathwohl/JEM ``train_wrn_ebm.py`` @3d01161 defaults and its
  README's CIFAR-10 command).
- ``jempp``: JEM++ (Yang & Ji, ICCV 2021) as its code (github sndnyang/JEMPP ``train_jempp.py`` @fba6ba5 defaults
  and ``scripts/jempp_cifar10.sh``): E(x) = −logsumexp of the logits with BatchNorm, the per-class Gaussian p0 and
  PYLD, its proximal Langevin sampler (:class:`fastebm.algorithm.sampler.SGLDConfig` ``inner_steps``).
- ``lse-jem``: the M-JEM recipe with E(x) = −logsumexp(logits) (paper Fig. 2b / 4a).
"""
from __future__ import annotations

from types import MappingProxyType

# models whose two batches share --batch_size and whose epoch is a pass of the p(x) loader after a 5,000-image
# validation hold-out (JEM get_data, JEMPP utils.py get_data: --n_valid 5000, both loaders --batch_size)
SHARED_BATCH = ("jem", "jempp")

RECIPES = MappingProxyType({
    "jem": MappingProxyType(dict(
        k=20,  # JEM train_wrn_ebm.py --n_steps 20
        p0="uniform",  # JEM init_random: uniform(-1, 1)
        l2=0.0,  # JEM: no L2 energy term
        noise=0.01,  # JEM --sgld_std 1e-2
        grad_clip=None,  # JEM sample_q: x += sgld_lr * f_prime + ... (no clamp)
        clamp_x=False,  # JEM sample_q: x is never clamped
        data_noise=0.03,  # JEM README --sigma .03 (transform_train adds it to both loaders)
        augment_px=True,  # JEM get_data: dset_train and dset_train_labeled both use transform_train
        norm="none",  # JEM --norm None
        optimizer="adam",  # JEM README --optimizer adam
        lr=1e-4,  # JEM README --lr .0001
        weight_decay=0.0,  # JEM --weight_decay 0.0
        decay_epochs=[160, 180],  # JEM --decay_epochs 160 180
        decay_rate=0.3,  # JEM --decay_rate .3
        max_loss=1e8,  # JEM: L.abs().item() > 1e8 stops the run
        # cls_batch_size = batch_size (SHARED_BATCH), set in resolve() unless given. Config defaults: step_size 1
        # (JEM --sgld_lr 1.0), batch_size 64 (--batch_size 64), warmup_iters 1000 (README --warmup_iters 1000),
        # epochs 200 (--n_epochs 200), buffer_size 10,000 and reinit_freq 0.05 (--buffer_size 10000 --reinit_freq
        # .05), depth 28, width 10 (README --depth 28 --width 10).
    )),
    "jempp": MappingProxyType(dict(
        k=10,  # JEMPP scripts/jempp_cifar10.sh --n_steps=10 (README: the model jempp_M10.pt; the paper's "M")
        sgld_inner_steps=5,  # --in_steps=5: PYLD updates per step from the first layer's Hamiltonian
        step_size=0.2,  # --pyld_lr=0.2 per inner update; --sgld_lr 0 (default): no separate SGLD update
        noise=0.0,  # train_jempp.py --sgld_std 0 (default)
        l2=0.0,  # JEM++: no L2 energy term
        p0="gaussian-mixture",  # init_from_centers / init_random: one Gaussian per class, a class drawn uniformly
        data_noise=0.03,  # script --sigma=.03 (transform_train adds it to both loaders)
        augment_px=True,  # get_data: dset_train and dset_train_labeled both use transform_train
        lr=0.1,  # script --lr=.1 (also on CIFAR-100, whose JEM++ recipe the paper does not give)
        weight_decay=4e-4,  # train_jempp.py --weight_decay 4e-4 (the script keeps it)
        epochs=150,  # script --n_epochs=150
        decay_epochs=[50, 100, 125],  # script --decay_epochs 50 100 125
        max_loss=1e8,  # train_jempp.py: L.abs().item() > 1e8 stops the run
        # Config defaults: grad_clip 1 (--eps 1: clamp(eta, -eps, eps)), clamp_x (clamp(tmp_inp, -1, 1) after each
        # inner update), optimizer sgd with momentum 0.9 (--optimizer=sgd, SGD(momentum=.9)), decay_rate 0.2
        # (--decay_rate .2), warmup_iters 1000 (--warmup_iters=1000), batch_size 64, buffer_size 10,000, reinit_freq
        # 0.05, depth 28, width 10, norm batch (--norm batch); cls_batch_size = batch_size (SHARED_BATCH).
    )),
    "lse-jem": MappingProxyType(dict(  # paper Fig. 2b / 4a: the M-JEM recipe with E(x) = -logsumexp(logits)
        l2=0.0,  # fastebm's choice: an L2 penalty on -logsumexp fights the classifier (docs/recipes.md, Section 4.2)
    )),
})
