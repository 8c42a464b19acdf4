"""shapecheck: check a CNN's shapes, parameters and MACs from a YAML spec before PyTorch does.

    >>> import shapecheck
    >>> plan = shapecheck.plan("specs/lecture_cnn.yaml")
    >>> plan.params, plan.layers[-1].output_shape
    (8490, (64, 10))

Importing shapecheck never imports torch; build_module does, when called."""

from __future__ import annotations

import gc as _gc

__version__ = "0.1.0"

# Importing makes thousands of long-lived objects (modules, classes, pydantic's models) and no
# garbage: the cyclic collector would only scan them again and again, so it pauses meanwhile.
_collecting = _gc.isenabled()
_gc.disable()
try:
    from .diagnostics import Diagnostic, InputError
    from .loader import SpecError, load_spec
    from .plan import LayerPlan, Plan
    from .planner import plan
    from .spec import Spec
finally:
    if _collecting:
        _gc.enable()


def build_module(spec, **kwargs):
    """The torch.nn.Module for a spec (a Spec, path or YAML text). Imports torch."""
    from .codegen import build_module as _build

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
