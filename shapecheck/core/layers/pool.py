"""Pools: max/avg with PyTorch's pooling_output_shape (ceil_mode included), and adaptive pools."""

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from .base import (
    Context,
    Dims,
    Flag,
    Inferred,
    LayerSpec,
    Lines,
    NonNegPair,
    PosInt,
    PosPair,
    ShapeError,
    Stricter,
    _strict_int,
    int_schema,
    model_named,
    need_rank,
    on_first_use,
    pair,
)
from .window import (
    SAME,
    Fixed,
    Window,
    effective,
    floor_line,
    pad_text,
    pool_out,
    settings,
    spatial,
    unused_rows,
    unused_warning,
)

# Each pool setting's Window per axis (0 for H, 1 for W), made once.
_WINDOWS: dict[tuple, Window] = {}


@on_first_use
def _make__WindowPool():
    class _WindowPool(LayerSpec):
        """The shared rule of maxpool2d and avgpool2d (they differ only in dilation)."""

        kernel_size: PosPair
        stride: PosPair | None = None  # None: the kernel size, as in PyTorch
        padding: NonNegPair = 0
        ceil_mode: Flag = False

        family = "pool"
        name_prefix = "pool"

        def _dilation(self) -> tuple[int, int]:
            return (1, 1)

        def settings(self) -> str:
            stride = self.stride if self.stride is not None else self.kernel_size
            parts = settings(self.kernel_size, stride, self.padding, self._dilation(),
                             show_zero_padding=False)
            if self.ceil_mode:
                parts.append("ceil")
            return " ".join(parts)

        def axis_map(self, x: Dims, dim: int):
            i = spatial(x, dim)
            if i is None:
                return SAME, dim
            d = self.__dict__  # the settings at once (as conv2d's axis_map reads them)
            key = (d["kernel_size"], d["stride"], d["padding"], d["ceil_mode"], self._dilation(), i)
            window = _WINDOWS.get(key)
            if window is None:
                if len(_WINDOWS) > 1024:  # a long-lived process (the language server)
                    _WINDOWS.clear()
                stride = self.stride if self.stride is not None else self.kernel_size
                p = pair(self.padding)[i]
                window = Window(pair(self.kernel_size)[i], pair(stride)[i], p, p,
                                self._dilation()[i], ceil=self.ceil_mode)
                other = _WINDOWS.get((*key[:-1], 1 - i))
                # a square pool's two axes share one window: the field is worked out once
                window = _WINDOWS[key] = other if other == window else window
            return window, dim

        def infer(self, x: Dims, ctx: Context) -> Inferred:
            need_rank(x, (3, 4), self.type)
            kernel = pair(self.kernel_size)
            stride = pair(self.stride if self.stride is not None else self.kernel_size)
            pad, dil = pair(self.padding), self._dilation()
            for p, k in zip(pad, kernel):
                if p > k // 2:
                    raise ShapeError(
                        "SC208",
                        f"padding {p} is more than half the kernel size {k}",
                        f"use padding: {k // 2} or less",
                    )
            out_hw, warnings, unused = [], [], []
            axes = tuple(zip(("H", "W"), x[-2:], kernel, stride, pad, dil))
            for axis, size, k, s, p, d in axes:
                out = pool_out(size, k, s, p, d, self.ceil_mode)
                if out < 1:
                    raise ShapeError(
                        "SC202",
                        f"kernel {kernel[0]}×{kernel[1]} on an input of {axis}={size} (padding {p}) "
                        f"gives an output of {axis}={out}",
                        None,  # the planner adds the smallest input that works
                    )
                out_hw.append(out)
                unused.append(0 if self.ceil_mode else unused_rows(size, p, p, effective(k, d), s))
            if unused[0] or unused[1]:
                warnings.append(unused_warning(tuple(unused), x[-2:], stride,
                                               "use ceil_mode: true to keep them, or adjust padding"))

            def explain() -> list[str]:
                lines = []
                for (axis, size, k, s, p, d), out in zip(axes, out_hw):
                    num = f"{size} + 2·{p} − {d}·({k}−1) − 1"
                    if self.ceil_mode:
                        line = f"{axis}_out = ceil(({num}) / {s}) + 1"
                        floor_based = (size + 2 * p - d * (k - 1) - 1 + s - 1) // s + 1
                        if floor_based != out:
                            line += f" = {floor_based}, minus the last window (it would start in the padding)"
                        lines.append(f"{line} = {out}")
                    else:
                        lines.append(floor_line(axis, size, pad_text(p, p), d, k, s, out))
                return lines

            return Inferred(out=(*x[:-2], *out_hw), explain=Lines(explain), warnings=warnings)

    return _WindowPool


