"""The package's layering: lower layers never import higher ones, and every module imports on
its own (no import cycle hidden by import order).

Layers, low to high: profiling, checkpoint → data, model, loss → init, init_variants, p0, buffer, sampler →
limits, config, schedule → distributed → recovery, runstate → trainer → train, eval (the CLIs). ``metrics``
sits beside the CLIs' helpers and never imports the trainer either.
"""
import ast
import os
import subprocess
import sys

import pytest

PKG = os.path.join(os.path.dirname(__file__), "..", "fastebm")
HIGH = {"trainer", "train", "eval"}
LOW = ("distributed", "checkpoint", "data", "folders", "model", "init", "init_variants", "p0", "buffer", "sampler",
       "loss", "config", "limits", "schedule", "recovery", "runstate", "profiling", "metrics", "inception", "paper",
       "recipes", "fidstats", "featurefd")
MODULES = sorted(f[:-3] for f in os.listdir(PKG) if f.endswith(".py") and f != "__init__.py")


def imported_fastebm_modules(name: str) -> set:
    """Names of the fastebm modules that ``fastebm/<name>.py`` imports anywhere (top level or inside a
    function), from its syntax tree."""
    with open(os.path.join(PKG, f"{name}.py")) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level >= 1:  # from .x import y / from . import x
                found.update([mod.split(".")[0]] if mod else [a.name for a in node.names])
            elif mod.startswith("fastebm."):
                found.add(mod.split(".")[1])
            elif mod == "fastebm":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fastebm."):
                    found.add(a.name.split(".")[1])
    return found - {name}


@pytest.mark.parametrize("name", [m for m in LOW if m in MODULES])
def test_lower_layers_never_import_the_trainer_or_the_clis(name):
    bad = imported_fastebm_modules(name) & HIGH
    assert not bad, f"fastebm/{name}.py imports {sorted(bad)}: a lower layer must not import a higher one"


def test_no_import_cycle_between_modules():
    graph = {m: imported_fastebm_modules(m) & set(MODULES) for m in MODULES}
    state: dict = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "active", f"import cycle: {' -> '.join(path + [m])}"
        state[m] = "active"
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = "done"

    for m in MODULES:
        visit(m, [])


def test_every_module_imports_in_isolation():
    """Each module in a fresh interpreter, alone: an import that works only after another one fails here."""
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module('fastebm.' + m)\n"
    for m in MODULES:
        r = subprocess.run([sys.executable, "-c", code, m], cwd=os.path.join(PKG, ".."),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"fastebm.{m} does not import on its own:\n{r.stderr[-2000:]}"
