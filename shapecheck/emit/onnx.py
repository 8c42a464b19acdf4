"""ONNX export of a built or trained module, checked before anything is written.

``export_onnx(model, ...)`` exports with torch.onnx and checks the result three ways:
onnx.checker accepts the model, ONNX shape inference gives the planned output shape, and
onnxruntime computes what torch computes (within ``TOLERANCE``) on a random input. Only then
``OnnxModel.write`` puts it on disk, atomically. A symbolic batch ("N") becomes a dynamic
batch axis named after the symbol; a numeric batch is fixed in the graph.

The exporter is torch.onnx's torch.export-based one (``dynamo=True``, which needs onnxscript):
the older TorchScript exporter cannot export channel_shuffle, and with a dynamic batch its
shape inference gives pixel_shuffle's output the height "N". The torch.export-based one exports
every spec under specs/ with the planned shapes.

A layer torch.onnx cannot export, or one whose ONNX graph computes something else, is an
``OnnxExportError`` naming that layer. torch, onnx and onnxruntime are imported only inside
the functions here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.atomic import atomic_write, folder_problem, replace_problem
from ..core.diagnostics import install_hint

__all__ = [
    "INSTALL",
    "OPSET",
    "TOLERANCE",
    "OnnxExportError",
    "OnnxModel",
    "destination_problem",
    "export_onnx",
    "is_shapecheck_onnx",
    "require_onnx",
]

OPSET = 18  # the opset torch.onnx's torchlib is written in: no version conversion
TOLERANCE = 1e-4  # onnxruntime against torch: absolute, scaled up by outputs larger than 1
INSTALL = install_hint("onnx")
PRODUCER = "shapecheck"
TRACE_BATCH = 2  # torch.export treats a size of 1 as a constant, so a symbolic batch traces at 2
CHECK_BATCH = 3  # ... and is checked at another size, so the batch axis is seen to be dynamic
MAX_ONNX_BYTES = 2**31 - 1  # a protobuf message, and so one .onnx file, holds at most 2 GiB
_SCOPES = "pkg.torch.onnx.name_scopes"  # where the exporter records each node's module


class OnnxExportError(Exception):
    """The module cannot be exported to ONNX, or the export does not compute what it does."""


def require_onnx() -> None:
    """Import what the export needs, so that a missing package is found before any work:
    ModuleNotFoundError names it (the command line turns it into the install hint)."""
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401 - torch.onnx's exporter imports it only when it runs


def is_shapecheck_onnx(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX file shapecheck wrote: its producer_name (field 2, which
    protobuf writes right after ir_version) is "shapecheck"."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return False
    name = PRODUCER.encode()
    return bytes([0x12, len(name)]) + name in head


def destination_problem(out: Path, *, force: bool, inputs: list[Path]) -> str | None:
    """Why the ONNX file cannot be written to ``out``, or None: the rule every output of
    shapecheck follows (atomic.replace_problem), and a folder that exists."""
    problem = replace_problem(out, force=force, ours=is_shapecheck_onnx, inputs=inputs,
                              kind=" as an ONNX file")
    if problem is not None:
        return problem
    return folder_problem(out)


@dataclass
class OnnxModel:
    """An exported and checked model, not yet written."""

    data: bytes  # the serialized ModelProto
    opset: int
    input_shape: tuple[int | str, ...]
    output_shape: tuple[int | str, ...]
    max_diff: float  # onnxruntime against torch, on the check input
    check_batch: int

    def write(self, path: str | Path) -> None:
        """Write the file atomically: a failure leaves no partial file and the old one intact."""
        atomic_write(path, self.data)

    def summary(self, path: str | Path) -> str:
        return (f"wrote {path}: opset {self.opset}, input {_text(self.input_shape)} → output "
                f"{_text(self.output_shape)}, checked with onnxruntime (batch {self.check_batch},"
                f" max diff {self.max_diff:.1g})")


def _text(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings and log lines (torchvision missing, deprecations) are not the
    user's business: an export either works or fails with one message."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(
    model,
    *,
    input_dims: tuple[int, int, int] | tuple[int, ...],
    batch: int | str,
    output_shape: tuple[int | str, ...],
    describe: Callable[[str], str] | None = None,
    seed: int = 0,
) -> OnnxModel:
    """Export ``model`` (a torch.nn.Module taking one (batch, *input_dims) tensor) and check it.

    ``output_shape`` is the planned output, with the batch as ``batch`` (an int, a symbol such
    as "N", or "N*k" where a flatten merged batch rows). ``describe`` names the layer of a
    module's qualified name in messages (default: the name and the module's repr).
    Raises OnnxExportError; ModuleNotFoundError when onnx, onnxruntime or onnxscript is missing."""
    require_onnx()
    import onnx
    import torch

    describe = describe or _describer(model)
    model = model.eval().cpu()
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if nbytes > MAX_ONNX_BYTES:
        raise OnnxExportError(f"the weights take {nbytes:,} bytes, more than the 2 GiB one ONNX "
                              "file can hold")
    symbolic = isinstance(batch, str)
    check_batch = CHECK_BATCH if symbolic else batch
    _check_memory(model, tuple(input_dims), TRACE_BATCH if symbolic else batch, check_batch)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((TRACE_BATCH if symbolic else batch, *input_dims), generator=generator)
    # A symbol becomes the axis's name in the graph (an ONNX dim_param), as in the plan.
    dynamic = ({0: torch.export.Dim(batch)},) if symbolic else None
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model, (x,), dynamo=True, dynamic_shapes=dynamic, input_names=["input"],
                output_names=["output"], opset_version=OPSET, verbose=False)
    except Exception as e:  # noqa: BLE001 - torch.export and torch.onnx raise many kinds
        raise OnnxExportError(_export_failure(model, x, dynamic, e, describe)) from None
    proto = program.model_proto
    proto.producer_name, proto.producer_version = PRODUCER, __version__
    try:
        data = proto.SerializeToString()
    except ValueError as e:  # protobuf's 2 GiB limit, the graph included
        raise OnnxExportError(f"the model cannot be one ONNX file: {_first_line(e)}") from None
    try:
        # The bytes, not the proto: checking a proto would serialize all the weights again.
        onnx.checker.check_model(data)
    except Exception as e:  # noqa: BLE001 - onnx raises ValidationError and others
        raise OnnxExportError(f"onnx.checker rejects the exported model: {_first_line(e)}") \
            from None
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(proto), strict_mode=True)
    except Exception as e:  # noqa: BLE001 - InferenceError and others
        raise OnnxExportError(f"ONNX shape inference fails on the exported model: "
                              f"{_first_line(e)}") from None
    got_shape = tuple(d.dim_param or d.dim_value
                      for d in inferred.graph.output[0].type.tensor_type.shape.dim)
    if not _same_shape(got_shape, output_shape):
        raise OnnxExportError(f"ONNX shape inference gives the output {_text(got_shape)}, the "
                              f"plan says {_text(output_shape)}")

    x_check = torch.randn((check_batch, *input_dims), generator=generator)
    with torch.no_grad():
        expected = model(x_check).numpy()
    try:
        got = _session(data).run(["output"], {"input": x_check.numpy()})[0]
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own kinds
        raise OnnxExportError(_runtime_failure(proto, e, describe)) from None
    if got.shape != expected.shape:
        raise OnnxExportError(f"onnxruntime gives an output of shape {got.shape} on input "
                              f"{tuple(x_check.shape)}, torch {expected.shape}")
    diff = _max_diff(got, expected)
    if not diff <= _tolerance(expected):  # NaN fails too
        raise OnnxExportError(_mismatch(model, proto, x_check, describe, diff))
    return OnnxModel(data=data, opset=OPSET, input_shape=(batch, *input_dims),
                     output_shape=tuple(output_shape), max_diff=diff, check_batch=check_batch)


def _check_memory(model, input_dims: tuple[int, ...], trace_batch: int,
                  check_batch: int) -> None:
    """Refuse, before anything is allocated, an export whose tensors cannot fit: the two random
    inputs (the trace's and the check's) and, at the check's batch, the largest tensors one
    layer reads and writes, found by running the module on the meta device (no memory). What
    is counted is a lower bound of what the export needs, so only the impossible is refused."""
    from ..core.memory import available_memory

    per_sample = math.prod(input_dims) * 4  # float32
    needed = per_sample * (trace_batch + check_batch)
    available = available_memory()
    if available is None:
        return
    if needed <= available:
        needed += _largest_layer_bytes(model, input_dims, check_batch)
    if needed > available:
        raise OnnxExportError(
            f"exporting needs at least {needed:,} bytes (the input {_text(input_dims)} at batch "
            f"{trace_batch} and {check_batch}, and the largest layer's tensors), more than the "
            f"{available:,} bytes of memory available here; nothing was allocated")


def _largest_layer_bytes(model, input_dims: tuple[int, ...], batch: int) -> int:
    """The most bytes one leaf module reads and writes at once, on a ``batch`` of inputs; 0
    when the module does not run on the meta device (the export says why, if it fails)."""
    import torch
    from torch.func import functional_call

    def size(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(size(v) for v in value)
        return 0

    largest = [0]

    def hook(_module, args, output) -> None:
        largest[0] = max(largest[0], size(args) + size(output))

    on_meta = {name: torch.empty_like(t, device="meta")
               for name, t in [*model.named_parameters(), *model.named_buffers()]}
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if not list(m.children())]
    try:
        with torch.no_grad():
            functional_call(model, on_meta, (torch.empty((batch, *input_dims), device="meta"),))
    except Exception:  # noqa: BLE001 - a module the meta device cannot run: the input alone
        return 0
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def _without_weights(proto):
    """A copy for shape inference, which needs the initializers' types and dims but the values
    only of small ones (the shape a Reshape takes): large values are dropped, so that inference
    on a network of hundreds of MB does not copy them through it."""
    import onnx

    light = onnx.ModelProto()
    light.CopyFrom(proto)
    for tensor in light.graph.initializer:
        if len(tensor.dims) and math.prod(tensor.dims) > 1024:
            for name in ("raw_data", "float_data", "int64_data", "int32_data", "double_data"):
                tensor.ClearField(name)
    return light


def _max_diff(got, want) -> float:
    """The largest difference where both are finite; inf if NaN or inf are not where they are
    in ``want``."""
    import numpy as np

    finite = np.isfinite(want) & np.isfinite(got)
    if not np.array_equal(got[~finite], want[~finite], equal_nan=True):
        return math.inf
    return float(np.max(np.abs(got[finite] - want[finite]))) if finite.any() else 0.0


def _tolerance(reference) -> float:
    import numpy as np

    finite = reference[np.isfinite(reference)]
    largest = float(np.max(np.abs(finite))) if finite.size else 0.0
    return TOLERANCE * max(1.0, largest)


def _session(data: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _same_shape(got: tuple, want: tuple) -> bool:
    """Dims equal; a symbolic dim equal as a product ("8*N" is the plan's "N*8")."""
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if isinstance(w, int) or isinstance(g, int):
            if g != w:
                return False
        elif sorted(p.strip() for p in g.split("*")) != sorted(p.strip() for p in w.split("*")):
            return False
    return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _describer(model) -> Callable[[str], str]:
    modules = dict(model.named_modules())

    def describe(qualname: str) -> str:
        module = modules.get(qualname)
        kind = repr(module).splitlines()[0] if module is not None else "?"
        return f"layer {qualname} ({kind})"

    return describe


# ---------------------------------------------------------------- which layer failed


def _export_failure(model, x, dynamic, error: Exception, describe) -> str:
    """The message for a failed export: the torch op that torch.onnx cannot translate and the
    layer(s) that use it, found in torch.export's graph."""
    chain, e = [], error
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    reason = _first_line(chain[-1])
    op = next((m.group(1) for c in reversed(chain)
               for m in [re.search(r"\baten\.(\w+)", str(c))] if m), None)
    if op is None:
        return f"torch.onnx cannot export the module: {reason}"
    layers = _layers_using(model, x, dynamic, op)
    if len(layers) > 1:
        layers = [q for q in layers if not _exports_alone(model, q, x, dynamic)] or layers
    used = (f", which {', '.join(map(describe, layers))} use{'s' if len(layers) == 1 else ''}"
            if layers else "")
    return f"torch.onnx cannot export the operation aten.{op}{used}: {reason}"


def _layers_using(model, x, dynamic, op: str) -> list[str]:
    """The qualified names of the modules whose forward calls aten.<op>, in graph order."""
    import torch

    try:
        with _quiet():
            graph = torch.export.export(model, (x,), dynamic_shapes=dynamic).graph
    except Exception:  # noqa: BLE001 - then the error message alone must do
        return []
    found: list[str] = []
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if str(node.target).split(".")[:2] == ["aten", op] and stack:
            qualname = list(stack.values())[-1][0]
            if qualname and qualname not in found:
                found.append(qualname)
    return found


def _exports_alone(model, qualname: str, x, dynamic) -> bool:
    """Whether the submodule exports by itself, on the input it gets in the whole module."""
    import torch

    sub = model.get_submodule(qualname)
    seen: list[Any] = []
    handle = sub.register_forward_pre_hook(lambda _m, args: seen.append(args))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if not seen:
        return True
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(sub, seen[0], dynamo=True, opset_version=OPSET, verbose=False,
                              dynamic_shapes=(dynamic[0],) * len(seen[0]) if dynamic else None)
    except Exception:  # noqa: BLE001
        return False
    return True


def _modules_of(node) -> list[str]:
    """The qualified names of the modules an ONNX node comes from, outermost first."""
    scopes = next((p.value for p in node.metadata_props if p.key == _SCOPES), None)
    return re.findall(r"'([^']*)'", scopes)[1:-1] if scopes else []


def _runtime_failure(proto, error: Exception, describe) -> str:
    """The message for a graph onnxruntime cannot load or run, naming the layer of the node
    it names where it names one."""
    reason = _first_line(error)
    names = set(re.findall(r"node with name '([^']+)'|[Nn]ode \(([^)]+)\)", str(error)))
    names = {n for pair in names for n in pair if n}
    for node in proto.graph.node:
        if node.name in names and _modules_of(node):
            return (f"onnxruntime cannot run the ONNX graph of "
                    f"{describe(_modules_of(node)[-1])}: {reason}")
    return f"onnxruntime cannot run the exported model: {reason}"


def _mismatch(model, proto, x, describe, diff: float) -> str:
    """The message for an export that computes something else: the first layer whose ONNX
    output differs from torch's, found by making every layer's last value a graph output."""
    import onnx
    import torch

    message = (f"onnxruntime's output differs from torch's by up to {diff:.3g} (more than "
               f"{TOLERANCE:g}): the ONNX graph does not compute what the module does")
    leaves = {name for name, m in model.named_modules() if name and not list(m.children())}
    last_value: dict[str, str] = {}  # module -> the output of its last node
    for node in proto.graph.node:
        if not node.output:
            continue
        for name in _modules_of(node):
            if name in leaves:
                last_value[name] = node.output[0]
    if not last_value:
        return message
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    outputs = {o.name for o in probe.graph.output}
    for value in dict.fromkeys(last_value.values()):
        if value not in outputs:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(value))
    order: list[tuple[str, Any]] = []
    handles = [model.get_submodule(q).register_forward_hook(
        lambda _m, _a, out, q=q: order.append((q, out))) for q in last_value]
    try:
        with torch.no_grad():
            model(x)
        results = _session(probe.SerializeToString()).run(
            list(dict.fromkeys(last_value.values())), {"input": x.numpy()})
    except Exception:  # noqa: BLE001 - the overall message must do
        return message
    finally:
        for h in handles:
            h.remove()
    by_value = dict(zip(dict.fromkeys(last_value.values()), results))
    for qualname, out in order:
        got = by_value[last_value[qualname]]
        if not isinstance(out, torch.Tensor) or got.shape != tuple(out.shape):
            continue
        want = out.numpy()
        layer_diff = _max_diff(got, want)
        if not layer_diff <= _tolerance(want):
            return (f"the ONNX graph of {describe(qualname)} computes something else: "
                    f"onnxruntime's output of it differs from torch's by up to {layer_diff:.3g} "
                    f"(more than {TOLERANCE:g})")
    return message
