"""An independent reference for shapecheck: let PyTorch itself judge a spec.

``run_oracle(spec)`` takes a raw spec (the dict ``yaml.safe_load`` gives for a
spec file, as described in the spec-format contract) and builds every layer with
torch's own ``torch.nn`` constructor, passing the spec's fields through as
keyword arguments (lists become tuples), then pushes a real tensor through it
layer by layer. Whatever torch raises, at construction or in forward, makes the
spec invalid at that layer. Nothing here imports shapecheck: the oracle is what
the planner is checked against.

Devices. By default (``device="auto"``) every layer is built and run on the
meta device (no memory, no compute, so VGG-16 costs milliseconds), and every
layer that is cheap enough is run a second time on the CPU with a zero tensor
of the same shape; where the two disagree the CPU's verdict wins and the
disagreement is recorded in ``OracleResult.disagreements``. The second run is
needed because in torch 2.13 the meta kernels skip some argument checks that
the CPU kernels make. Found so far (meta accepts, CPU raises):

- conv2d with negative padding, dilation 0, kernel_size 0, out_channels 0,
  or an int-or-pair field given three items (``kernel_size: [3, 3, 3]``);
- softmax / logsoftmax with ``dim`` out of range.

Every other check we tried (kernel larger than the padded input, pool padding
over half the kernel, stride 0, ceil_mode, reflect/circular padding limits,
channel and feature mismatches, batchnorm on non-4-d input) raises on both.
``device="meta"`` or ``device="cpu"`` forces one device.

Other torch behaviour a reader of the results should know:

- Modules run in eval mode. In train mode batchnorm2d raises for a batch of one
  with a 1x1 feature map ("Expected more than 1 value per channel"), which
  depends on the batch size rather than on the architecture.
- Boolean fields are not type-checked by torch (``bias: "no"`` is truthy), and
  ``linear``/``adaptive*pool2d`` accept a size of 0 (the output is empty).
- A residual block requires body and shortcut outputs of exactly equal shape,
  as the contract says; plain ``torch.add`` would broadcast ``[N,C,1,1]``
  against ``[N,C,7,7]`` and silently pass.
- UserWarnings (dropout2d on a non-4-d input, softmax without ``dim``) are not
  failures; they are collected in ``OracleLayer.warnings``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

LAYER_CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__.lower(): cls
    for cls in (
        nn.Conv2d,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d,
        nn.BatchNorm2d,
        nn.Dropout,
        nn.Dropout2d,
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.ELU,
        nn.GELU,
        nn.SiLU,
        nn.Sigmoid,
        nn.Tanh,
        nn.Identity,
        nn.Softmax,
        nn.LogSoftmax,
        nn.Flatten,
        nn.Linear,
    )
}
BLOCK_TYPES = ("residual", "concat")

# Fields the contract lets a spec leave out, and the input dim they come from.
_INFERRED = {"conv2d": "in_channels", "batchnorm2d": "num_features", "linear": "in_features"}

# A layer is re-run on the CPU when all of these hold (per whole batch).
_CPU_MAX_PARAMS = 1 << 23
_CPU_MAX_ELEMENTS = 1 << 23
_CPU_MAX_MACS = 1 << 29


@dataclass
class OracleLayer:
    index: int  # position in its own list (top level, or within a branch)
    type: str  # lower-case type name
    output_shape: tuple[int, ...]
    params: int
    macs: int  # per sample
    weight_shape: tuple[int, ...] | None = None
    bias_shape: tuple[int, ...] | None = None
    branches: list[list[OracleLayer]] | None = None  # blocks: [body, shortcut] / one per branch
    name: str | None = None
    input_shape: tuple[int, ...] | None = None
    path: tuple[int | str, ...] = ()
    warnings: list[str] = field(default_factory=list)


@dataclass
class OracleResult:
    valid: bool
    failed_index: int | None
    failed_path: tuple[int | str, ...] | None
    error: str | None
    layers: list[OracleLayer]
    output_shape: tuple[int, ...] | None
    total_params: int
    total_macs: int
    module: nn.Module
    input_shape: tuple[int, ...] | None = None
    error_type: str | None = None
    device: str = "auto"
    disagreements: list[str] = field(default_factory=list)


class Residual(nn.Module):
    """y = body(x) + shortcut(x); an empty shortcut is the identity."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _residual_add(self.body(x), self.shortcut(x))


