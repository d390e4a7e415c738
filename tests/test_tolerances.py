"""No literal tolerance on a float32 comparison in tests/ or bench/.

A tolerance that was right on the machine at hand failed on the next one three times (AVX2, then AVX-512). A
comparison is exact (``torch.equal``, ``rtol=0, atol=0``), float64-level, judged against float64 by
:func:`fastebm.fastpath.numerics.agree`, or takes its tolerance from :mod:`fastebm.fastpath.numerics` (a stated bound).
This module scans tests/*.py and bench/*.py (their AST) and fails, naming file:line, on a comparison call
(``assert_close``, ``allclose``, ``isclose``, ``assert_allclose``, ``approx``)

- with a literal tolerance (``rtol`` / ``atol`` / ``rel`` / ``abs``, by keyword or position, a constant or a
  constant expression) in [1e-9, 0.5], or
- relying on a default tolerance that is not 0 (all but ``approx``, which compares Python floats to 1e-6),

unless the call's line, one of its lines, or the line above says ``# not fp32 rounding: <why>`` (a FLOP count,
a figure printed in the paper to two decimals).
"""
from __future__ import annotations

import ast
import operator
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CALLS = {"assert_close", "allclose", "isclose", "assert_allclose", "approx"}
CANONICAL = {"rtol": "rtol", "rel": "rtol", "rel_tol": "rtol", "atol": "atol", "abs": "atol", "abs_tol": "atol"}
POSITIONAL = {"approx": ("rtol", "atol"), "assert_allclose": ("rtol", "atol"), "allclose": ("rtol", "atol"),
              "isclose": ("rtol", "atol")}  # after (actual, expected); torch.testing.assert_close: keywords only
DEFAULTED = {"assert_close": {"rtol", "atol"}, "allclose": {"rtol", "atol"}, "isclose": {"rtol", "atol"},
             "assert_allclose": {"rtol"}}  # tolerances whose default is not 0 (NumPy's assert_allclose: atol=0)
