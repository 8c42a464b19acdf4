"""An independent reference for shapecheck: let PyTorch itself judge a spec.

``run_oracle(spec)`` takes a raw spec (the dict ``yaml.safe_load`` gives for a
spec file, as described in the spec-format contract) and builds every layer with
torch's own ``torch.nn`` constructor, passing the spec's fields through as
keyword arguments (lists become tuples), then pushes a real tensor through it
layer by layer. Whatever torch raises, at construction or in forward, makes the
spec invalid at that layer. The oracle is what the planner is checked against, so
it reads from shapecheck only what the spec format itself declares: the type names
(``KINDS``, less the merge layers of graph specs), the YAML keys of a block's layer lists, and which fields a spec may
leave out (each model's ``inferred_fields``). The torch class of a type is the
``torch.nn`` class of that name, found here; every shape, size and verdict is torch's.

Four layer types have no torch.nn class; the oracle brings small modules of its
own, written as torchvision writes them: ``permute`` (``x.permute(*dims)``),
``layerscale`` (a learnable per-channel scale on dim 1, weight (C, 1, ..., 1)
with one 1 per dim after the channels, so (C, 1, 1) on N×C×H×W),
``stochasticdepth`` (the identity in eval mode; ``p`` must lie in [0, 1] and
``mode`` be "row" or "batch") and ``frozenbatchnorm2d`` (torchvision.ops'
FrozenBatchNorm2d: weight, bias and statistics are buffers; it checks its input
as nn.BatchNorm2d does, 4-d with num_features channels, where torchvision's would
broadcast a single channel).

Fields a spec may leave out are read off the arriving tensor as a PyTorch user
would: channels (``in_channels``, ``num_features``, ``num_channels``) from dim 1;
``in_features`` from the last dim; ``normalized_shape`` as ``[last dim]``, the
channels-last use.

Devices. By default (``device="auto"``) every layer is built and run on the
meta device (no memory, no compute, so VGG-16 costs milliseconds), and every
layer that is cheap enough is run a second time on the CPU with a zero tensor
of the same shape; where the two disagree the CPU's verdict wins and the
disagreement is recorded in ``OracleResult.disagreements``. The second run is
needed because in torch 2.13 the meta kernels skip some argument checks that
the CPU kernels make. Found so far (meta accepts, CPU raises):

- conv2d with negative padding, dilation 0, kernel_size 0, out_channels 0,
  or an int-or-pair field given three items (``kernel_size: [3, 3, 3]``);
- convtranspose2d with the same five, and also with stride 0, with
  output_padding not smaller than both stride and dilation, and even with an
  ``in_channels`` that does not match the input's channels;
- softmax / logsoftmax with ``dim`` out of range.

Every other check we tried (kernel larger than the padded input, pool padding
over half the kernel, stride 0, ceil_mode, reflect/circular padding limits,
channel and feature mismatches, batchnorm on non-4-d input, the new layer types'
divisibility and rank checks) raises on both, though sometimes with a different
message (pixelshuffle with upscale_factor 0: ZeroDivisionError on meta,
"expects a positive upscale_factor" on the CPU). ``device="meta"`` or
``device="cpu"`` forces one device.

Blocks. ``residual``: body(x) + shortcut(x), broadcast as torch broadcasts
(N×C×1×1 + N×C×7×7 gives N×C×7×7). ``gate``: x * body(x), broadcast the same
way (squeeze-and-excitation); a residual's ``activation`` (a type name) runs
after the add. ``concat``: every branch gets x. ``split``: branch
i gets ``x.chunk(n, dim=1)[i]`` for n branches; where torch.chunk gives fewer
than n chunks (4 channels in 3 chunks gives 2) the block itself fails, before
any branch runs. concat and split join their outputs on dim 1. The block
checks (broadcast, chunk count) are made on shapes, so the verdict does not
depend on the device.

Other torch behaviour a reader of the results should know:

- Modules run in eval mode. In train mode batchnorm2d raises for a batch of one
  with a 1x1 feature map ("Expected more than 1 value per channel"), which
  depends on the batch size rather than on the architecture.
- Boolean fields are not type-checked by torch (``bias: "no"`` is truthy), and
  ``linear``/``adaptive*pool2d`` accept a size of 0 (the output is empty).
- Like batchnorm2d, groupnorm checks ``num_channels`` only through its weight:
  with ``affine: false`` any channel count divisible by num_groups passes.
- Some layers take a tensor of lower rank as one unbatched sample or simply pad
  whatever dims are last: zeropad2d / constantpad2d on N×F pad the batch dim,
  pixelshuffle and reflection/replication padding read N×C×L as (C, H, W),
  upsample with mode nearest on N×C×L upsamples L, prelu on a 1-d tensor sees
  one channel.
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

from shapecheck.core.layers import KINDS


class Permute(nn.Module):
    """x.permute(*dims), as torchvision.ops.misc.Permute; torch.nn has no class for it."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class LayerScale(nn.Module):
    """A learnable scale per channel (dim 1), as ConvNeXt's layer_scale: a weight of shape (C,)
    viewed as (C,) + (1,) * (ndim - 2) against the input."""

    def __init__(self, num_channels: int, init_value: float = 1e-6, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.full((num_channels,), init_value, dtype=torch.float32, device=device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.weight.shape[0]:
            # a weight of 1 channel would broadcast against any count: refused as any other
            channels = x.shape[1] if x.dim() >= 2 else "none"
            raise RuntimeError(f"layerscale: weight of {self.weight.shape[0]} channels, "
                               f"input with {channels}")
        return x * self.weight.view(-1, *[1] * (x.dim() - 2))


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth: drops whole rows (or the whole batch) in training,
    the identity in eval mode. Its argument checks are made at construction here."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        if p < 0.0 or p > 1.0:
            raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
        if mode not in ("batch", "row"):
            raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.dim() - 1) if self.mode == "row" else [1] * x.dim()
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.FrozenBatchNorm2d: x · scale + shift per channel, from buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5, device=None) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                           ("running_var", 1.0)):
            self.register_buffer(name, torch.full((num_features,), fill, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:  # as nn.BatchNorm2d checks
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
        if x.shape[1] != self.num_features:
            raise RuntimeError(f"running_mean should contain {x.shape[1]} elements not "
                               f"{self.num_features}")
        w = self.weight.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift


def _torch_class(name: str) -> type[nn.Module] | None:
    """The torch.nn class a type name names (its name, lowercased), or the oracle's own module
    for the types torch.nn lacks."""
    own = {cls.__name__.lower(): cls
           for cls in (Permute, LayerScale, StochasticDepth, FrozenBatchNorm2d)}
    by_name = {attr.lower(): getattr(nn, attr) for attr in dir(nn) if attr[:1].isupper()}
    cls = own.get(name) or by_name.get(name)
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


# The kinds that take the previous layer's output. Merge layers (add, mul, cat) join the named
# tensors of a graph spec (`from:`), which the oracle does not read: tests/test_graph.py checks
# them against hand-written torch modules.
SEQUENTIAL = {name: kind for name, kind in KINDS.items() if not kind.is_merge}
# Every such layer type that torch (or the oracle) can build, and what may be left out of each;
# the blocks are the oracle's own (_BLOCKS, below).
LAYER_CLASSES: dict[str, type[nn.Module]] = {
    name: cls for name, kind in SEQUENTIAL.items()
    if not kind.is_block and (cls := _torch_class(name)) is not None}
_INFERRED = {name: kind.inferred_fields for name, kind in KINDS.items() if kind.inferred_fields}
_FROM_LAST_DIM = {"in_features", "normalized_shape"}  # features: the last dim; else dim 1

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
    # blocks: residual [body, shortcut], gate [body], concat and split one list per branch
    branches: list[list[OracleLayer]] | None = None
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


class _Block(nn.Module):
    """A block as torch computes it: each branch (an nn.Sequential) gets its input (``inputs``)
    and the outputs join (``join``). Both check shapes explicitly, so that the verdict does not
    depend on the device."""

    options: tuple[str, ...] = ()  # the block's fields besides its layer lists

    def __init__(self, branches: Sequence[nn.Sequential]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    @classmethod
    def inputs(cls, x: torch.Tensor, n: int) -> Sequence[torch.Tensor]:
        return [x] * n

    def join(self, x: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ins = self.inputs(x, len(self.branches))
        return self.join(x, [b(i) for b, i in zip(self.branches, ins)])


class Residual(_Block):
    """y = activation(body(x) + shortcut(x)), broadcast; an empty shortcut is the identity."""

    options = ("activation",)

    def __init__(self, branches: Sequence[nn.Sequential], activation: Any = None) -> None:
        super().__init__(branches)
        cls = _torch_class(activation.lower()) if isinstance(activation, str) else None
        if activation is not None and cls is None:
            raise TypeError(f"residual: activation {activation!r} is no torch.nn class")
        self.activation = cls() if cls is not None else nn.Identity()

    def join(self, x: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
        return self.activation(_residual_add(*outs))


class Gate(_Block):
    """y = x * body(x), broadcast (squeeze-and-excitation: body ends in a sigmoid)."""

    def join(self, x: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
        return _gate_mul(x, outs[0])


class Concat(_Block):
    """Every branch gets the same input; outputs are joined on dim 1."""

    def join(self, x: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(outs, dim=1)


class Split(Concat):
    """Branch i gets x.chunk(n, dim=1)[i]; outputs are joined on dim 1."""

    @classmethod
    def inputs(cls, x: torch.Tensor, n: int) -> Sequence[torch.Tensor]:
        return _split(x, n)


# How torch computes each block of the spec format, written here, by hand: a block's meaning
# is what the planner is checked against.
_BLOCKS: dict[str, type[_Block]] = {
    "residual": Residual, "gate": Gate, "concat": Concat, "split": Split}
BLOCK_TYPES = tuple(_BLOCKS)


def _broadcasts(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch's rule, on shapes alone (so that meta and CPU agree): aligned from the last dim,
    each pair of sizes is equal or one of them is 1."""
    return all(m == n or 1 in (m, n) for m, n in zip(reversed(a.shape), reversed(b.shape)))


def _residual_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not _broadcasts(a, b):
        raise RuntimeError(
            f"residual: body output {tuple(a.shape)} and shortcut output {tuple(b.shape)} "
            "cannot be added (they do not broadcast)"
        )
    return a + b


def _gate_mul(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    if not _broadcasts(x, g):
        raise RuntimeError(
            f"gate: input {tuple(x.shape)} and body output {tuple(g.shape)} "
            "cannot be multiplied (they do not broadcast)"
        )
    return x * g


def _split(x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    chunks = x.chunk(n, dim=1)
    if len(chunks) != n:  # torch.chunk returns fewer chunks rather than raising
        raise RuntimeError(
            f"split: {x.shape[1]} channels give {len(chunks)} chunks with torch.chunk, "
            f"not one for each of the {n} branches"
        )
    return chunks


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
        for inferred in _INFERRED.get(tname, ()):
            if inferred in kwargs:
                continue
            # What a PyTorch user would read off the arriving tensor: channels are
            # dim 1, features the last dim. Torch then judges the rest.
            last = inferred in _FROM_LAST_DIM
            if x.dim() == 0 or (not last and x.dim() < 2):
                raise RuntimeError(
                    f"cannot infer {inferred} from an input of shape {tuple(x.shape)}"
                )
            value = int(x.shape[-1] if last else x.shape[1])
            kwargs[inferred] = (value,) if inferred == "normalized_shape" else value

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
            macs = 0 if y is None else _macs(tname, module, tuple(x.shape), tuple(y.shape))
            if self.device == "auto" and self._cheap(params, macs, x.shape, y):
                y = self._cpu_check(cls, kwargs, x.shape, y, main_exc, path)
            elif main_exc is not None:
                raise main_exc
            if main_exc is not None:  # meta raised, the CPU accepted: recount
                macs = _macs(tname, module, tuple(x.shape), tuple(y.shape))
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
        cls = _BLOCKS[tname]
        kind = KINDS[tname]  # the YAML keys of its layer lists
        keys = (*kind.list_fields, *((kind.lists_field,) if kind.lists_field else ()))
        extra = sorted(set(raw) - {"type", "name", *keys, *cls.options})
        if extra:
            raise TypeError(f"{tname}: unexpected keyword argument(s) {', '.join(map(str, extra))}")
        lists = [(key, raw.get(key) or []) for key in kind.list_fields]
        if kind.lists_field:
            branches = raw.get(kind.lists_field) or []
            if not isinstance(branches, list):
                raise TypeError(f"{tname}: {kind.lists_field} must be a list, got "
                                f"{type(branches).__name__}")
            lists += list(enumerate(branches))
        options = {k: raw[k] for k in cls.options if k in raw}
        # split hands each branch its own slice of the channels; the block fails here, before
        # any branch runs, where torch.chunk cannot give one slice per branch.
        try:
            inputs = cls.inputs(x, len(lists))
        except Exception as exc:
            raise _LayerFailure(path, exc) from exc
        seqs: list[nn.Sequential] = []
        outs: list[torch.Tensor] = []
        child_layers: list[list[OracleLayer]] = []
        for (key, items), branch_x in zip(lists, inputs):
            if not isinstance(items, list):
                raise TypeError(f"{tname}: {key} must be a list of layers")
            seq, y, layers = self.sequence(items, branch_x, path + (key,))
            seqs.append(seq)
            outs.append(y)
            child_layers.append(layers)
        try:
            module = cls(seqs, **options)
            y = module.join(x, outs)
            if self.device == "auto" and _numel(y.shape) <= _CPU_MAX_ELEMENTS:
                cpu_y = module.join(torch.zeros(x.shape), [torch.zeros(o.shape) for o in outs])
                if cpu_y.shape != y.shape:
                    self.disagreements.append(f"{_fmt_path(path)}: {tname} shapes differ")
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
    return tuple(p.shape) if isinstance(p, nn.Parameter) else None  # a buffer is no weight


def _macs(tname: str, module: nn.Module, inp: tuple[int, ...], out: tuple[int, ...]) -> int:
    """Multiply-accumulates per sample, as the contract counts them."""
    if tname == "convtranspose2d":  # every input element meets C_out/groups kernels
        per_in = module.out_channels // module.groups * math.prod(module.kernel_size)
        return _per_sample(inp, 4) * per_in
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
