"""`shapecheck import`: a PyTorch module traced with torch.fx, written as a spec.

The module is built on the meta device and traced (trace.py: every call of the forward, with
its shapes and its line of source), the traced graph is nested into layers and blocks
(structure.py), and written as YAML (writer.py). The spec is then planned and every layer's
planned output compared with the shape torch gave it: a spec that disagrees with its module is
never handed out.

Everything here imports torch: only the import command loads this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.plan import Plan, with_batch
from ..core.spec import default_name
from .steps import ImportFailure
from .structure import Leaf, Nest, flatten, nest
from .templating import make_templates
from .writer import MARKER, render, to_yaml

__all__ = ["MARKER", "ImportFailure", "ImportMismatch", "Imported", "import_file",
           "import_model"]


class ImportMismatch(ImportFailure):
    """The spec's plan disagrees with the shapes torch gave: a bug in shapecheck."""


@dataclass
class Imported:
    text: str  # the spec
    plan: Plan  # its plan, at batch N
    module_params: int  # the parameters of the module itself


def import_file(target: str, input_shape: tuple[int, int, int], *,
                use_templates: bool = True) -> Imported:
    """Import ``model.py:Net`` (a class or function needing no arguments) at ``input_shape``.
    Runs the file's code. Raises ImportFailure."""
    from .loading import build, find, parse_target, run_file

    path, name = parse_target(target)
    module = run_file(path)
    model = build(find(module, name, path), name)
    origin = f"{path.name}:{name}"
    return import_model(model, input_shape, name=default_name(name.split(".")[-1].lower()),
                        origin=origin, use_templates=use_templates)


def import_model(model, input_shape: tuple[int, int, int], *, name: str = "net",
                 origin: str = "a module", use_templates: bool = True) -> Imported:
    """The spec of an nn.Module (best on the meta device) traced at ``input_shape``; blocks it
    repeats become templates unless ``use_templates`` is false."""
    from ..core.planner import plan as make_plan
    from .trace import BATCH, trace

    model.eval()  # the network as it is used: no training-only branches
    steps, output, key = trace(model, tuple(input_shape))
    items, outputs = nest(steps, output)
    templates = make_templates(items, render) if use_templates else {}
    text = to_yaml(items, name=name, input_shape=tuple(input_shape), origin=origin,
                   templates=templates, returned_key=key, outputs=outputs,
                   returned_keys=output.keys)
    checked = make_plan(text, batch=BATCH)
    if not checked.valid:
        problem = checked.errors[0]
        raise ImportFailure(f"the spec made from the module does not plan, although torch "
                            f"runs the module: {problem.message} (layer {problem.layer})")
    _compare(items, checked)
    return Imported(text, make_plan(text), sum(p.numel() for p in model.parameters()))


def _compare(items: list, plan: Plan) -> None:
    """Every planned layer's output against the shape torch gave its step."""
    planned = list(plan.walk())
    imported = list(flatten(items))
    if len(planned) != len(imported):
        raise ImportMismatch(f"the spec plans {len(planned)} layers, but {len(imported)} were "
                             "imported")
    for layer, item in zip(planned, imported):
        want = tuple(item.step.shape or ())
        got = with_batch(layer.output_dims, plan.batch)
        if got != want:
            where = item.step.at() if isinstance(item, (Leaf, Nest)) else ""
            raise ImportMismatch(f"layer {layer.name} ({layer.type}){where}: torch gives "
                                 f"{want}, the spec plans {got}")


def default_output(name: str) -> Path:
    return Path(f"{name}.yaml")
