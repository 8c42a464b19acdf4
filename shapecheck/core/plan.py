"""The Plan: every layer's shapes, parameters and MACs, plus diagnostics. Every output reads it."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any, Literal

from .analysis import field_json
from .diagnostics import Diagnostic
from .layers import LayerSpec
from .layers.base import Dims
from .record import Record

Shape = tuple[int | str, ...]  # as shown to users: the batch is an int or a symbol such as "N"
Status = Literal["ok", "failed", "skipped"]  # skipped: after the first failure, not planned

BYTES_PER_VALUE = 4  # float32


def with_batch(dims: Dims | None, batch: int | str) -> Shape | None:
    """Batch-factored dims as users see them: (1, 10, 24, 24) -> (64, 10, 24, 24) at batch 64,
    ("N", 10, 24, 24) for a symbol, and ("N*2", ...) where a flatten merged two batch rows."""
    if dims is None:
        return None
    k = dims[0]
    if isinstance(batch, int):
        return (batch * k, *dims[1:])
    return (batch if k == 1 else f"{batch}*{k}", *dims[1:])


class LayerPlan(Record):
    """One layer's row of the plan; a block's holds its branches' rows."""

    __slots__ = _fields = (
        "index", "path", "name", "type", "spec", "line", "column", "status", "batch",
        "input_dims", "output_dims", "weight_shape", "bias_shape", "params", "macs", "explain",
        "inferred_args", "branches", "branch_keys", "branch_inputs", "activation_values",
        "receptive_field", "field_explain", "inputs", "merged_dims", "like")

    def __init__(self, index: int, path: tuple[int | str, ...], name: str, type: str,
                 spec: LayerSpec, line: int | None = None, column: int | None = None,
                 status: Status = "skipped", batch: int | str = "N",
                 input_dims: Dims | None = None, output_dims: Dims | None = None,
                 weight_shape: tuple[int, ...] | None = None,
                 bias_shape: tuple[int, ...] | None = None, params: int = 0, macs: int = 0,
                 explain: Sequence[str] | None = None, inferred_args: dict[str, Any] | None = None,
                 branches: list[list[LayerPlan]] | None = None,
                 branch_keys: list[int | str] | None = None,
                 branch_inputs: list[Dims] | None = None, activation_values: int = 0,
                 receptive_field: tuple | None = None,
                 field_explain: Sequence[str] | None = None,
                 inputs: tuple[str, ...] | None = None,
                 merged_dims: list[Dims] | None = None, like: str | None = None) -> None:
        self.index = index  # position in its own list (top level or branch)
        self.path = path  # full place in the tree, e.g. (3,) or (3, "body", 1)
        self.name = name
        self.type = type
        self.spec = spec
        self.line = line
        self.column = column
        self.status = status
        self.batch = batch
        # The shapes with the batch factored out (layers/base.py); input_shape and
        # output_shape put the batch back for display.
        self.input_dims = input_dims
        self.output_dims = output_dims
        self.weight_shape = weight_shape
        self.bias_shape = bias_shape
        self.params = params
        self.macs = macs
        self.explain = [] if explain is None else explain  # a list, or Lines written on use
        # Constructor arguments the planner worked out (in_channels, in_features, ...).
        self.inferred_args = {} if inferred_args is None else inferred_args
        # Blocks only: residual [body, shortcut]; concat one list per branch.
        self.branches = branches
        self.branch_keys = branch_keys
        self.branch_inputs = branch_inputs  # what each branch gets (a split gives slices)
        self.activation_values = activation_values  # output elements per sample, children too
        # The receptive field of the output units, one analysis.Field or NoField per axis
        # (H, W), and its arithmetic for --explain; None where the layer was not planned.
        self.receptive_field = receptive_field
        self.field_explain = [] if field_explain is None else field_explain
        # The tensors the layer reads (its `from:`), by layer name (`prev` and a template use's
        # name resolved) or `input`; None where it reads the previous layer's (graph.py).
        self.inputs = inputs
        self.merged_dims = merged_dims
        self.like = like  # the tensor whose H×W an upsample takes (`size: {like: …}`)

    @property
    def input_shape(self) -> Shape | None:
        return with_batch(self.input_dims, self.batch)

    @property
    def output_shape(self) -> Shape | None:
        return with_batch(self.output_dims, self.batch)

    def branch_input_shape(self, i: int) -> Shape | None:
        """The shape branch i gets (null shapes where the block was not planned)."""
        if self.status == "skipped" or self.branch_inputs is None:
            return self.input_shape
        return with_batch(self.branch_inputs[i], self.batch)

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def is_block(self) -> bool:
        return self.spec.is_block

    @property
    def settings(self) -> str:
        return self.spec.settings()

    @property
    def torch_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for torch.nn, the inferred ones (in_channels ...) filled in."""
        return self.spec.torch_kwargs(self.inferred_args)

    def to_dict(self) -> dict:
        d = {
            "index": self.index,
            "name": self.name,
            "type": self.type,
            "line": self.line,
            "input_shape": _list(self.input_shape),
            "output_shape": _list(self.output_shape),
            "weight_shape": _list(self.weight_shape),
            "bias_shape": _list(self.bias_shape),
            "params": self.params,
            "macs": self.macs,
        }
        rf = [field_json(f) for f in self.receptive_field or (None, None)]
        d["receptive_field"], d["jump"], d["start"] = (
            None if any(v[k] is None for v in rf) else [v[k] for v in rf] for k in range(3))
        if self.inputs is not None:
            d["inputs"] = list(self.inputs)
        if self.branches is not None:
            d["branches"] = [[layer.to_dict() for layer in branch] for branch in self.branches]
        return d


class Plan(Record):
    """A spec's plan: its layers' rows and its diagnostics."""

    _fields = ("name", "description", "source", "batch", "input_dims", "layers", "diagnostics",
               "loss", "scale", "scales", "templates", "outputs", "sized")

    def __init__(self, name: str, description: str | None, source: str | None,
                 batch: int | str, input_dims: Dims | None, layers: list[LayerPlan],
                 diagnostics: list[Diagnostic], loss: str | None = None,
                 scale: str | None = None, scales: tuple[str, ...] = (),
                 templates: Any = None, outputs: tuple[tuple[str, int], ...] = (),
                 sized: bool = False) -> None:
        self.name = name
        self.description = description
        self.source = source  # the spec file, if any
        self.batch = batch
        self.input_dims = input_dims  # batch-factored; None when the spec breaks the schema
        self.layers = layers
        self.diagnostics = diagnostics
        self.loss = loss  # train.loss, for lints and training
        self.scale = scale  # the scale the spec was expanded at, if it has scales
        self.scales = scales  # every scale the spec declares
        # A templated spec's function giving its templates.TemplateCode: `build` writes
        # classes.
        self.templates = templates
        # The tensors the network returns, where the spec lists them: (name, top-level index).
        self.outputs = outputs
        # Whether its templates read the incoming H or W ($in_h, or $in_channels after a
        # flatten): its layers are those of this input size, which solve's arithmetic over
        # sizes cannot follow.
        self.sized = sized

    def output_rows(self) -> list[LayerPlan]:
        """The rows whose tensors the network returns: those `outputs:` names, else the last."""
        return [self.layers[i] for _, i in self.outputs] if self.outputs else self.layers[-1:]

    @property
    def input_shape(self) -> Shape | None:
        return with_batch(self.input_dims, self.batch)

    @property
    def output_dims(self) -> Dims | None:
        """The output's dims; with several `outputs:`, the first one listed."""
        if not self.valid or not self.layers:
            return None
        return self.output_rows()[0].output_dims

    @property
    def default_loss(self) -> str:
        """The loss training uses when the spec names none: nll_loss after a layer that gives
        log-probabilities (logsoftmax), else cross_entropy."""
        last = self.layers[-1].spec if self.layers else None
        return "nll_loss" if last is not None and last.outputs == "log_probabilities" \
            else "cross_entropy"

    @property
    def valid(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if not d.is_error]

    def marks(self) -> dict[tuple, str]:
        """Each layer's status as the outputs mark it, by path. The planner marks a block failed
        when a layer inside it fails; only the layers an error names are marked ``failed``,
        and the blocks around them ``holds`` (the failure is inside)."""
        named = {d.layer_path for d in self.errors if d.layer is not None}
        marks = {}
        for layer in self.walk():
            mark = layer.status
            if mark == "failed" and layer.path not in named and any(
                    p[:len(layer.path)] == layer.path for p in named):
                mark = "holds"
            marks[layer.path] = mark
        return marks

    @property
    def output_shape(self) -> Shape | None:
        return with_batch(self.output_dims, self.batch)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def trainable_params(self) -> int:
        return self.params  # a spec cannot freeze parameters

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def param_bytes(self) -> int:
        return self.params * BYTES_PER_VALUE

    @property
    def activation_bytes(self) -> int:
        """Every layer's output, kept for backward, at the spec's batch (per sample if symbolic)."""
        per_sample = sum(layer.activation_values for layer in self.layers)
        batch = self.batch if isinstance(self.batch, int) else 1
        return per_sample * batch * BYTES_PER_VALUE

    def walk(self):
        """Every LayerPlan in order, blocks before their contents."""
        # A stack of iterators, not nested generators: each level of those passed every row
        # below it up one more generator.
        stack = [iter(self.layers)]
        while stack:
            for layer in stack[-1]:
                yield layer
                if layer.branches:
                    stack.append(chain.from_iterable(layer.branches))
                    break
            else:
                stack.pop()

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "file": self.source,
            **({"scale": self.scale} if self.scale else {}),
            "valid": self.valid,
            "input_shape": _list(self.input_shape),
            "output_shape": _list(self.output_shape),
            **({"outputs": {name: _list(self.layers[i].output_shape) if self.valid else None
                            for name, i in self.outputs}} if self.outputs else {}),
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": {
                "params": self.params,
                "trainable_params": self.trainable_params,
                "macs": self.macs,
                "param_bytes": self.param_bytes,
                "activation_bytes": self.activation_bytes,
            },
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }


def _list(shape) -> list | None:
    return None if shape is None else list(shape)
