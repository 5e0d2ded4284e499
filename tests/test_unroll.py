"""Rewriting a function body with constants put in (:mod:`retwin.kernels.unroll`): loops over
known ranges unrolled, branches the constants decide taken, known values written as
numbers; the rewritten function computes what the original does, bit for bit."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retwin.kernels.unroll import Unroll, UnrollError


def _tree(fn: Callable[..., Any]) -> ast.FunctionDef:
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


def _rewritten(fn: Callable[..., Any], constants: dict[str, Any], **kw: Any
               ) -> tuple[Callable[..., Any], ast.FunctionDef]:
    """``fn`` rewritten, as a function whose globals are ``constants`` (and numpy)."""
    tree = Unroll(constants, **kw).function(_tree(fn))
    return _function(tree, constants), tree


def _function(tree: ast.FunctionDef, scope: dict[str, Any]) -> Callable[..., Any]:
    """The function of ``tree``, its globals ``scope`` (and numpy)."""
    globals_ = {"np": np, **scope}
    exec(compile(ast.fix_missing_locations(ast.Module([tree], [])), "<rewritten>", "exec"),
         globals_)
    fn = globals_[tree.name]
    assert callable(fn)
    return fn


def _loops(tree: ast.AST) -> list[str]:
    return [ast.unparse(n.target) for n in ast.walk(tree) if isinstance(n, ast.For)]


def gather(x: np.ndarray, out: np.ndarray) -> None:
    """A per-row pass over a CSR structure (``ptr``, ``col``, ``w``, ``skip`` constants):
    the shape of the flow kernel's loops over plants and their inputs."""
    n = ptr.shape[0] - 1  # noqa: F821 (a constant)
    for r in range(n):
        if skip[r]:  # noqa: F821
            continue
        acc = 0.0
        for j in range(ptr[r], ptr[r + 1]):  # noqa: F821
            c = col[j]  # noqa: F821
            if c < 0:
                acc += 1.0
            else:
                acc += x[c] * w[j]  # noqa: F821
                if acc > 10.0:
                    acc = acc / 3.0
        out[r] += acc


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_rewritten_pass_over_a_structure_computes_what_the_original_does(data: Any) -> None:
    rows = data.draw(st.integers(0, 6))
    counts = data.draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows))
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nnz = int(ptr[-1])
    col = np.array(data.draw(st.lists(st.integers(-1, 4), min_size=nnz, max_size=nnz)),
                   dtype=np.int64)
    skip = np.array(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows)),
                    dtype=np.int64)
    floats = st.floats(-50, 50, allow_nan=False)
    w = np.array(data.draw(st.lists(floats, min_size=nnz, max_size=nnz)), dtype=np.float64)
    x = np.array(data.draw(st.lists(floats, min_size=5, max_size=5)), dtype=np.float64)
    constants = {"ptr": ptr, "col": col, "skip": skip}
    fn, tree = _rewritten(gather, constants)
    original = _function(_tree(gather), {**constants, "w": w})
    want, got = np.zeros(rows), np.zeros(rows)
    original(x, want)
    fn.__globals__["w"] = w
    fn(x, got)
    np.testing.assert_array_equal(got, want)  # bit for bit
    assert _loops(tree) == []  # every loop unrolled
    text = ast.unparse(tree)
    assert "ptr[" not in text and "col[" not in text and "skip[" not in text


