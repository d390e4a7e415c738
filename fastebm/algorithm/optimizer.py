"""θ ← θ − η ∇θ L (Algorithm 1 line 11) as torch's functional SGD / Adam on the optimizer's own state.

``torch.optim.Optimizer.step`` inserts a graph break on purpose (its ``_use_grad`` wrapper), so the training
step calls torch's functional SGD / Adam (``torch.optim.sgd.sgd``, ``torch.optim.adam.adam``: the same update
code ``Optimizer.step`` runs) on the optimizer's state, which :func:`init_optimizer_state` creates up front so
that the first step has the shapes of every later one. Eager and compiled iterations
(:mod:`fastebm.fastpath.compiled_step`) run this one update; the compiled one takes the learning rate as a 0-dim
tensor (a float would be a guard: one recompile per value of the warm-up schedule).
"""
from __future__ import annotations

import torch


def init_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Create the optimizer state of every parameter now (zeros), as the first ``step()`` would.

    SGD: ``momentum_buffer`` = 0 (with dampening 0 the first update buf ← 0.9·0 + g equals torch's
    buf ← g exactly). Adam: ``step`` (0-dim float32; on the parameter's device when the group is
    ``capturable``, else on the CPU as torch keeps it), ``exp_avg``, ``exp_avg_sq`` = 0.
    Existing state (a resumed run) is kept. Raises TypeError for another optimizer class.
    """
    opt.__dict__.pop("_fastebm_static_groups", None)
    if not isinstance(opt, (torch.optim.SGD, torch.optim.Adam)):
        raise TypeError(f"--optimizer: the compiled step supports SGD and Adam, got {type(opt).__name__}")
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state[p]
            if isinstance(opt, torch.optim.SGD):
                if group["momentum"] != 0 and st.get("momentum_buffer") is None:
                    if group["dampening"] != 0:
                        raise ValueError("--momentum: the compiled step needs SGD dampening 0")
                    st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif "step" not in st:
                dev = p.device if group["capturable"] else "cpu"
                st["step"] = torch.zeros((), dtype=torch.float32, device=dev)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    _static_groups(opt)


def optimizer_step(opt: torch.optim.Optimizer, lr: torch.Tensor) -> None:
    """θ ← θ − η ∇θ L (Algorithm 1 line 11) with torch's functional SGD / Adam on ``opt``'s state.

    Args:
        opt: an SGD or Adam optimizer whose state :func:`init_optimizer_state` created.
        lr: 0-dim float32 tensor η on the parameters' device (one group). Eager runs use the group's
            float lr (the same value; no host sync), compiled runs the tensor (no recompile per value).

    Parameters without a gradient are skipped, as ``Optimizer.step`` does. Multi-tensor (``foreach``)
    updates in both modes, so eager and compiled runs do the same arithmetic.
    """
    from torch.optim.adam import adam
    from torch.optim.sgd import sgd

    compiling = torch.compiler.is_compiling()
    with torch.no_grad():
        for i, group in enumerate(_static_groups(opt)):
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            state = [opt.state[p] for p in params]
            eta = lr if compiling else opt.param_groups[i]["lr"]
            if isinstance(opt, torch.optim.SGD):
                sgd(params, grads, [s.get("momentum_buffer") for s in state], foreach=True,
                    weight_decay=group["weight_decay"], momentum=group["momentum"], lr=eta,
                    dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
            else:
                beta1, beta2 = group["betas"]
                adam(params, grads, [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state], [],
                     [s["step"] for s in state], foreach=True,
                     capturable=compiling or group["capturable"], amsgrad=False, beta1=beta1, beta2=beta2,
                     lr=eta, weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                     decoupled_weight_decay=group["decoupled_weight_decay"])


_HYPER = ("params", "weight_decay", "momentum", "dampening", "nesterov", "maximize", "betas", "capturable",
          "eps", "decoupled_weight_decay")


def _static_groups(opt: torch.optim.Optimizer) -> list[dict]:
    """The optimizer's parameter groups without ``lr`` (a copy made once): what the compiled step reads.
    Reading ``opt.param_groups`` itself inside the graph would guard on every value of the group, the
    learning rate included, and recompile at each new lr."""
    groups = getattr(opt, "_fastebm_static_groups", None)
    if groups is None:
        groups = [{k: g.get(k, False) for k in _HYPER if k in g or k == "decoupled_weight_decay"}
                  for g in opt.param_groups]
        opt._fastebm_static_groups = groups
    return groups
