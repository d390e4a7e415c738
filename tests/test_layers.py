"""The package's layering and layout: the modules sit in wings, a wing imports only lower wings (and itself), no
module imports another in a circle, every module imports on its own (no import cycle hidden by import order), no
module but the CLI takes the trainer (a dependency through its attributes is one no import shows), and every package
folder (fastebm/ and its wings, the top-level kernels/ installed as fastebm.kernels) is scanned and installed.

Wings, low to high (:data:`WINGS`): kernels → io → data → algorithm, p0 → config → fastpath, evaluation → run →
train, eval (the CLIs). Wings of one rank never import each other.
"""
import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each installed package and its folder in the checkout (pyproject.toml's package-dir; checked below).
FOLDERS = {"fastebm": ROOT / "fastebm", "fastebm.kernels": ROOT / "kernels"}
# Every module of fastebm sits in a wing (a folder) or is a CLI; a module imports its own wing and lower ranks only.
WINGS = {"kernels": 0, "io": 1, "data": 2, "algorithm": 3, "p0": 3, "config": 4, "fastpath": 5, "evaluation": 5,
         "run": 6, "train": 7, "eval": 7}
ONLY_THE_CLI = {"run.trainer", "train", "eval"}  # imported by the training CLI alone (``train``)


def package_modules() -> dict:
    """{name below ``fastebm`` (``"sampler"``, ``"evaluation.fid"``, ``"kernels"`` for a package's
    ``__init__``): (file, is_package)} for every ``.py`` file of every package folder; fastebm's own
    ``__init__`` is left out (it imports no fastebm module)."""
    found = {}
    for package, folder in FOLDERS.items():
        prefix = package.split(".")[1:]
        for path in sorted(folder.rglob("*.py")):
            parts = prefix + list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            if name:
                found[name] = (path, is_package)
    return found


MODULES = package_modules()


def imported_fastebm_modules(name: str) -> set:
    """Names (as in :func:`package_modules`) of the fastebm modules that module ``name`` imports anywhere
    (top level or inside a function), from its syntax tree, with the packages that importing them runs (other
    than its own)."""
    path, is_package = MODULES[name]
    here = name.split(".") if is_package else name.split(".")[:-1]  # the package a relative import starts in
    targets = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 1:
                base = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module == "fastebm" or (node.module or "").startswith("fastebm."):
                base = node.module.split(".")[1:]
            else:
                continue
            targets += [base + [a.name] for a in node.names]  # `from pkg import mod` imports pkg.mod
            targets.append(base)
        elif isinstance(node, ast.Import):
            targets += [a.name.split(".")[1:] for a in node.names if a.name.startswith("fastebm.")]
    found = set()
    for parts in targets:
        for n in range(1, len(parts) + 1):  # the module and every package above it
            if ".".join(parts[:n]) in MODULES:
                found.add(".".join(parts[:n]))
    parts = name.split(".")
    return found - {".".join(parts[:n]) for n in range(1, len(parts) + 1)}  # its own packages have run already


def test_the_scan_sees_every_package_folder():
    assert {"algorithm.sampler", "evaluation", "evaluation.fid", "kernels", "kernels.langevin", "kernels.reference",
            "p0", "p0.base", "p0.gaussian", "run.trainer", "train"} <= set(MODULES)
    assert {"kernels.reference", "kernels"} <= imported_fastebm_modules("algorithm.sampler")
    assert {"p0", "p0.base", "algorithm", "algorithm.loss"} <= imported_fastebm_modules("config.limits")
    assert {"data.imageset", "kernels.reference", "p0.base"} <= imported_fastebm_modules("p0.gaussian")
    assert {"evaluation.fid"} <= imported_fastebm_modules("evaluation.bufferfid")
    assert {"config.options", "evaluation.options"} <= imported_fastebm_modules("evaluation.fid")
    assert "kernels._common" in imported_fastebm_modules("kernels.langevin")


def test_every_module_sits_in_a_wing():
    """``ls fastebm`` shows the wings and the two CLIs, nothing flat beside them."""
    assert {m.split(".")[0] for m in MODULES} == set(WINGS)
    assert all(MODULES[w][1] for w in WINGS if w not in ("train", "eval")), "a wing is a package folder"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_wing_imports_only_lower_wings(name):
    wing = name.split(".")[0]
    bad = sorted(m for m in imported_fastebm_modules(name)
                 if m.split(".")[0] != wing and WINGS[m.split(".")[0]] >= WINGS[wing])
    assert not bad, (f"fastebm.{name} (wing {wing}, rank {WINGS[wing]}) imports {bad}: a wing imports only lower "
                     f"wings (tests/test_layers.py WINGS)")


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"train"}))
def test_only_the_training_cli_imports_the_trainer(name):
    bad = imported_fastebm_modules(name) & ONLY_THE_CLI
    assert not bad, f"fastebm.{name} imports {sorted(bad)}: only the training CLI (fastebm.train) does"


@pytest.mark.parametrize("name", [m for m in MODULES if m.split(".")[0] == "kernels"])
def test_the_kernels_import_no_other_fastebm_module(name):
    bad = {m for m in imported_fastebm_modules(name) if m.split(".")[0] != "kernels"}
    assert not bad, f"fastebm.{name} imports {sorted(bad)}: the kernels import only torch, triton and each other"


def test_no_import_cycle_between_modules():
    graph = {m: imported_fastebm_modules(m) for m in MODULES}
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


TRAINER_NAMES = {"tr", "trainer"}  # what a parameter that takes the whole trainer is called


