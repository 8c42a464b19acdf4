"""Python source written from a syntax tree, so that nothing in a spec can become code.

``build`` makes its module as ``ast`` nodes with the constructors here: a name enters only
through ``ident`` (a checked identifier), a value only through ``const`` (an ``ast.Constant``,
or the plain call that writes a non-finite float). ``render`` lays the tree out as a person
would (calls split as black splits them, a shape comment beside a layer), and ``check_render``
parses that text back and requires the very tree that ``ast.unparse`` gives, so the layout and
its comments can add nothing that runs. Comments carry text only through ``comment_text``,
docstrings only through ``docstring_text``.
"""

from __future__ import annotations

import ast
import keyword
import math
import re
from typing import Any

INDENT = "    "
LINE_LENGTH = 100

# How a call is laid out when it does not fit on its line (a node's ``layout`` attribute):
INLINE = "inline"  # always on one line (a module given as an argument, ``self.conv1(x)``)
SPLIT = "split"  # one line if it fits, else its arguments on one line, else one a line
EXPLODE = "explode"  # one argument a line: an nn.Sequential of layers, a block's branches


class SourceError(Exception):
    """The tree holds something that cannot be written as the source it stands for."""


def ident(name: Any) -> str:
    """``name`` if it is an ASCII Python identifier (not a keyword), else SourceError. Python
    reads other identifiers in their NFKC form, so two could name one thing."""
    if (not isinstance(name, str) or not name.isidentifier() or not name.isascii()
            or keyword.iskeyword(name)):
        raise SourceError(f"{name!r} is not a Python identifier")
    return name


def name(id_: str, store: bool = False) -> ast.Name:
    return ast.Name(id=ident(id_), ctx=ast.Store() if store else ast.Load())


def dotted(path: str) -> ast.expr:
    """``nn.Conv2d`` as nodes; every part is checked."""
    first, *rest = path.split(".")
    node: ast.expr = name(first)
    for part in rest:
        node = ast.Attribute(value=node, attr=ident(part), ctx=ast.Load())
    return node


def self_attr(attr: str) -> ast.Attribute:
    return ast.Attribute(value=name("self"), attr=ident(attr), ctx=ast.Load())


def super_init() -> ast.Attribute:
    """``super().__init__``."""
    return ast.Attribute(value=call(name("super")), attr="__init__", ctx=ast.Load())