LITERAL = (1e-9, 0.5)
EXEMPT = re.compile(r"#\s*not fp32 rounding:\s*\S")
MODULES = {"torch", "np", "numpy", "math", "pytest"}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _constant(node: ast.AST):
    """The value of a numeric constant expression (``1e-4``, ``-2 ** -20``, ``1 / 1000``), else None."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        v = _constant(node.operand)
        return None if v is None else _OPS[type(node.op)](v)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _constant(node.left), _constant(node.right)
        try:
            return None if a is None or b is None else _OPS[type(node.op)](a, b)
        except (ArithmeticError, ValueError):
            return None
    return None


def _literals(node: ast.AST):
    """The largest constant sub-expressions of a tolerance expression, not looking into calls
    (``tolerance(ops=3)`` is derived; ``4e-5 * scale`` holds the literal 4e-5)."""
    value = _constant(node)
    if value is not None:
        yield value
    elif not isinstance(node, ast.Call):
        for child in ast.iter_child_nodes(node):
            yield from _literals(child)


def _name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _is_method(call: ast.Call) -> bool:
    """``x.allclose(y, ...)`` (a tensor's method: one positional argument fewer) rather than a function."""
    f = call.func
    if not isinstance(f, ast.Attribute):
        return False
    owner = f.value
    return not ((isinstance(owner, ast.Name) and owner.id in MODULES)
                or (isinstance(owner, ast.Attribute) and owner.attr == "testing"))


def _tolerances(call: ast.Call, name: str) -> tuple[dict, bool]:
    """The call's tolerance arguments (canonical name → expression) and whether it passes ``**kwargs``."""
    given, star = {}, False
    for kw in call.keywords:
        if kw.arg is None:
            star = True
        elif kw.arg in CANONICAL:
            given[CANONICAL[kw.arg]] = kw.value
    first = 1 if name == "approx" else 2
    first -= _is_method(call)
    for tol, arg in zip(POSITIONAL.get(name, ()), call.args[first:]):
        given[tol] = arg
    return given, star


def violations(source: str, filename: str) -> list[str]:
    """``file:line: why`` for each comparison call of ``source`` with a literal or defaulted tolerance."""
    lines = source.splitlines()
    out = []
    for call in ast.walk(ast.parse(source, filename)):
        if not isinstance(call, ast.Call) or _name(call) not in CALLS:
            continue
        name = _name(call)
        span = lines[max(call.lineno - 2, 0):call.end_lineno]
        if any(EXEMPT.search(line) for line in span):
            continue
        given, star = _tolerances(call, name)
        why = [f"{tol}={ast.unparse(expr)} is a literal" for tol, expr in given.items()
               if any(LITERAL[0] <= abs(v) <= LITERAL[1] for v in _literals(expr))]
        missing = sorted(DEFAULTED.get(name, set()) - set(given))
        if missing and not star:
            why.append(f"{name} relies on its default {' and '.join(missing)}")
        if why:
            out.append(f"{filename}:{call.lineno}: {'; '.join(why)}")
    return out


def _files() -> list[pathlib.Path]:
    return sorted(ROOT.glob("tests/*.py")) + sorted(ROOT.glob("bench/*.py"))


def test_no_literal_tolerance_on_a_comparison_in_tests_or_bench():
    files = _files()
    found = [v for f in files for v in violations(f.read_text(), str(f.relative_to(ROOT)))]
    assert not found, ("a literal or default tolerance on a comparison: take it from fastebm.fastpath.numerics "
                       "(tolerance, agree), compare exactly, or say '# not fp32 rounding: <why>'\n" + "\n".join(found))
    trees = [ast.parse(f.read_text()) for f in files]
    calls = sum(isinstance(n, ast.Call) and _name(n) in CALLS for t in trees for n in ast.walk(t))
    assert len(files) >= 30 and calls >= 50, (len(files), calls)  # the scan sees the suite


# tolerances in decimal notation here: this file is scanned by grep for literal ones too
@pytest.mark.parametrize("snippet,why", [
    ("torch.testing.assert_close(a, b, rtol=0.0001, atol=0.00001)", ["rtol=", "atol=", "literal"]),
    ("assert x == pytest.approx(y, rel=0.001)", ["rtol=0.001 is a literal"]),
    ("assert y == approx(x, 0.01)", ["rtol=0.01 is a literal"]),
    ("np.testing.assert_allclose(a, b, 0.00001)", ["rtol=", "literal"]),
    ("assert np.isclose(a, b, rtol=2 ** -20, atol=0)", ["rtol=2 ** (-20) is a literal"]),
    ("assert a.allclose(b, 0, 0.000003 * s)", ["atol=", "* s is a literal"]),
    ("assert torch.allclose(a, b)", ["allclose relies on its default atol and rtol"]),
    ("torch.testing.assert_close(a, b)", ["assert_close relies on its default atol and rtol"]),
    ("np.testing.assert_allclose(a, b, atol=0)", ["assert_allclose relies on its default rtol"]),
    ("assert math.isclose(a, b, abs_tol=0)", ["isclose relies on its default rtol"]),
    ("assert torch.allclose(a, b)  # not fp32 rounding:", ["allclose relies on its default"]),  # no reason given
])
def test_the_scan_finds_each_kind(snippet, why):
    [found] = violations(f"x = 1\n{snippet}\n", "t.py")
    assert found.startswith("t.py:2: ") and all(w in found for w in why), found


@pytest.mark.parametrize("snippet", [
    "torch.testing.assert_close(a, b, rtol=0, atol=0)",
    "torch.testing.assert_close(a, b, **tolerance(ops=3, magnitude=2))",
    "np.testing.assert_allclose(a, b, rtol=1e-12)",
    "assert x == pytest.approx(y)",
    "assert x == pytest.approx(0, abs=1e-12 * float(np.trace(s)))",
    "assert torch.allclose(a, b, rtol=tol, atol=tol * m)",
    "assert torch.allclose(a, b)  # not fp32 rounding: the two chains differ by O(1)",
    "# not fp32 rounding: FLOPs counted two ways\nassert n == pytest.approx(m, rel=0.1)",
    "torch.testing.assert_close(\n    a, b, rtol=0.001, atol=0)  # not fp32 rounding: printed to 3 digits",
    "assert torch.equal(a, b) and abs(x - 0.05) < 0.006",
])
def test_the_scan_allows(snippet):
    assert violations(f"x = 1\n{snippet}\n", "t.py") == []
