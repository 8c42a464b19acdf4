"""Expressions in specs: ``$width * 4``, ``make_divisible(32 * $width_mult, 8)``, ``($k - 1) // 2``.

Pure data: the text is parsed with Python's own grammar and evaluated by walking the tree,
allowing only numbers, ``$names``, + − * / // % and parentheses, and a few functions; and, for
``when:``, comparisons with ``and``, ``or`` and ``not`` (``$t != 1 and $se``). Nothing is ever
passed to Python's ``eval``. A string that is only ``$name`` gives the value itself,
of any type (a list of layers, a bool)."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

MAX_TEXT = 500  # characters in one expression
# How deeply an expression may nest: the walks of its tree (here, and `build`'s writing it as
# Python) recurse once a level; ``-+-+…$c`` in 500 characters would be 250 levels.
MAX_DEPTH = 50
MAX_VALUE = 2**256  # a larger result is an error, not a slow computation

_NAME = re.compile(r"\$([A-Za-z_]\w*)")
_PREFIX = "_p_"  # $width becomes _p_width, so that a bare word can only be a function


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: the nearest multiple of ``divisor`` (at least
    ``min_value``), rounded up where rounding down would lose more than 10%."""
    if min_value is None:
        min_value = divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _round(value: float, digits: int | None = None) -> float:
    """round(), with ``digits`` held to what changes a result below MAX_VALUE: round(5, -10**18)
    would compute 10**(10**18)."""
    if digits is not None and not isinstance(digits, bool) and isinstance(digits, int):
        digits = max(-400, min(400, digits))
    return round(value) if digits is None else round(value, digits)


FUNCTIONS = {
    "min": min, "max": max, "round": _round, "ceil": math.ceil, "floor": math.floor,
    "int": int, "abs": abs, "make_divisible": make_divisible,
}
_BINARY = {
    ast.Add: ("+", operator.add), ast.Sub: ("−", operator.sub), ast.Mult: ("×", operator.mul),
    ast.Div: ("/", operator.truediv), ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
}


class ExpressionError(Exception):
    """The expression cannot be evaluated; the message says why, the hint how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and "$" in value


def evaluate(text: str, env: Mapping[str, Any]) -> Any:
    """The value of an expression in ``env`` (names without their ``$``)."""
    run = _COMPILED.get(text)
    if run is None:
        run = _compile(text)  # raises what a text that cannot be evaluated raises
        if len(_COMPILED) >= MAX_COMPILED:  # a long-lived process (the language server)
            _COMPILED.clear()
        _COMPILED[text] = run
    return run(env)


# An expression is parsed once and turned into a function of its names' values: a template
# used a thousand times evaluates the same few texts a thousand times each.
MAX_COMPILED = 10_000
_COMPILED: dict[str, Callable[[Mapping[str, Any]], Any]] = {}


def _compile(text: str) -> Callable[[Mapping[str, Any]], Any]:
    if len(text) > MAX_TEXT:
        raise ExpressionError(f"the expression is {len(text)} characters; at most {MAX_TEXT}")
    whole = _NAME.fullmatch(text.strip())
    if whole:
        name = whole.group(1)
        return lambda env: env[name] if name in env else _lookup(name, env)
    body = parse_expression(text).body
    return _test_of(body, text) if _is_test(body) else _value_of(body, text)


def parse_expression(text: str) -> ast.Expression:
    """The syntax tree of an expression, each ``$name`` a Name that ``variable_name`` reads.
    Whether it holds only what an expression may hold is up to the walk that reads it."""
    source = _NAME.sub(lambda m: _PREFIX + m.group(1), text.strip())
    if "$" in source:
        raise ExpressionError(f"{text!r}: a $ must be followed by a name, as in $width")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, RecursionError, MemoryError):
        hint = None
        if text.count("(") > text.count(")"):
            if "," in text:  # the comma made it through: the text was quoted, a ) is missing
                hint = "a `(` is not closed: add its `)`"
            else:  # YAML cut a flow mapping's value at a comma
                hint = ("inside {…} a comma ends the value: quote the expression, "
                        "out: \"make_divisible(32 * $width_mult, 8)\"")
        raise ExpressionError(f"{text!r} is not an expression (numbers, $names, + − * / // % "
                              "and functions such as min, max, make_divisible)", hint) from None
    if _depth(tree) > MAX_DEPTH:
        raise ExpressionError(f"{text!r} nests more than {MAX_DEPTH} levels deep",
                              "write it in simpler steps, e.g. as a parameter's default")
    return tree


def _depth(tree: ast.AST) -> int:
    """How many levels the tree has (without recursion: it may be deeper than the stack)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack += [(child, depth + 1) for child in ast.iter_child_nodes(node)]
    return deepest


def variable_name(identifier: str) -> str | None:
    """The variable a Name of ``parse_expression``'s tree stands for (``width`` for
    ``$width``), or None for a bare word."""
    return identifier[len(_PREFIX):] if identifier.startswith(_PREFIX) else None