def const(value: Any) -> ast.expr:
    """A constructor argument's value: None, a bool, a number, a string or a tuple of these."""
    if value is None or isinstance(value, (bool, str)):
        return ast.Constant(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return call(name("float"), [ast.Constant(str(value))])
        if value < 0 or (value == 0 and math.copysign(1, value) < 0):  # -1 reads back so
            return ast.UnaryOp(op=ast.USub(), operand=ast.Constant(-value))
        return ast.Constant(value)
    if isinstance(value, (tuple, list)):
        return ast.Tuple(elts=[const(v) for v in value], ctx=ast.Load())
    raise SourceError(f"cannot write {type(value).__name__} value {value!r} as a constant")


def call(func: ast.expr, args: list | None = None, *, layout: str = INLINE,
         comment: str = "") -> ast.Call:
    """A call; ``args`` are expressions (positional) and ``ast.keyword``s, in any order."""
    args = args or []
    node = ast.Call(func=func, args=[a for a in args if not isinstance(a, ast.keyword)],
                    keywords=[a for a in args if isinstance(a, ast.keyword)])
    node.layout = layout
    return with_comment(node, comment)


def kw(arg: str, value: ast.expr) -> ast.keyword:
    return ast.keyword(arg=ident(arg), value=value)


def with_comment(node: ast.AST, text: str) -> ast.AST:
    """``node`` with a comment at the end of its line; the text is escaped to one line."""
    if text:
        node.comment = comment_text(text)
    return node


def comment_text(text: str) -> str:
    """Text for a one-line comment: line breaks and other invisible characters escaped, and
    ``coding:`` / ``coding=`` too: in the first two lines Python would take it as the file's
    encoding (PEP 263), and a spec file named ``x coding=utf-7 y.yaml`` could then turn text in
    the docstring into code when the file is imported."""
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return re.sub(r"coding([:=])", lambda m: f"coding\\x{ord(m.group(1)):02x}", text)


def docstring_text(text: str) -> str:
    """Text for the inside of a triple-quoted docstring that reads back as the same text.

    Backslashes are doubled, a quote that could close the string (one before another quote,
    or the last character) is escaped, and invisible characters other than the line break are
    written as escapes, so no text can end the docstring early or hide code."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"' and (i + 1 == len(text) or text[i + 1] == '"'):
            out.append('\\"')
        elif ch == "\n" or ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


def docstring(text: str) -> ast.Expr:
    return ast.Expr(value=ast.Constant(text))


# ---------------------------------------------------------------- layout


def _comment(node: ast.AST) -> str:
    text = getattr(node, "comment", "")
    return f"  # {text}" if text else ""


def _arg_text(arg: ast.AST) -> str:
    if isinstance(arg, ast.keyword):
        return f"{arg.arg}={ast.unparse(arg.value)}"
    return ast.unparse(arg)


def _arguments(node: ast.Call) -> list[ast.AST]:
    return [*node.args, *node.keywords]


def expr_lines(node: ast.AST, indent: int, head: str = "", tail: str = "") -> list[str]:
    """``head + node + tail`` at ``indent`` levels, laid out by the node's ``layout``."""
    pad = INDENT * indent
    comment = _comment(node)
    if isinstance(node, ast.keyword):
        return expr_lines(node.value, indent, f"{head}{node.arg}=", tail)
    if isinstance(node, ast.Starred) and isinstance(node.value, ast.GeneratorExp):
        loop = node.value.generators[0]  # *(Block(...) for _ in range(n)): a repeat
        return expr_lines(node.value.elt, indent, f"{head}*(",
                          f" for {ast.unparse(loop.target)} in {ast.unparse(loop.iter)}){tail}")
    layout = getattr(node, "layout", INLINE)
    if not isinstance(node, ast.Call) or layout == INLINE:
        return [f"{pad}{head}{ast.unparse(node)}{tail}{comment}"]
    func, args = ast.unparse(node.func), _arguments(node)
    if layout == SPLIT and not any(getattr(_value(a), "layout", INLINE) == EXPLODE
                                   for a in args):
        texts = [_arg_text(a) for a in args]
        inner = INDENT * (indent + 1)
        one = f"{pad}{head}{func}({', '.join(texts)}){tail}{comment}"
        if len(one) <= LINE_LENGTH or not texts:
            return [one]
        joined = f"{inner}{', '.join(texts)}"
        if len(joined) <= LINE_LENGTH:
            return [f"{pad}{head}{func}(", joined, f"{pad}){tail}{comment}"]
        return [f"{pad}{head}{func}(", *(f"{inner}{t}," for t in texts),
                f"{pad}){tail}{comment}"]
    lines = [f"{pad}{head}{func}("]
    for arg in args:
        lines += expr_lines(arg, indent + 1, tail=",")
    return [*lines, f"{pad}){tail}{comment}"]


def _value(arg: ast.AST) -> ast.AST:
    return arg.value if isinstance(arg, ast.keyword) else arg


def signature_lines(func: ast.FunctionDef, indent: int) -> list[str]:
    """``def name(args) -> returns:``, split as black would."""
    a = func.args
    defaults = [None] * (len(a.args) - len(a.defaults)) + list(a.defaults)
    parts = [ast.unparse(arg) + ("" if d is None else f" = {ast.unparse(d)}")
             for arg, d in zip(a.args, defaults)]
    pad, inner = INDENT * indent, INDENT * (indent + 1)
    returns = f" -> {ast.unparse(func.returns)}" if func.returns else ""
    one = f"{pad}def {func.name}({', '.join(parts)}){returns}:"
    if len(one) <= LINE_LENGTH:
        return [one]
    joined = f"{inner}{', '.join(parts)}"
    if len(joined) <= LINE_LENGTH:
        return [f"{pad}def {func.name}(", joined, f"{pad}){returns}:"]
    return [f"{pad}def {func.name}(", *(f"{inner}{p}," for p in parts), f"{pad}){returns}:"]


def docstring_lines(text: str, indent: int) -> list[str]:
    pad = INDENT * indent
    return [f'{pad}"""{line}' if i == 0 else line
            for i, line in enumerate(f'{docstring_text(text)}"""'.split("\n"))]


def statement_lines(node: ast.stmt, indent: int) -> list[str]:
    """One statement of what build writes, with the comments before it (``leading``)."""
    pad = INDENT * indent
    lines = [f"{pad}# {comment_text(c)}" for c in getattr(node, "leading", ())]
    if _is_docstring(node):
        return lines + docstring_lines(node.value.value, indent)
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        return lines + expr_lines(node.value, indent, f"{ast.unparse(node.targets[0])} = ",
                                  _comment(node))
    if isinstance(node, ast.Expr):
        return lines + expr_lines(node.value, indent, tail=_comment(node))
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(b) for b in node.bases)
        lines.append(f"{pad}class {node.name}({bases}):")
        return lines + body_lines(node.body, indent + 1)
    if isinstance(node, ast.FunctionDef):
        return lines + signature_lines(node, indent) + body_lines(node.body, indent + 1)
    return lines + [f"{pad}{line}" for line in ast.unparse(node).split("\n")]


def body_lines(body: list[ast.stmt], indent: int) -> list[str]:
    """A class's or function's statements, with a blank line before each method."""
    lines: list[str] = []
    for i, stmt in enumerate(body):
        if i and isinstance(stmt, ast.FunctionDef):
            lines.append("")
        lines += statement_lines(stmt, indent)
    return lines


def _is_docstring(node: ast.stmt) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str))


def check_render(source: str, tree: ast.Module) -> None:
    """SourceError unless ``source`` parses to exactly the tree (what ``ast.unparse`` of it
    reads back as): then its comments and layout add nothing that runs."""
    try:
        written = ast.dump(ast.parse(source))
    except SyntaxError as e:
        raise SourceError(f"the emitted source does not parse: {e}") from None
    if written != ast.dump(ast.parse(ast.unparse(ast.fix_missing_locations(tree)))):
        raise SourceError("the emitted source does not read back as the tree it was written from")
