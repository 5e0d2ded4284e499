"""A kernel's body with a chain's structure put in: its loops over plants, inputs, outputs,
levels and pools unrolled, the branches the structure decides taken, every index it fixes
written as a number.

The flow kernel (:func:`retwin.kernels.flow._flow`) reads the chain's shape from integer
arrays: which plants a level holds, which pools a plant draws on, whether it is alone at
them. Compiled as it stands, each plant-day goes through those loads, loop bounds and
branches. Given the arrays as constants, :class:`Unroll` rewrites the body (its syntax
tree) so that what they decide is decided once, before it is compiled:

- a name assigned a value that follows from the constants alone (``p = order[i]``) is
  known from there on; an expression of known values is replaced by its value;
- ``for x in range(a, b)`` with ``a`` and ``b`` known is unrolled: its body is written once
  for each ``x``, with ``x`` known in it (a ``break`` or ``continue`` the constants decide
  ends the copy; one they do not decide keeps the loop as it is);
- ``if`` and ``... if ... else ...`` on a known test keep the branch taken only.

Nothing else changes: every statement the constants do not decide is kept, in its order,
with its operations in theirs (a known value replaces only an expression whose operands are
all known; arithmetic on floats is done as the compiled code would, IEEE double precision),
so the rewritten body computes the same numbers, bit for bit. Each statement written keeps
the line number of the one it comes from.

It knows a name from the constants it is given, from ``x.shape`` of an array whose shape it
is given (``shapes``), and from assignments it has followed. Where control flow joins (after
an ``if`` whose test is not known, after a loop kept as a loop) a name is known only if it is
known, with the same value, on every way there.
"""

from __future__ import annotations

import ast
import copy
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["Unroll", "UnrollError"]


class UnrollError(ValueError):
    """The body does something the rewriting does not handle (it is then not rewritten)."""


class _TooLarge(Exception):
    """The outermost loop being unrolled would become more than ``max_statements``."""


class _KeepLoop(Exception):
    """A ``break`` or ``continue`` of the loop being unrolled depends on what is not known:
    the loop is kept as a loop."""


_UNKNOWN: Any = object()
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_INT64 = 2 ** 63


def _scalar(v: Any) -> Any:
    """``v`` as a Python scalar when it is a NumPy one (an array's element)."""
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _is_scalar(v: Any) -> bool:
    return type(v) in (bool, int, float)


def _literal(v: Any) -> bool:
    """Whether ``v`` can be written as a literal of the same type and value."""
    if type(v) in (bool, int):
        return -_INT64 <= v < _INT64
    return type(v) is float and math.isfinite(v)