def show(text: str, env: Mapping[str, Any]) -> str:
    """The expression with its numeric names replaced by their values, for explanations:
    ``make_divisible(32 * $width_mult, 8)`` -> ``make_divisible(32 * 0.5, 8)``."""

    def value(m: re.Match) -> str:
        v = env.get(m.group(1))
        return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else m.group(0)

    return _NAME.sub(value, text.strip())


def _lookup(name: str, env: Mapping[str, Any]) -> Any:
    if name not in env:
        import difflib

        close = difflib.get_close_matches(name, list(env), n=1)
        known = ", ".join(f"${k}" for k in sorted(env)) or "none"
        guess = f"did you mean ${close[0]}? " if close else ""
        raise ExpressionError(f"${name} is not defined here ({guess}known: {known})")
    return env[name]


def _number(value: Any, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpressionError(f"{what} is {value!r}, not a number")
    if abs(value) > MAX_VALUE or (isinstance(value, float) and not math.isfinite(value)):
        raise ExpressionError(f"{what} is too large")
    return value


_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}


def _is_test(node: ast.AST) -> bool:
    """Whether a node gives true or false: a comparison, `and`, `or` or `not`."""
    return isinstance(node, (ast.Compare, ast.BoolOp)) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not))


# Each node becomes a function of ``env`` doing what walking it would: the same checks, in
# the same order, and the same errors, raised only when evaluation reaches the node.
Run = Callable[[Mapping[str, Any]], Any]


def _test_of(node: ast.AST, text: str) -> Run:
    """A test (``$t != 1 and $se``): comparisons of numbers, and parameters that hold true or
    false."""
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        first = _value_of(node.left, text)
        rest = [(_COMPARE[type(op)], _value_of(right, text))
                for op, right in zip(node.ops, node.comparators)]

        def compare(env):
            left = first(env)
            for holds, right_of in rest:
                right = right_of(env)
                if not holds(left, right):
                    return False
                left = right
            return True

        return compare
    if isinstance(node, ast.BoolOp):
        parts = [_test_of(v, text) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda env: all(part(env) for part in parts)
        return lambda env: any(part(env) for part in parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        operand = _test_of(node.operand, text)
        return lambda env: not operand(env)
    if isinstance(node, ast.Name) and variable_name(node.id) is not None:
        name = variable_name(node.id)

        def flag(env):
            value = _lookup(name, env)
            if not isinstance(value, bool):
                raise ExpressionError(f"${name} is {value!r}, not true or false",
                                      f"compare it: ${name} != 0")
            return value

        return flag
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        constant = node.value
        return lambda env: constant
    return _value_of(node, text)  # a number where a test is wanted: says what is allowed


def _value_of(node: ast.AST, text: str) -> Run:
    """A number. (An int within MAX_VALUE, the most, is let through without _number.)"""
    limit = MAX_VALUE
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        try:
            constant = _number(node.value, "a constant")
        except ExpressionError as e:
            return _fails(str(e))
        return lambda env: constant
    if isinstance(node, ast.Name) and variable_name(node.id) is not None:
        name = variable_name(node.id)
        what = f"${name}"

        def variable(env):
            value = env[name] if name in env else _lookup(name, env)
            return value if type(value) is int and -limit <= value <= limit else _number(value, what)

        return variable
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value_of(node.operand, text)
        if isinstance(node.op, ast.USub):
            return lambda env: -operand(env)
        return operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        symbol, apply = _BINARY[type(node.op)]
        left_of, right_of = _value_of(node.left, text), _value_of(node.right, text)
        what = f"{text!r}"
        if symbol in ("/", "//", "%"):
            def divide(env):
                left, right = left_of(env), right_of(env)
                if right == 0:
                    raise ExpressionError(f"{text!r} divides by zero")
                return _number(apply(left, right), what)

            return divide

        def arithmetic(env):
            value = apply(left_of(env), right_of(env))
            return value if type(value) is int and -limit <= value <= limit else _number(value, what)

        return arithmetic
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in FUNCTIONS and not node.keywords):
        function = node.func.id
        args_of = [_value_of(a, text) for a in node.args]

        def call(env):
            args = [arg(env) for arg in args_of]
            try:
                return _number(FUNCTIONS[function](*args), f"{text!r}")
            except ZeroDivisionError:
                raise ExpressionError(f"{function}() in {text!r} divides by zero") from None
            except (TypeError, ValueError, OverflowError) as e:
                raise ExpressionError(f"{function}() in {text!r}: {e}") from None

        return call

    def refuse(env):
        what = ast.unparse(node).replace(_PREFIX, "$")
        if _is_test(node):
            raise ExpressionError(f"{what!r} is true or false, not a number")
        raise ExpressionError(f"{what!r} is not allowed in an expression (numbers, $names, "
                              "+ − * / // %, comparisons, and, or, not, and "
                              + ", ".join(FUNCTIONS) + ")")

    return refuse


def _fails(message: str) -> Run:
    def fail(env):
        raise ExpressionError(message)

    return fail