def jumps(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(4):
        if i == 1:
            continue  # decided by the constants: the copy ends here
        if i == 3:
            break
        out[i] = x[i]
    for k in range(3):
        if x[k] > 0.0:
            continue  # not decided: the loop is kept
        out[k] += 1.0


def test_a_jump_the_constants_decide_ends_its_copy_one_they_do_not_keeps_the_loop() -> None:
    fn, tree = _rewritten(jumps, {})
    assert _loops(tree) == ["k"]
    x = np.array([1.0, -2.0, 3.0, -4.0])
    want, got = np.zeros(4), np.zeros(4)
    jumps(x, want)
    fn(x, got)
    np.testing.assert_array_equal(got, want)
    text = ast.unparse(tree)
    assert "out[0] = x[0]" in text and "out[2] = x[2]" in text
    assert "out[1] = x[1]" not in text and "out[3] = x[3]" not in text


def merged(flag: float, out: np.ndarray) -> None:
    a = 1
    b = 2
    if flag > 0.0:
        a = 1
        b = 3
    out[a] = 1.0  # a is 1 either way: known
    out[b] = 2.0  # b is 2 or 3: not known
    s = 0
    for _ in range(int(flag)):  # a loop over what is not known: kept
        s += 1
    out[s % 4] += 4.0


def test_after_a_branch_not_decided_a_name_is_known_only_if_known_alike_both_ways() -> None:
    fn, tree = _rewritten(merged, {})
    text = ast.unparse(tree)
    assert "out[1] = 1.0" in text and "out[b] = 2.0" in text and "out[s % 4]" in text
    for flag in (-1.0, 1.0, 2.0):
        want, got = np.zeros(4), np.zeros(4)
        merged(flag, want)
        fn(flag, got)
        np.testing.assert_array_equal(got, want)


def nested(x: np.ndarray, out: np.ndarray) -> None:
    for d in range(x.shape[0]):
        for g in range(2):
            out[g] += x[d]
        for lv in range(2):
            for i in range(lv, 3):
                out[i] += x[d] * lv


def test_within_unrolls_the_loops_over_that_name_and_those_inside_them_only() -> None:
    fn, tree = _rewritten(nested, {}, within="lv")
    assert _loops(tree) == ["d", "g"]
    x = np.array([0.5, 1.5, 2.5])
    want, got = np.zeros(3), np.zeros(3)
    nested(x, want)
    fn(x, got)
    np.testing.assert_array_equal(got, want)
    _, everything = _rewritten(nested, {}, shapes={"x": (3,)})
    assert _loops(everything) == []  # x's shape given: its loop too


def folds(out: np.ndarray) -> None:
    a = 0.1 + 0.2  # folded as the compiled code computes it, not "0.3"
    b = 7 // 2 - 7 % 3
    c = n / 3 if n > 0 else -1.0  # noqa: F821
    out[0] = a
    out[1] = b
    out[2] = c
    out[3] = 1.0 / n  # noqa: F821
    out[4] = min(n, 2) * out[0]  # noqa: F821


def test_known_arithmetic_is_written_as_the_value_the_compiled_code_would_compute() -> None:
    fn, tree = _rewritten(folds, {"n": 0})
    text = ast.unparse(tree)
    assert f"a = {0.1 + 0.2!r}" in text and "b = 2" in text and "c = -1.0" in text
    assert "1.0 / n" in text or "1.0 / 0" in text  # a division by zero is left to run
    out = np.zeros(5)
    with pytest.raises(ZeroDivisionError):
        fn(out)
    assert out[0] == 0.1 + 0.2 and out[2] == -1.0


def writes_a_constant(out: np.ndarray) -> None:
    table[0] = 1  # noqa: F821
    out[0] = table[0]  # noqa: F821


def assigns_a_constant(out: np.ndarray) -> None:
    table = out  # noqa: F841


def test_a_body_that_writes_or_assigns_a_constant_is_refused_naming_it() -> None:
    table = np.zeros(2, dtype=np.int64)
    with pytest.raises(UnrollError, match="writes 'table'"):
        Unroll({"table": table}).function(_tree(writes_a_constant))
    with pytest.raises(UnrollError, match="assigns 'table'"):
        Unroll({"table": table}).function(_tree(assigns_a_constant))


def test_each_statement_written_keeps_the_line_of_the_one_it_comes_from() -> None:
    tree = Unroll({}).function(_tree(jumps))
    source_lines = {n.lineno for n in ast.walk(_tree(jumps)) if isinstance(n, ast.stmt)}
    assert {n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt)} <= source_lines


def test_a_loop_that_would_become_too_large_is_kept_whole() -> None:
    """Past ``max_statements`` the outermost unrolled loop is kept as a loop (the loops
    inside it, now over ranges not known, with it): compiling a large chain unrolled would
    take minutes."""
    x = np.array([0.5, 1.5, 2.5])
    want = np.zeros(3)
    nested(x, want)
    for limit, loops in ((1000, ["d", "g"]), (5, ["d", "g", "lv", "i"])):
        fn, tree = _rewritten(nested, {}, within="lv", max_statements=limit)
        assert _loops(tree) == loops
        got = np.zeros(3)
        fn(x, got)
        np.testing.assert_array_equal(got, want)