def _same(a: Any, b: Any) -> bool:
    """The same known value (arrays: the same array)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is b
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def assigned_names(stmts: list[ast.stmt]) -> set[str]:
    """Every name ``stmts`` assign (loop targets and nested blocks included)."""
    return {n.id for s in stmts for n in ast.walk(s)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


class Unroll:
    """Rewrites a function body with ``constants`` (names bound to arrays or scalars that do
    not change while it runs; an array is never written by the body) put in.

    ``shapes`` gives the shapes of other arrays (``x.shape``), ``functions`` pure functions
    the body calls that may be evaluated when every argument is known (their results are
    known). ``within`` names the target of the loops that are unrolled, with the loops inside
    them (the code where the time goes; the rest is kept as it is, constants put in):
    ``None``, every loop. ``max_trips`` is the most iterations a loop is unrolled to (longer
    ones are kept as loops); ``max_statements`` the most statements an outermost unrolled
    loop may become, those inside it counted (past it, it is kept as a loop: compiling the
    code of a large chain unrolled would take minutes).
    """

    def __init__(self, constants: Mapping[str, Any], *,
                 shapes: Mapping[str, tuple[int, ...]] | None = None,
                 functions: Mapping[str, Callable[..., Any]] | None = None,
                 within: str | None = None, max_trips: int = 256,
                 max_statements: int = 10_000) -> None:
        self.constants = dict(constants)
        self.shapes = dict(shapes or {})
        self.functions = dict(functions or {})
        self.within = within
        self.max_trips = max_trips
        self.max_statements = max_statements
        self._inside = within is None  # (inside a loop over ``within``)
        self._written = 0  # statements the outermost loop being unrolled has become
        self._unrolling = 0  # loops being unrolled, one inside another

    # -- the body ---------------------------------------------------------------------------

    def function(self, fn: ast.FunctionDef) -> ast.FunctionDef:
        """``fn`` with its body rewritten (its parameters are not known)."""
        env = {k: v for k, v in self.constants.items()}
        for a in fn.args.args:
            if a.arg in env:
                raise UnrollError(f"parameter {a.arg!r} is also given as a constant")
        body, _ = self._block(fn.body, env, unrolling=False)
        out = copy.copy(fn)
        out.body = body or [ast.copy_location(ast.Pass(), fn)]
        out.decorator_list = []
        return out

    def _block(self, stmts: list[ast.stmt], env: dict[str, Any], *, unrolling: bool
               ) -> tuple[list[ast.stmt], str | None]:
        """The statements ``stmts`` become, and ``"break"`` or ``"continue"`` when they end
        in one the constants decide (of the loop being unrolled, ``unrolling``)."""
        out: list[ast.stmt] = []
        for s in stmts:
            if isinstance(s, ast.Break | ast.Continue):
                jump = "break" if isinstance(s, ast.Break) else "continue"
                if unrolling:
                    return out, jump
                out.append(s)
                return out, None  # (what follows it in this block never runs)
            written, ended = self._stmt(s, env, unrolling=unrolling)
            out += written
            if ended is not None:
                return out, ended
        return out, None

    def _stmt(self, s: ast.stmt, env: dict[str, Any], *, unrolling: bool
              ) -> tuple[list[ast.stmt], str | None]:
        if isinstance(s, ast.Assign):
            return self._assign(s, env), None
        if isinstance(s, ast.AugAssign):
            return self._augassign(s, env), None
        if isinstance(s, ast.If):
            return self._if(s, env, unrolling=unrolling)
        if isinstance(s, ast.For):
            return self._for(s, env), None
        if isinstance(s, ast.While):
            return [self._loop(s, env)], None
        if isinstance(s, ast.Expr):
            if isinstance(s.value, ast.Constant):  # a docstring
                return [], None
            return [self._with(s, value=self.expr(s.value, env))], None
        if isinstance(s, ast.Pass):
            return [], None
        if isinstance(s, ast.Return):
            value = None if s.value is None else self.expr(s.value, env)
            return [self._with(s, value=value)], None
        raise UnrollError(f"line {s.lineno}: a {type(s).__name__} statement is not handled")

    @staticmethod
    def _with(node: Any, **fields: Any) -> Any:
        new = copy.copy(node)
        for k, v in fields.items():
            setattr(new, k, v)
        return new

    def _assign(self, s: ast.Assign, env: dict[str, Any]) -> list[ast.stmt]:
        if len(s.targets) != 1:
            raise UnrollError(f"line {s.lineno}: chained assignment is not handled")
        target = s.targets[0]
        v = self.value(s.value, env)
        value = self.expr(s.value, env, known=v)
        if isinstance(target, ast.Name):
            self._check_not_constant(target.id, s)
            if v is _UNKNOWN:
                env.pop(target.id, None)
            else:
                env[target.id] = v
            return [self._with(s, value=value)]
        if isinstance(target, ast.Tuple) and all(isinstance(e, ast.Name) for e in target.elts):
            names = [e.id for e in target.elts if isinstance(e, ast.Name)]
            for n in names:
                self._check_not_constant(n, s)
            known = isinstance(v, tuple) and len(v) == len(names)
            for i, n in enumerate(names):
                if known:
                    env[n] = v[i]
                else:
                    env.pop(n, None)
            return [self._with(s, value=value)]
        if isinstance(target, ast.Subscript):
            return [self._with(s, targets=[self._store(target, env, s)], value=value)]
        raise UnrollError(f"line {s.lineno}: assignment to {ast.unparse(target)} is not handled")

    def _augassign(self, s: ast.AugAssign, env: dict[str, Any]) -> list[ast.stmt]:
        if isinstance(s.target, ast.Name):
            name = s.target.id
            self._check_not_constant(name, s)
            op = _BINOPS.get(type(s.op))
            old, inc = env.get(name, _UNKNOWN), self.value(s.value, env)
            new = _UNKNOWN if op is None else self._apply(op, old, inc)
            value = self.expr(s.value, env)
            if new is not _UNKNOWN and _literal(new):
                env[name] = new
                return [ast.copy_location(
                    ast.Assign(targets=[ast.Name(name, ast.Store())], value=ast.Constant(new)),
                    s)]
            env.pop(name, None)
            return [self._with(s, value=value)]
        if isinstance(s.target, ast.Subscript):
            return [self._with(s, target=self._store(s.target, env, s),
                               value=self.expr(s.value, env))]
        raise UnrollError(f"line {s.lineno}: assignment to {ast.unparse(s.target)} is not "
                          "handled")

    def _check_not_constant(self, name: str, s: ast.stmt) -> None:
        if name in self.constants:
            raise UnrollError(f"line {s.lineno}: the body assigns {name!r}, given as a "
                              "constant")

    def _store(self, target: ast.Subscript, env: dict[str, Any], s: ast.stmt) -> ast.Subscript:
        base = target.value
        if isinstance(base, ast.Name) and isinstance(env.get(base.id), np.ndarray):
            raise UnrollError(f"line {s.lineno}: the body writes {base.id!r}, known as a "
                              "constant array")
        return self._with(target, slice=self.expr(target.slice, env))

    def _if(self, s: ast.If, env: dict[str, Any], *, unrolling: bool
            ) -> tuple[list[ast.stmt], str | None]:
        test = self.value(s.test, env)
        if test is not _UNKNOWN and _is_scalar(test):
            return self._block(s.body if test else s.orelse, env, unrolling=unrolling)
        test_expr = self.expr(s.test, env)
        env_a, env_b = dict(env), dict(env)
        body, jump_a = self._block(s.body, env_a, unrolling=unrolling)
        orelse, jump_b = self._block(s.orelse, env_b, unrolling=unrolling)
        if jump_a is not None or jump_b is not None:
            raise _KeepLoop  # a jump of the unrolled loop on what is not known
        env.clear()
        env.update({k: v for k, v in env_a.items() if k in env_b and _same(v, env_b[k])})
        return [self._with(s, test=test_expr, body=body or [ast.copy_location(ast.Pass(), s)],
                           orelse=orelse)], None

    def _for(self, s: ast.For, env: dict[str, Any]) -> list[ast.stmt]:
        inside = self._inside
        self._inside = inside or (isinstance(s.target, ast.Name) and s.target.id == self.within)
        try:
            return self._unrolled(s, env) if self._inside else [self._loop(s, env)]
        finally:
            self._inside = inside

    def _unrolled(self, s: ast.For, env: dict[str, Any]) -> list[ast.stmt]:
        """``s`` unrolled, when it loops over a known range (else kept as a loop)."""
        trips = self._range(s, env)
        if trips is not None and isinstance(s.target, ast.Name) and not s.orelse:
            saved = dict(env)
            name = s.target.id
            self._check_not_constant(name, s)
            out: list[ast.stmt] = []
            written = self._written
            self._unrolling += 1
            try:
                for x in trips:
                    env[name] = x
                    out.append(ast.copy_location(  # (as the loop would assign it)
                        ast.Assign(targets=[ast.Name(name, ast.Store())], value=ast.Constant(x)),
                        s))
                    body, jump = self._block(s.body, env, unrolling=True)
                    out += body
                    if self._unrolling == 1:  # the outermost: count what it has become
                        self._written += 1 + sum(isinstance(n, ast.stmt)
                                                 for b in body for n in ast.walk(b))
                        if self._written > self.max_statements:
                            raise _TooLarge
                    if jump == "break":
                        break
            except (_KeepLoop, _TooLarge):
                env.clear()
                env.update(saved)
                return [self._loop(s, env)]
            finally:
                self._unrolling -= 1
                self._written = written
            return out
        return [self._loop(s, env)]

    def _range(self, s: ast.For, env: dict[str, Any]) -> range | None:
        """The values of ``s``'s target when it loops over a known ``range`` short enough."""
        it = s.iter
        if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name)
                and it.func.id == "range" and "range" not in env and not it.keywords
                and 1 <= len(it.args) <= 3):
            return None
        args = [self.value(a, env) for a in it.args]
        if not all(type(a) is int for a in args):
            return None
        r = range(*args)
        return r if len(r) <= self.max_trips else None

    def _loop(self, s: ast.For | ast.While, env: dict[str, Any]) -> ast.stmt:
        """``s`` kept as a loop: what it assigns is not known in it, nor after it."""
        for n in assigned_names([s]):
            self._check_not_constant(n, s)
            env.pop(n, None)
        inner = dict(env)
        if isinstance(s, ast.For):
            head: dict[str, Any] = {"iter": self.expr(s.iter, env)}
        else:
            head = {"test": self.expr(s.test, env)}
        body, _ = self._block(s.body, inner, unrolling=False)
        orelse, _ = self._block(s.orelse, dict(env), unrolling=False)
        return self._with(s, body=body or [ast.copy_location(ast.Pass(), s)], orelse=orelse,
                          **head)

    # -- expressions ------------------------------------------------------------------------

    def value(self, node: ast.expr, env: Mapping[str, Any]) -> Any:
        """The value of ``node`` when it is known, else ``_UNKNOWN``."""
        try:
            return self._value(node, env)
        except (ArithmeticError, IndexError, TypeError, ValueError):
            return _UNKNOWN

    def _value(self, node: ast.expr, env: Mapping[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value if _is_scalar(node.value) else _UNKNOWN
        if isinstance(node, ast.Name):
            return env.get(node.id, _UNKNOWN)
        if isinstance(node, ast.Attribute):
            if node.attr == "shape" and isinstance(node.value, ast.Name):
                base = env.get(node.value.id, _UNKNOWN)
                if isinstance(base, np.ndarray):
                    return tuple(int(n) for n in base.shape)
                if base is _UNKNOWN and node.value.id in self.shapes:
                    return tuple(self.shapes[node.value.id])
            return _UNKNOWN
        if isinstance(node, ast.Subscript):
            base = self._value(node.value, env)
            index = self._value(node.slice, env)
            if base is _UNKNOWN or index is _UNKNOWN:
                return _UNKNOWN
            if not isinstance(base, np.ndarray | tuple):
                return _UNKNOWN
            return _scalar(base[index])
        if isinstance(node, ast.Slice):
            parts = [None if p is None else self._value(p, env)
                     for p in (node.lower, node.upper, node.step)]
            if any(p is _UNKNOWN or (p is not None and type(p) is not int) for p in parts):
                return _UNKNOWN
            return slice(*parts)
        if isinstance(node, ast.Tuple):
            elts = [self._value(e, env) for e in node.elts]
            return _UNKNOWN if any(e is _UNKNOWN for e in elts) else tuple(elts)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                return _UNKNOWN
            return self._apply(op, self._value(node.left, env), self._value(node.right, env))
        if isinstance(node, ast.UnaryOp):
            operand = self._value(node.operand, env)
            if not _is_scalar(operand):
                return _UNKNOWN
            if isinstance(node.op, ast.Not):
                return not operand
            if isinstance(node.op, ast.USub):
                return -operand
            if isinstance(node.op, ast.UAdd):
                return +operand
            return _UNKNOWN
        if isinstance(node, ast.Compare):
            left = self._value(node.left, env)
            for op_node, right_node in zip(node.ops, node.comparators, strict=True):
                op = _COMPARE.get(type(op_node))
                right = self._value(right_node, env)
                if op is None or not (_is_scalar(left) and _is_scalar(right)):
                    return _UNKNOWN
                if not op(left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BoolOp):
            # known when the operands up to the one that decides are known
            is_and = isinstance(node.op, ast.And)
            v: Any = _UNKNOWN
            for operand in node.values:
                v = self._value(operand, env)
                if not _is_scalar(v):
                    return _UNKNOWN
                if bool(v) != is_and:
                    return v
            return v
        if isinstance(node, ast.IfExp):
            test = self._value(node.test, env)
            if not _is_scalar(test):
                return _UNKNOWN
            return self._value(node.body if test else node.orelse, env)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and not node.keywords and node.func.id not in env:
            fn = self.functions.get(node.func.id) or \
                {"min": min, "max": max}.get(node.func.id)
            if fn is None:
                return _UNKNOWN
            args = [self._value(a, env) for a in node.args]
            if any(a is _UNKNOWN for a in args):
                return _UNKNOWN
            if fn in (min, max) and not (all(_is_scalar(a) for a in args)
                                         and len({type(a) for a in args}) == 1):
                return _UNKNOWN  # (the compiled code's result takes the arguments' common type)
            return fn(*args)
        return _UNKNOWN

    @staticmethod
    def _apply(op: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
        if not (_is_scalar(a) and _is_scalar(b)) or type(a) is bool or type(b) is bool:
            return _UNKNOWN
        if op is operator.truediv and type(a) is int and type(b) is int \
                and max(abs(a), abs(b)) >= 2 ** 53:
            return _UNKNOWN  # (compiled, both are made floats first: exact below 2**53)
        try:
            v = op(a, b)
        except ArithmeticError:
            return _UNKNOWN
        return v if _literal(v) else _UNKNOWN

    def expr(self, node: ast.expr, env: Mapping[str, Any], known: Any = _UNKNOWN) -> ast.expr:
        """``node`` with every part whose value is known written as that value."""
        v = self.value(node, env) if known is _UNKNOWN else known
        if v is not _UNKNOWN and _literal(v):
            return ast.copy_location(ast.Constant(v), node)
        if isinstance(node, ast.IfExp):
            test = self.value(node.test, env)
            if _is_scalar(test):
                return self.expr(node.body if test else node.orelse, env)
        if isinstance(node, ast.Name | ast.Constant):
            return node
        new = copy.copy(node)
        for field, old in ast.iter_fields(node):
            if isinstance(old, ast.expr) and not (
                    isinstance(node, ast.Attribute | ast.Call) and field in ("value", "func")):
                setattr(new, field, self.expr(old, env))
            elif isinstance(old, list):
                setattr(new, field, [self.expr(x, env) if isinstance(x, ast.expr)
                                     else self._keyword(x, env) if isinstance(x, ast.keyword)
                                     else x for x in old])
        return new

    def _keyword(self, k: ast.keyword, env: Mapping[str, Any]) -> ast.keyword:
        return self._with(k, value=self.expr(k.value, env))