@on_first_use
def _make_MaxPool2d():
    class MaxPool2d(_make__WindowPool()):
        type: Literal["maxpool2d"]
        dilation: PosPair = 1

        torch_class = "MaxPool2d"

        def _dilation(self) -> tuple[int, int]:
            return pair(self.dilation)

    return MaxPool2d


@on_first_use
def _make_AvgPool2d():
    class AvgPool2d(_make__WindowPool()):
        type: Literal["avgpool2d"]
        count_include_pad: Flag = True
        divisor_override: PosInt | None = None

        torch_class = "AvgPool2d"

    return AvgPool2d


def _output_size(value: Any) -> Any:
    """An int or a pair whose items may be null (keep that input size), as in PyTorch."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise PydanticCustomError(
                "pair_length", "must be an int or a pair [h, w], got {n} items", {"n": len(value)}
            )
        return tuple(None if v is None else _strict_int(v, 1) for v in value)
    return _strict_int(value, 1)


@on_first_use
def _make__AdaptivePool():
    class _AdaptivePool(LayerSpec):
        output_size: Annotated[Any, BeforeValidator(_output_size), WithJsonSchema(
            {"anyOf": [int_schema(1), {"type": "array", "minItems": 2, "maxItems": 2,
                                       "items": {"anyOf": [int_schema(1), {"type": "null"}]}}]})]

        family = "pool"
        name_prefix = "pool"

        def settings(self) -> str:
            oh, ow = pair(self.output_size)
            return f"→ {'in' if oh is None else oh}×{'in' if ow is None else ow}"

        def axis_map(self, x: Dims, dim: int):
            i = spatial(x, dim)
            size = None if i is None else pair(self.output_size)[i]
            return (SAME if size is None else Fixed(size)), dim

        def infer(self, x: Dims, ctx: Context) -> Inferred:
            need_rank(x, (3, 4), self.type)
            oh, ow = pair(self.output_size)
            out_hw = (x[-2] if oh is None else oh, x[-1] if ow is None else ow)
            explain = [f"adaptive: {x[-2]}×{x[-1]} → {out_hw[0]}×{out_hw[1]} (output_size)"]
            return Inferred(out=(*x[:-2], *out_hw), explain=explain)

    return _AdaptivePool


@on_first_use
def _make_AdaptiveAvgPool2d():
    class AdaptiveAvgPool2d(_make__AdaptivePool()):
        type: Literal["adaptiveavgpool2d"]

        torch_class = "AdaptiveAvgPool2d"
        stricter_than_torch = (
            Stricter("SC209", (2,), why="with output_size 1 torch takes the mean over the last "
                     "two dims, which on N×F averages over the batch"),
        )

    return AdaptiveAvgPool2d


@on_first_use
def _make_AdaptiveMaxPool2d():
    class AdaptiveMaxPool2d(_make__AdaptivePool()):
        type: Literal["adaptivemaxpool2d"]

        torch_class = "AdaptiveMaxPool2d"

    return AdaptiveMaxPool2d


def __getattr__(name: str):  # a model by its class name, defined on first use
    return model_named(globals(), name)