class Concat(nn.Module):
    """Every branch gets the same input; outputs are joined on dim 1."""

    def __init__(self, branches: Sequence[nn.Sequential]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


def _residual_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape != b.shape:
        raise RuntimeError(
            f"residual: body output {tuple(a.shape)} and shortcut output {tuple(b.shape)} differ"
        )
    return a + b


class _LayerFailure(Exception):
    def __init__(self, path: tuple[int | str, ...], exc: BaseException) -> None:
        super().__init__(str(exc))
        self.path = path
        self.exc = exc


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _per_sample(shape: tuple[int, ...], batched_dims: int) -> int:
    """Elements per sample: drop the batch dim when the tensor still has one."""
    return _numel(shape[1:]) if len(shape) >= batched_dims else _numel(shape)


class _Runner:
    def __init__(self, device: str) -> None:
        if device not in ("auto", "meta", "cpu"):
            raise ValueError(f"device must be 'auto', 'meta' or 'cpu', not {device!r}")
        self.device = device
        self.main = torch.device("cpu" if device == "cpu" else "meta")
        self.disagreements: list[str] = []

    # -- one plain layer --------------------------------------------------
    def _construct(self, cls: type[nn.Module], kwargs: dict[str, Any], dev: torch.device):
        if "device" in inspect.signature(cls.__init__).parameters and "device" not in kwargs:
            kwargs = {**kwargs, "device": dev}
        return cls(**kwargs)

    def _forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        module.eval()
        with torch.no_grad():
            return module(x)

    def leaf(
        self, raw: dict[str, Any], x: torch.Tensor, index: int, path: tuple[int | str, ...]
    ) -> tuple[nn.Module, torch.Tensor, OracleLayer]:
        tname = raw["type"].lower()
        cls = LAYER_CLASSES[tname]
        kwargs = {k: _tuplify(v) for k, v in raw.items() if k not in ("type", "name")}
        inferred = _INFERRED.get(tname)
        if inferred and inferred not in kwargs:
            # What a PyTorch user would read off the arriving tensor: channels are
            # dim 1, features the last dim. Torch then judges the rest.
            if x.dim() == 0 or (tname != "linear" and x.dim() < 2):
                raise RuntimeError(
                    f"cannot infer {inferred} from an input of shape {tuple(x.shape)}"
                )
            kwargs[inferred] = int(x.shape[-1] if tname == "linear" else x.shape[1])

        caught: list[str] = []
        with warnings.catch_warnings(record=True) as wlist:
            warnings.simplefilter("always")
            module = self._construct(cls, kwargs, self.main)
            params = sum(p.numel() for p in module.parameters())
            main_exc: BaseException | None = None
            y: torch.Tensor | None = None
            try:
                y = self._forward(module, x)
            except Exception as exc:  # noqa: BLE001 - any exception is torch's verdict
                main_exc = exc
            macs = 0 if y is None else _macs(tname, module, tuple(y.shape))
            if self.device == "auto" and self._cheap(params, macs, x.shape, y):
                y = self._cpu_check(cls, kwargs, x.shape, y, main_exc, path)
            elif main_exc is not None:
                raise main_exc
            if main_exc is not None:  # meta raised, the CPU accepted: recount
                macs = _macs(tname, module, tuple(y.shape))
            # dict.fromkeys: the CPU re-run repeats the meta run's warnings
            caught = list(dict.fromkeys(str(w.message) for w in wlist))
        assert y is not None
        out = tuple(y.shape)
        layer = OracleLayer(
            index=index,
            type=tname,
            output_shape=out,
            params=params,
            macs=macs,
            weight_shape=_param_shape(module, "weight"),
            bias_shape=_param_shape(module, "bias"),
            name=raw.get("name"),
            input_shape=tuple(x.shape),
            path=path,
            warnings=caught,
        )
        return module, y, layer

    def _cheap(self, params: int, macs: int, in_shape, y: torch.Tensor | None) -> bool:
        """Whether a CPU re-run of this layer costs next to nothing."""
        if params > _CPU_MAX_PARAMS or _numel(in_shape) > _CPU_MAX_ELEMENTS:
            return False
        if y is None:  # meta raised: the CPU is expected to raise early as well
            return True
        batch = in_shape[0] if in_shape else 1
        return _numel(y.shape) <= _CPU_MAX_ELEMENTS and macs * batch <= _CPU_MAX_MACS

    def _cpu_check(self, cls, kwargs, in_shape, y_main, main_exc, path) -> torch.Tensor:
        cpu_exc: BaseException | None = None
        y_cpu = None
        try:
            cpu_module = self._construct(cls, kwargs, torch.device("cpu"))
            y_cpu = self._forward(cpu_module, torch.zeros(in_shape))
        except Exception as exc:  # noqa: BLE001 - any exception is torch's verdict
            cpu_exc = exc
        where = _fmt_path(path)
        if cpu_exc is not None:
            if main_exc is None:
                self.disagreements.append(
                    f"{where}: meta accepted (output {tuple(y_main.shape)}), cpu raised "
                    f"{type(cpu_exc).__name__}: {cpu_exc}"
                )
            raise cpu_exc
        assert y_cpu is not None
        if main_exc is not None:
            self.disagreements.append(
                f"{where}: meta raised {type(main_exc).__name__}: {main_exc}, cpu accepted"
            )
            return torch.empty(y_cpu.shape, device=self.main)
        if y_main.shape != y_cpu.shape:
            self.disagreements.append(
                f"{where}: meta output {tuple(y_main.shape)}, cpu output {tuple(y_cpu.shape)}"
            )
            return torch.empty(y_cpu.shape, device=self.main)
        return y_main

    # -- blocks -------------------------------------------------------------
    def block(
        self, raw: dict[str, Any], x: torch.Tensor, index: int, path: tuple[int | str, ...]
    ) -> tuple[nn.Module, torch.Tensor, OracleLayer]:
        tname = raw["type"].lower()
        if tname == "residual":
            allowed = {"type", "name", "body", "shortcut"}
            lists = [("body", raw.get("body") or []), ("shortcut", raw.get("shortcut") or [])]
        else:
            allowed = {"type", "name", "branches"}
            branches = raw.get("branches") or []
            if not isinstance(branches, list):
                raise TypeError(f"concat: branches must be a list, got {type(branches).__name__}")
            lists = list(enumerate(branches))
        extra = sorted(set(raw) - allowed)
        if extra:
            raise TypeError(f"{tname}: unexpected keyword argument(s) {', '.join(map(str, extra))}")
        seqs: list[nn.Sequential] = []
        outs: list[torch.Tensor] = []
        child_layers: list[list[OracleLayer]] = []
        for key, items in lists:
            if not isinstance(items, list):
                raise TypeError(f"{tname}: {key} must be a list of layers")
            seq, y, layers = self.sequence(items, x, path + (key,))
            seqs.append(seq)
            outs.append(y)
            child_layers.append(layers)
        try:
            if tname == "residual":
                # The explicit shape check makes the verdict device-independent.
                module: nn.Module = Residual(seqs[0], seqs[1])
                y = _residual_add(outs[0], outs[1])
            else:
                module = Concat(seqs)
                y = torch.cat(outs, dim=1)
                if self.device == "auto" and _numel(y.shape) <= _CPU_MAX_ELEMENTS:
                    cpu_y = torch.cat([torch.zeros(o.shape) for o in outs], dim=1)
                    if cpu_y.shape != y.shape:
                        self.disagreements.append(f"{_fmt_path(path)}: concat shapes differ")
                        y = torch.empty(cpu_y.shape, device=self.main)
        except Exception as exc:
            raise _LayerFailure(path, exc) from exc
        layer = OracleLayer(
            index=index,
            type=tname,
            output_shape=tuple(y.shape),
            params=sum(child.params for layers in child_layers for child in layers),
            macs=sum(child.macs for layers in child_layers for child in layers),
            branches=child_layers,
            name=raw.get("name"),
            input_shape=tuple(x.shape),
            path=path,
        )
        return module, y, layer

    # -- a list of layers -------------------------------------------------------
    def one(
        self, raw: Any, x: torch.Tensor, index: int, path: tuple[int | str, ...]
    ) -> tuple[nn.Module, torch.Tensor, OracleLayer]:
        try:
            if isinstance(raw, str):
                raw = {"type": raw}
            if not isinstance(raw, dict):
                raise TypeError(f"a layer must be a mapping or a string, got {type(raw).__name__}")
            tname = raw.get("type")
            if not isinstance(tname, str):
                raise TypeError("a layer needs a string 'type'")
            if tname.lower() in BLOCK_TYPES:
                return self.block(raw, x, index, path)
            if tname.lower() not in LAYER_CLASSES:
                raise TypeError(f"unknown layer type {tname!r}")
            return self.leaf(raw, x, index, path)
        except _LayerFailure:
            raise
        except Exception as exc:
            raise _LayerFailure(path, exc) from exc

    def sequence(
        self, items: list[Any], x: torch.Tensor, prefix: tuple[int | str, ...]
    ) -> tuple[nn.Sequential, torch.Tensor, list[OracleLayer]]:
        modules: list[nn.Module] = []
        layers: list[OracleLayer] = []
        for j, raw in enumerate(items):
            module, x, layer = self.one(raw, x, j, prefix + (j,))
            modules.append(module)
            layers.append(layer)
        return nn.Sequential(*modules), x, layers


def _param_shape(module: nn.Module, attr: str) -> tuple[int, ...] | None:
    p = getattr(module, attr, None)
    return tuple(p.shape) if isinstance(p, torch.Tensor) else None


def _macs(tname: str, module: nn.Module, out: tuple[int, ...]) -> int:
    """Multiply-accumulates per sample, as the contract counts them."""
    if tname == "conv2d":
        per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
        return _per_sample(out, 4) * per_out
    if tname == "linear":
        if not out or module.out_features == 0:
            return 0
        positions = _per_sample(out, 2) // module.out_features
        return module.in_features * module.out_features * positions
    return 0


def _fmt_path(path: tuple[int | str, ...]) -> str:
    return "layer " + "/".join(map(str, path))


def run_oracle(
    spec: dict,
    batch: int = 2,
    input_shape: tuple | None = None,
    *,
    device: str = "auto",
) -> OracleResult:
    """Build ``spec`` with torch.nn and run a ``[batch, *input_shape]`` tensor through it.

    ``input_shape`` defaults to ``spec["input"]["shape"]``. ``device`` is "auto"
    (meta, with a CPU re-run of cheap layers), "meta" or "cpu".
    """
    if input_shape is None:
        input_shape = tuple(spec["input"]["shape"])
    shape = (int(batch), *(int(d) for d in input_shape))
    runner = _Runner(device)
    x = torch.zeros(shape, device=runner.main)
    items = spec.get("layers") or []
    modules: list[nn.Module] = []
    layers: list[OracleLayer] = []
    failure: _LayerFailure | None = None
    for i, raw in enumerate(items):
        try:
            module, x, layer = runner.one(raw, x, i, (i,))
        except _LayerFailure as f:
            failure = f
            break
        modules.append(module)
        layers.append(layer)
    seq = nn.Sequential(*modules)
    common: dict[str, Any] = {
        "layers": layers,
        "total_params": sum(layer.params for layer in layers),
        "total_macs": sum(layer.macs for layer in layers),
        "module": seq,
        "input_shape": shape,
        "device": device,
        "disagreements": runner.disagreements,
    }
    if failure is None:
        return OracleResult(
            valid=True,
            failed_index=None,
            failed_path=None,
            error=None,
            output_shape=tuple(x.shape),
            **common,
        )
    return OracleResult(
        valid=False,
        failed_index=int(failure.path[0]),
        failed_path=failure.path,
        error=str(failure.exc),
        error_type=type(failure.exc).__name__,
        output_shape=None,
        **common,
    )
