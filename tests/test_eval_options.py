"""EvalOptions: every value checked once, errors that name the value (task names: by the runner, which holds the
one list of tasks); the CLI turns them into one line naming the flag, before any checkpoint is read."""
import ast
import dataclasses
import math
import re
from pathlib import Path

import pytest

from fastebm import evaluation
from fastebm.config.limits import flag
from fastebm.eval import build_parser, main, options_from_args
from fastebm.evaluation import TASK_FUNCTIONS, TASKS, EvalError, EvalOptions, check_task_names, evaluate, run_tasks


@pytest.mark.parametrize("field,value,match", [
    ("batch_size", 0, "batch_size: expected an integer >= 1, got 0"),
    ("n_samples", -3, "n_samples: expected an integer >= 1, got -3"),
    ("splits", 2.5, "splits: expected an integer >= 1, got 2.5"),
    ("threads", True, "threads: expected an integer >= 1, got True"),
    ("perplexity", math.nan, "perplexity: expected a finite number, got nan"),
    ("perplexity", 0.0, "perplexity: expected a value > 0, got 0.0"),
    ("keep_ratio", math.inf, "keep_ratio: expected a finite number, got inf"),
    ("keep_ratio", -0.5, r"keep_ratio: expected a ratio in \(0, 1\] or a count > 1, got -0.5"),
    ("seed", 2 ** 32, r"seed: expected an integer in \[0, 2\*\*32\), got 4294967296"),
    ("source", "fresh", "source: expected one of \\['buffer', 'chains'\\], got 'fresh'"),
    ("dataset", "mnist", "dataset: expected one of .*got 'mnist'"),
    ("ood_dataset", "svhn", "ood_dataset: expected one of .*got 'svhn'"),
    ("fid_split", "val", "fid_split: expected one of \\['train', 'test', 'train\\+test'\\], got 'val'"),
    ("device", "tpu", "device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
])
def test_a_bad_value_is_a_value_error_naming_the_field_and_the_value(field, value, match):
    with pytest.raises(ValueError, match=f"^{match}") as e:
        EvalOptions(**{field: value})
    assert isinstance(e.value, EvalError) and e.value.option == field
    assert "--" not in str(e.value)  # the library speaks of values, not of command-line flags


def test_combinations_are_checked_too():
    with pytest.raises(EvalError, match="^keep_ratio: .* needs source 'buffer'"):
        EvalOptions(keep_ratio=0.1, source="chains")
    with pytest.raises(EvalError, match="^random_inception: .*reads no weights file"):
        EvalOptions(random_inception=True, inception_weights="w.pth")


def test_good_values_pass_and_the_options_are_frozen():
    opts = EvalOptions(tasks=("acc", "fid", "acc"), keep_ratio=2, n_samples=10, device="cuda:1")
    assert opts.tasks == ("acc", "fid")  # duplicates run once
    assert EvalOptions(tasks="acc").tasks == ("acc",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.batch_size = 3
    with pytest.raises(EvalError, match="^batch_size"):  # a changed copy is checked again
        dataclasses.replace(opts, batch_size=0)


def test_every_cli_option_is_a_field_with_the_same_default():
    parser = build_parser()
    fields = {f.name: f.default for f in dataclasses.fields(EvalOptions)}
    dests = {a.dest: a.default for a in parser._actions if a.dest not in ("help", "version", "ckpt", "task")}
    assert set(dests) | {"tasks"} == set(fields)
    assert {k: v for k, v in dests.items()} == {k: v for k, v in fields.items() if k != "tasks"}
    opts = options_from_args(parser.parse_args(["--ckpt", "x.pt", "--task", "acc,ece", "logpx"]))
    assert opts == EvalOptions(tasks=("acc", "ece", "logpx")) and set(opts.tasks) <= set(TASKS)


@pytest.mark.parametrize("argv,field", [
    (["--batch-size", "0"], "batch_size"),
    (["--keep-ratio", "0.5", "--source", "chains"], "keep_ratio"),
    (["--perplexity", "-1"], "perplexity"),
    (["--device", "tpu"], "device"),
    (["--dataset", "mnist"], "dataset"),
    (["--ood-dataset", "svhn"], "ood_dataset"),
    (["--n-show", "0"], "n_show"),
])
def test_the_cli_turns_a_bad_value_into_one_line_naming_the_flag(argv, field, tmp_path, capsys):
    missing = str(tmp_path / "none.pt")  # rejected before the checkpoint is looked at
    with pytest.raises(SystemExit) as e:
        main(["--ckpt", missing, "--task", "acc", *argv])
    assert e.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m fastebm.eval: error: {flag(field)}: "), err
    with pytest.raises(EvalError) as lib:  # the same words as the library's, with the flag for the field
        options_from_args(build_parser().parse_args(["--ckpt", missing, "--task", "acc", *argv]))
    assert err[0].endswith(lib.value.detail) and captured.out == ""


def test_an_unknown_task_names_the_task_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--ckpt", str(tmp_path / "none.pt"), "--task", "acc,nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "error: --task: unknown task(s) ['nope']" in err[0]


def test_an_unknown_task_is_one_error_naming_tasks_before_any_work():
    expected = "^" + re.escape(f"tasks: unknown task(s) ['nope']; expected some of {list(TASKS)}") + "$"
    for check in (lambda: check_task_names(("acc", "nope")),
                  lambda: evaluate([], EvalOptions(tasks=("acc", "nope"))),  # no checkpoint looked at
                  lambda: run_tasks(None, EvalOptions(tasks=("acc", "nope")))):
        with pytest.raises(EvalError, match=expected) as e:
            check()
        assert e.value.option == "tasks"
    check_task_names(TASKS)  # every registered name passes


def test_the_task_list_is_written_once():
    """TASK_FUNCTIONS (evaluation/runner.py) is the one list: every name has its task_<name> function, the
    CLI offers exactly these names, and no other literal in the package names most of them."""
    assert TASKS == tuple(TASK_FUNCTIONS) and len(TASKS) == len(set(TASKS))
    for name, function in TASK_FUNCTIONS.items():
        assert callable(function) and function.__name__ == "task_" + name.replace("-", "_"), name
        assert getattr(evaluation, function.__name__) is function  # exported under its name
    task_help = next(a.help for a in build_parser()._actions if a.dest == "task")
    assert task_help == f"one or several of {', '.join(TASKS)} (or comma-separated)"
    package = Path(evaluation.__file__).resolve().parent.parent
    lists = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            items = (node.keys if isinstance(node, ast.Dict) else node.elts
                     if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [])
            names = {i.value for i in items if isinstance(i, ast.Constant) and i.value in TASK_FUNCTIONS}
            if len(names) > len(TASKS) // 2:
                lists.append((path.relative_to(package).as_posix(), node.lineno))
    assert [p for p, _ in lists] == ["evaluation/runner.py"], lists


def test_a_paper_configuration_is_reported_beside_its_row():
    import types

    from fastebm.config.options import resolve
    from fastebm.eval import paper_row

    run = types.SimpleNamespace(cfg=resolve(dict(dataset="cifar10", model="mjem", k=5)))
    got = paper_row(run, {"acc": {"accuracy": 0.9}, "fid": {"fid": 20.0, "meaningless": "random Inception"}})
    assert got["row"] == "t3-mjem-cifar10-k5" and got["acc"] == 0.931
    assert got["beside"] == "paper Table 3 M-JEM CIFAR-10 K=5: acc 0.931 (ours 0.900), IS 8.71, FID 12.1"
    assert paper_row(types.SimpleNamespace(cfg=resolve(dict(dataset="digits"))), {}) is None
