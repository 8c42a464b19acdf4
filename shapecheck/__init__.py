"""shapecheck: check a CNN's shapes, parameters and MACs from a YAML spec before PyTorch does.

    >>> import shapecheck
    >>> plan = shapecheck.plan("specs/lecture_cnn.yaml")
    >>> plan.params, plan.layers[-1].output_shape
    (8490, (64, 10))

Importing shapecheck never imports torch; build_module does, when called."""

from __future__ import annotations

import gc as _gc
import sys as _sys

__version__ = "0.1.0"

# Importing makes thousands of long-lived objects (modules, classes, pydantic's models) and no
# garbage: the cyclic collector would only scan them again and again, so it pauses meanwhile.
_collecting = _gc.isenabled()
_gc.disable()
try:
    from .core.diagnostics import Diagnostic, InputError
    from .core.loader import SpecError, load_spec
    from .core.plan import LayerPlan, Plan
    from .core.planner import plan
    from .core.spec import Spec
finally:
    # ... and they join the oldest generation at once, unscanned: else the first collection
    # after the import would scan every one of them (about 11 M instructions at a start-up).
    _gc.freeze()
    _gc.unfreeze()
    if _collecting:
        _gc.enable()


# The import paths of earlier versions, still served, submodules included.
_ALIASES = {"shapecheck.layers": "shapecheck.core.layers", "shapecheck.train": "shapecheck.training"}


class _Alias:
    """Finds and loads an old import path as the module that now holds it: the module itself,
    not a copy, so there is one class per layer kind."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        for old, new in _ALIASES.items():
            if name == old or name.startswith(old + "."):
                from importlib.machinery import ModuleSpec

                return ModuleSpec(name, cls, origin=new + name[len(old):])
        return None

    @staticmethod
    def create_module(spec):
        from importlib import import_module

        module = import_module(spec.origin)
        spec.loader_state = module.__spec__  # the import system writes the alias's over it
        return module

    @staticmethod
    def exec_module(module):
        module.__spec__ = module.__spec__.loader_state


_sys.meta_path.insert(0, _Alias)


def build_module(spec, **kwargs):
    """The torch.nn.Module for a spec (a Spec, path or YAML text). Imports torch."""
    from .emit.build import build_module as _build

    return _build(spec, **kwargs)


__all__ = [
    "Diagnostic",
    "InputError",
    "LayerPlan",
    "Plan",
    "Spec",
    "SpecError",
    "__version__",
    "build_module",
    "load_spec",
    "plan",
]