def trainer_uses(name: str) -> list:
    """Where module ``name`` names the trainer, from its syntax tree: an import of ``Trainer``, an annotation
    that mentions it, a parameter called ``tr`` / ``trainer``, or one such parameter without an annotation
    (``"line N: ..."`` each)."""
    path = MODULES[name][0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and any(a.name == "Trainer" for a in node.names):
            found.append(f"line {node.lineno}: imports Trainer")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
            annotations = [p.annotation for p in params] + [getattr(node, "returns", None)]
            if any(x is not None and "Trainer" in ast.unparse(x) for x in annotations):
                found.append(f"line {node.lineno}: annotates a Trainer")
            for p in params:
                if p.arg in TRAINER_NAMES:
                    found.append(f"line {node.lineno}: parameter {p.arg!r}"
                                 + ("" if p.annotation is not None else " without a type"))
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_below_the_trainer_takes_the_trainer(name):
    """Outside run/trainer.py and train.py no function takes the Trainer: it takes the typed pieces it uses
    (:class:`~fastebm.run.state.RunState`, :class:`~fastebm.run.state.RunParts`, ...). In those two, a parameter
    that holds the trainer says so in its annotation."""
    found = trainer_uses(name)
    if name in ("run.trainer", "train"):
        found = [f for f in found if f.endswith("without a type")]
    assert not found, f"fastebm.{name} takes the trainer: {found}"


def test_the_trainer_scan_finds_what_it_looks_for(tmp_path, monkeypatch):
    """The scan above would see each way of taking the trainer (a scan that finds nothing proves nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from .trainer import Trainer\n\ndef f(tr, x: int) -> None:\n    pass\n\n"
                   "def g(run: 'Trainer'):\n    pass\n\nh = lambda trainer: trainer\n")
    monkeypatch.setitem(MODULES, "bad", (bad, False))
    assert trainer_uses("bad") == ["line 1: imports Trainer", "line 3: parameter 'tr' without a type",
                                   "line 6: annotates a Trainer", "line 9: parameter 'trainer' without a type"]
    assert trainer_uses("train") and not [f for f in trainer_uses("train") if f.endswith("without a type")]


@pytest.mark.slow
def test_every_module_imports_in_isolation():
    """Each module in a fresh interpreter, alone: an import that works only after another one fails here."""
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module('fastebm.' + m)\n"
    for m in MODULES:
        r = subprocess.run([sys.executable, "-c", code, m], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"fastebm.{m} does not import on its own:\n{r.stderr[-2000:]}"


def test_pyproject_installs_every_package_folder():
    """setuptools finds no package by itself under a package-dir mapping: pyproject.toml lists them, and a
    folder with an ``__init__.py`` missing from the list would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")
    with open(ROOT / "pyproject.toml", "rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    assert tool["package-dir"] == {p: str(d.relative_to(ROOT)) for p, d in FOLDERS.items() if p != "fastebm"}
    on_disk = {".".join([package] + list(init.parent.relative_to(folder).parts))
               for package, folder in FOLDERS.items() for init in folder.rglob("__init__.py")}
    assert sorted(tool["packages"]) == sorted(on_disk)


def test_fastebm_kernels_come_from_this_checkout():
    """The kernels/ folder reaches ``fastebm.kernels`` only through an install (the editable one maps it):
    a checkout tested with another checkout's install would test the other one's kernels."""
    import fastebm
    import fastebm.kernels

    got = {"fastebm": Path(fastebm.__file__).resolve().parent, "fastebm.kernels":
           Path(fastebm.kernels.__file__).resolve().parent}
    assert got == {p: d.resolve() for p, d in FOLDERS.items()}, (
        f"{got} are not this checkout's folders: run `pip install -e .` in {ROOT}")


def test_the_top_level_is_the_design_cards():
    assert {"fastebm", "kernels", "bench", "tests", "setup.py", "README.md"} <= set(os.listdir(ROOT))


def test_no_import_path_is_rewritten():
    """Packages resolve through the install alone: no file of the project edits ``sys.path`` or a ``__path__``."""
    files = sorted(ROOT.glob("*.py")) + [f for d in ("fastebm", "kernels", "tests", "bench")
                                         for f in sorted((ROOT / d).rglob("*.py"))]
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                    and node.value.id == "sys":
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} sys.path")
            if isinstance(node, (ast.Assign, ast.AugAssign)) and "__path__" in ast.unparse(node):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} __path__")
    assert len(files) > 100 and not bad, bad


DOTTED = re.compile(r"(?<![\w/.])fastebm(?:\.[A-Za-z_]\w*)+")


def _resolves(name: str) -> bool:
    """``fastebm.a.b.C.d``: the longest importable module prefix, then attributes of it."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            if not hasattr(obj, p):
                return False
            obj = getattr(obj, p)
        return True
    return False


def test_every_dotted_name_in_the_code_and_docs_resolves():
    """A module moved or renamed leaves no stale ``fastebm.x.y`` in a docstring, a comment or a docs page."""
    files = [f for folder in (ROOT / "fastebm", ROOT / "kernels") for f in sorted(folder.rglob("*.py"))]
    files += [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]
    stale = sorted({f"{path.relative_to(ROOT)}:{n} {m}" for path in files
                    for n, line in enumerate(path.read_text().splitlines(), 1)
                    for m in DOTTED.findall(line) if not m.endswith((".py", ".pt")) and not _resolves(m)})
    assert len(files) > 60 and not stale, stale
    assert not _resolves("fastebm.sampler") and _resolves("fastebm.algorithm.sampler.SGLDConfig.of_run")
