"""The torch.nn.Module of a plan, built from the source codegen.py writes, and checked.

``build_module(spec)`` executes exactly that source, so the emitted file and the module agree
on every key and shape. Before a module is handed out it is checked against the plan: a forward
pass on the meta device (nothing allocated) must give every layer the planned output shape,
and the parameter count must equal the plan's; a difference is an ``InternalError`` naming
both, never silent. Parameters that would not fit in memory, and tensors larger than torch can
address, are refused before anything is allocated.

This module imports torch only inside the functions that build or check a module.
"""

from __future__ import annotations

import math
import os
import types

from ..core.loader import SpecError
from ..core.memory import human_bytes, shortfall
from ..core.plan import BYTES_PER_VALUE, Plan, with_batch
from ..core.planner import plan as make_plan
from ..core.spec import Spec
from .codegen import Generated, InternalError, TooLargeError, generate

__all__ = ["build_module", "check_fits", "check_module", "check_torch_limits", "instantiate",
           "module_from_source"]

CHECK_BATCH = 2  # the batch of the meta forward pass when the plan's batch is a symbol


def check_fits(nbytes: int, what: str) -> None:
    """Raise TooLargeError when ``nbytes`` exceed the available memory."""
    available = shortfall(nbytes)
    if available is not None:
        raise TooLargeError(
            f"{what} need about {nbytes:,} bytes ({human_bytes(nbytes)}), but only "
            f"{available:,} bytes ({human_bytes(available)}) of memory are available; nothing "
            "was allocated"
        )


# torch refuses a tensor whose storage needs more bytes than this, even on the meta device.
TORCH_MAX_BYTES = 2**63 - 1


def check_torch_limits(plan: Plan) -> None:
    """Raise TooLargeError when a parameter, or a tensor of the check's forward pass (at the
    plan's batch, or CHECK_BATCH), would have more bytes than torch can address."""
    batch = plan.batch if isinstance(plan.batch, int) else CHECK_BATCH
    smaller = "; a smaller input or batch may fit"
    tensors = [("the input", with_batch(plan.input_dims, batch), smaller)]
    for layer in plan.walk():
        where = f"layer {'/'.join(map(str, layer.path))} ({layer.type} {layer.name})"
        tensors += [
            (f"the weight of {where}", layer.weight_shape, ""),
            (f"the output of {where}", with_batch(layer.output_dims, batch), smaller),
        ]
    for what, shape, hint in tensors:
        nbytes = math.prod(shape) * BYTES_PER_VALUE if shape else 0
        if nbytes > TORCH_MAX_BYTES:
            raise TooLargeError(
                f"{what} would be a tensor of shape {tuple(shape)}: {nbytes:,} bytes, more than "
                f"torch can address ({TORCH_MAX_BYTES:,} bytes); nothing was allocated{hint}"
            )


def module_from_source(source: str, name: str = "shapecheck_model") -> types.ModuleType:
    """Execute emitted source in a fresh module namespace (not registered in sys.modules)."""
    import linecache

    filename = f"<shapecheck {name}>"
    module = types.ModuleType(name)
    module.__file__ = filename
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - audited source
    return module


def check_module(model, plan: Plan, generated: Generated) -> None:
    """Run ``model`` (built on the meta device) on the planned input and compare every layer's
    output shape and the parameter count with the plan. Raises InternalError."""
    import torch

    batch = plan.batch if isinstance(plan.batch, int) else CHECK_BATCH
    seen: dict[tuple, tuple[int, ...]] = {}
    handles = []
    try:
        for layer in plan.walk():
            qualname = generated.module_names.get(layer.path)
            try:
                sub = model.get_submodule(qualname)
            except (AttributeError, TypeError):
                raise InternalError(
                    f"layer {'/'.join(map(str, layer.path))} ({layer.type} {layer.name}): the "
                    f"module has no submodule {qualname!r} where the plan puts this layer"
                ) from None

            def hook(_module, _args, output, path=layer.path):
                seen[path] = (tuple(output.shape) if isinstance(output, torch.Tensor)
                              else f"a {type(output).__name__}, not a tensor")

            handles.append(sub.register_forward_hook(hook))
        x = torch.empty(with_batch(plan.input_dims, batch), device="meta")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as e:  # noqa: BLE001 - any failure here is a planner/codegen bug
            raise InternalError(
                f"the plan says {plan.name} works, but torch fails on input {tuple(x.shape)}: "
                f"{type(e).__name__}: {e}"
            ) from None
        finally:
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    for layer in plan.walk():
        want = with_batch(layer.output_dims, batch)
        got = seen.get(layer.path)
        if got != want:
            where = "/".join(map(str, layer.path))
            got_text = "never called" if got is None else str(got)
            raise InternalError(
                f"layer {where} ({layer.type} {layer.name}, module "
                f"{generated.module_names[layer.path]}): the plan says {want}, torch gives "
                f"{got_text}"
            )
    if len(plan.outputs) > 1:  # a dict of the tensors `outputs:` lists
        want = {name: with_batch(plan.layers[i].output_dims, batch) for name, i in plan.outputs}
        got = ({k: tuple(v.shape) for k, v in out.items()} if isinstance(out, dict)
               else type(out).__name__)
    else:
        want = with_batch(plan.output_dims, batch)
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != want:
        raise InternalError(f"output: the plan says {want}, torch gives {got}")
    params = sum(p.numel() for p in model.parameters())
    if params != plan.params:
        raise InternalError(f"parameters: the plan says {plan.params:,}, torch has {params:,}")


def instantiate(plan: Plan, generated: Generated, *, device=None, check: bool = True):
    """The module of ``generated`` on ``device`` (default: torch's default device), checked
    against the plan on the meta device first. Refuses parameters that would not fit, and
    tensors larger than torch can address (TooLargeError), before creating anything."""
    import torch

    meta = device is not None and torch.device(device).type == "meta"
    if not meta:
        check_fits(plan.param_bytes, f"the {plan.params:,} parameters of {plan.name}")
    check_torch_limits(plan)
    namespace = module_from_source(generated.source, f"shapecheck_{plan.name}")
    cls = getattr(namespace, generated.class_name)
    if check:
        with torch.device("meta"):
            model = cls()
        check_module(model, plan, generated)  # outside the device context: a plain forward
    if device is None:
        return cls()
    with torch.device(device):
        return cls()


def build_module(spec: Spec | Plan | str | os.PathLike, *, batch: int | str | None = None,
                 input_shape: tuple[int, int, int] | None = None, device=None,
                 check: bool = True):
    """The torch.nn.Module for a spec (a Spec, a file path, YAML text, or a Plan).

    The module is an instance of the class ``shapecheck build`` writes (same source, same
    state_dict keys), checked against the plan on the meta device. ``device="meta"`` builds it
    without allocating parameters. Raises SpecError for an invalid spec, InputError for an
    unreadable file, TooLargeError when the parameters would not fit in memory and
    InternalError when torch disagrees with the plan."""
    if isinstance(spec, Plan):
        if batch is not None or input_shape is not None:
            raise TypeError("batch and input_shape apply to a spec, not to a Plan")
        p = spec
    else:
        p = make_plan(spec, batch=batch, input_shape=input_shape)
    if not p.valid:
        raise SpecError(p.errors)
    return instantiate(p, generate(p), device=device, check=check)


