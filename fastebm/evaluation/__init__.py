"""Evaluation of trained checkpoints as a library: the M-EBM paper's measurements and figures.

``python -m fastebm.eval`` (:mod:`fastebm.eval`) is the command line on top of it. In a script::

    from fastebm.evaluation import EvalOptions, load_run, task_fid

    run = load_run("RUN/ckpt.pt")
    record = task_fid(run, EvalOptions(n_samples=10_000, source="chains", out="eval"))
    print(record["fid"])

Modules: ``options`` (:class:`EvalOptions`, :class:`EvalError`), ``run`` (:class:`Run`,
:func:`load_run`, what each task needs, the network passes and SGLD chains), ``fid`` (FID / IS and the cache of
real statistics), ``featurefd`` (the offline feature-FD, no Inception weights), ``tasks`` (every other task),
``records`` (the JSON and .npz files), ``runner`` (:data:`TASK_FUNCTIONS`, the one list of the tasks by name,
and running several tasks and checkpoints). Beneath them: ``metrics`` (FID, IS, ECE, AUROC from features and
logits), ``inception`` (pytorch-fid's Inception and its weights), ``fidstats`` (streamed statistics of a large real
set), ``featurenet`` (the small CNN of feature-FD), ``plots`` (the figures); and ``bufferfid``, the in-training
FID / IS of the replay buffer, which the training loop calls.
"""
from .curves import read_curves, task_curves
from .featurefd import task_feature_fd
from .fid import fid_and_is, filter_by_confidence, split_fingerprint, task_fid, task_is
from .options import EvalError, EvalOptions
from .run import Run, check_task, load_run, sample_chains
from .runner import TASK_FUNCTIONS, TASKS, check_task_names, evaluate, run_tasks
from .tasks import task_acc, task_ece, task_energy, task_extremes, task_gen, task_logpx, task_ood, task_p0, task_tsne

__all__ = ["TASKS", "TASK_FUNCTIONS", "EvalError", "EvalOptions", "Run", "check_task", "check_task_names", "evaluate",
           "fid_and_is", "filter_by_confidence", "load_run", "run_tasks", "sample_chains", "split_fingerprint",
           "task_acc", "task_ece", "task_energy", "task_extremes", "task_feature_fd", "task_fid", "task_gen", "task_is",
           "task_logpx", "task_ood", "task_p0", "task_tsne", "task_curves", "read_curves"]
