"""The user's model file, executed, and the module it names, built on the meta device.

Importing runs the file's code, as `python model.py` would: that is the only way to get the
module. The file runs as a fresh module (its folder first on sys.path, for its own imports);
the module is built under ``torch.device("meta")`` so that its parameters take no memory, and
built for real only if the meta build fails (a constructor that reads tensor values).
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import itertools
import sys
from pathlib import Path

import torch

from .steps import ImportFailure
from .trace import failure_source, first_line

_counter = itertools.count()


def parse_target(text: str) -> tuple[Path, str]:
    """``model.py:Net`` -> (Path("model.py"), "Net")."""
    path, sep, name = text.rpartition(":")
    if not sep or not path or not name:
        raise ImportFailure(f"expected FILE:NAME such as model.py:Net, got {text!r}")
    if not all(part.isidentifier() for part in name.split(".")):
        raise ImportFailure(f"{name!r} is not a Python name: give the class or function as "
                            "FILE:NAME, such as model.py:Net")
    return Path(path), name


def run_file(path: Path):
    """Execute the file as a fresh module and return it."""
    if not path.exists():
        raise ImportFailure(f"{path}: no such file")
    if not path.is_file():
        raise ImportFailure(f"{path} is not a file")
    module_name = f"shapecheck_import_{next(_counter)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportFailure(f"{path} cannot be loaded as Python source")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and typing look their module up here
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code, any failure
        sys.modules.pop(module_name, None)
        where = failure_source(e)
        at = f" at {where.quoted()}" if where else ""
        raise ImportFailure(f"running {path} failed{at}: {first_line(e)}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def find(module, name: str, path: Path):
    """The object ``name`` (dotted for a nested one) of the executed file."""
    value = module
    for part in name.split("."):
        if not hasattr(value, part):
            candidates = [k for k, v in vars(module).items()
                          if _is_candidate(v) and getattr(v, "__module__", None) ==
                          module.__name__]
            close = difflib.get_close_matches(name, candidates, n=1)
            hint = (f"; did you mean {close[0]}?" if close else
                    f" (it defines {', '.join(sorted(candidates))})" if candidates else
                    " (it defines no nn.Module class or function)")
            raise ImportFailure(f"{path} has no {name}{hint}")
        value = getattr(value, part)
    return value


def _is_candidate(value) -> bool:
    return (inspect.isclass(value) and issubclass(value, torch.nn.Module)) or \
        inspect.isfunction(value)


def build(obj, name: str) -> torch.nn.Module:
    """The module that ``obj`` (a class or function needing no arguments, or a module) makes,
    its parameters on the meta device."""
    if isinstance(obj, torch.nn.Module):
        return obj.to("meta")
    if not callable(obj):
        raise ImportFailure(f"{name} is a {type(obj).__name__}, not an nn.Module class or a "
                            "function that returns a module")
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        needed = [p.name for p in signature.parameters.values()
                  if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                         p.POSITIONAL_OR_KEYWORD,
                                                         p.KEYWORD_ONLY)]
        if needed:
            raise ImportFailure(
                f"{name} needs arguments ({', '.join(needed)}): import builds it with none. "
                f"Write a function that returns the module, such as "
                f"`def model(): return {name}(...)`, and import that")
    try:
        with torch.device("meta"):
            model = obj()
    except Exception:  # noqa: BLE001 - built for real below, where the failure is reported
        try:
            model = obj()
        except Exception as e:  # noqa: BLE001 - the user's constructor, any failure
            where = failure_source(e)
            at = f" at {where.quoted()}" if where else ""
            raise ImportFailure(f"{name}() failed{at}: {first_line(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise ImportFailure(f"{name}() returned a {type(model).__name__}, not an nn.Module")
    return model.to("meta")
