"""conv2d: PyTorch's Conv2d shape rule, parameters and MACs."""

import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from .base import (
    Context,
    Dims,
    Flag,
    Inferred,
    LayerSpec,
    PosInt,
    PosPair,
    ShapeError,
    _int_or_pair,
    fmt,
    need_rank,
    pair,
    times,
)
from .window import (
    conv_out,
    effective,
    floor_line,
    kernel_too_large,
    pad_text,
    same_padding,
    settings,
    unused_rows,
    unused_warning,
)


def _padding(value: Any) -> Any:
    if isinstance(value, str):
        if value.lower() in ("same", "valid"):
            return value.lower()
        raise PydanticCustomError(
            "padding", "must be an int, a pair [h, w], 'same' or 'valid', got {value}",
            {"value": repr(value)},
        )
    return _int_or_pair(value, 0)


def _common_divisors(a: int, b: int, count: int = 12) -> list[int]:
    """Up to `count` common divisors of a and b, the smallest first, for the groups hint.

    Trial division stops after `count` divisors or 10⁵ tries (then it lists those found and
    their partners): channel counts may be huge, and trying every number up to the gcd took
    minutes for billions of channels."""
    g = math.gcd(a, b)
    small, large = [], {g}  # divisors up to √g, and their partners above it
    d = 1
    while d * d <= g and d <= 100_000 and len(small) < count:
        if g % d == 0:
            small.append(d)
            large.add(g // d)
        d += 1
    return sorted({*small, *large})[:count]


# F.pad's limits per side: reflect mirrors without repeating the edge, so it needs pad < size;
# circular wraps around at most once, pad <= size. zeros and replicate pad any amount.
_PAD_RULE = {"reflect": "less than the input size", "circular": "at most the input size"}


def _pad_limit(mode: str, size: int) -> int | None:
    """The largest padding per side that padding_mode allows on an input of this size."""
    return {"reflect": size - 1, "circular": size}.get(mode)


class Conv2d(LayerSpec):
    type: Literal["conv2d"]
    in_channels: PosInt | None = None
    out_channels: PosInt
    kernel_size: PosPair
    stride: PosPair = 1
    padding: Annotated[Any, BeforeValidator(_padding)] = 0  # int, [h, w], 'same' or 'valid'
    dilation: PosPair = 1
    groups: PosInt = 1
    bias: Flag = True
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros"

    torch_class = "Conv2d"
    family = "conv"
    name_prefix = "conv"

    def bias_before_norm(self) -> bool:
        return self.bias

    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)) padding."""
        kh, kw = pair(self.kernel_size)
        dh, dw = pair(self.dilation)
        if self.padding == "same":
            return same_padding(kh, dh), same_padding(kw, dw)
        if self.padding == "valid":
            return (0, 0), (0, 0)
        ph, pw = pair(self.padding)
        return (ph, ph), (pw, pw)

    def settings(self) -> str:
        parts = settings(self.kernel_size, self.stride, self.padding, self.dilation)
        if self.groups != 1:
            parts.append(f"g{self.groups}")
        return " ".join(parts)

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        need_rank(x, (4,), "conv2d")
        _, c_in, h, w = x
        if self.in_channels is not None and self.in_channels != c_in:
            raise ShapeError(
                "SC203",
                f"in_channels is {self.in_channels}, but {c_in} channels arrive",
                f"set in_channels: {c_in}, or leave it out to infer it",
            )
        c_out, g = self.out_channels, self.groups
        if c_in % g or c_out % g:
            raise ShapeError(
                "SC206",
                f"groups={g} must divide in_channels ({c_in}) and out_channels ({c_out})",
                "groups that divide both: " + ", ".join(map(str, _common_divisors(c_in, c_out))),
            )
        kernel, stride, dil = pair(self.kernel_size), pair(self.stride), pair(self.dilation)
        if self.padding == "same" and stride != (1, 1):
            k, s, d = kernel[0], stride[0], dil[0]
            p = d * (k - 1) // 2
            raise ShapeError(
                "SC207",
                f"padding='same' needs stride 1, but stride is {self.stride}",
                f"use padding: {p} (with stride {s} it gives H={conv_out(h, k, s, 2 * p, d)} "
                f"from {h}), or set stride: 1",
            )
        warnings = []
        if self.padding == "same" and (kernel[0] % 2 == 0 or kernel[1] % 2 == 0):
            warnings.append(
                (
                    "SC304",
                    (f"kernel {times(kernel)} with padding='same' pads one more pixel on "
                     "the bottom/right than on the top/left"),
                    "use an odd kernel_size for symmetric padding",
                )
            )
        out_hw, explain, unused = [], [], []
        for axis, size, k, s, d, (pl, pr) in zip(
            ("H", "W"), (h, w), kernel, stride, dil, self.pads()
        ):
            padded, eff = size + pl + pr, effective(k, d)
            limit = None if self.padding_mode == "zeros" else _pad_limit(self.padding_mode, size)
            if limit is not None and max(pl, pr) > limit:
                raise ShapeError(
                    "SC201",
                    f"padding {max(pl, pr)} is too large for padding_mode="
                    f"'{self.padding_mode}' on an input of {axis}={size}",
                    f"{self.padding_mode} padding must be at most {limit} here "
                    f"({_PAD_RULE[self.padding_mode]}); use padding_mode: zeros or replicate, "
                    "or a larger input",
                )
            if padded < eff:
                raise kernel_too_large(kernel, eff, d, axis, size, pl + pr)
            out = conv_out(size, k, s, pl + pr, d)
            out_hw.append(out)
            explain.append(floor_line(axis, size, pad_text(pl, pr), d, k, s, out))
            unused.append(unused_rows(size, pl, pr, eff, s))
        warning = unused_warning(tuple(unused), (h, w), stride,
                                 "adjust padding or the input size so the windows reach the edge")
        if warning:
            warnings.append(warning)
        weight = (c_out, c_in // g, *kernel)
        per_out = (c_in // g) * kernel[0] * kernel[1]
        out = (x[0], c_out, *out_hw)
        macs = c_out * out_hw[0] * out_hw[1] * per_out
        params = math.prod(weight) + (c_out if self.bias else 0)
        explain.append(
            f"weight = out × in/groups × kh × kw = {times(weight)}; params = "
            f"{fmt(math.prod(weight))}" + (f" + {c_out} (bias) = {fmt(params)}" if self.bias else "")
        )
        explain.append(
            f"MACs = {c_out}×{out_hw[0]}×{out_hw[1]} outputs × {per_out} "
            f"({c_in // g}×{kernel[0]}×{kernel[1]}) = {fmt(macs)}"
        )
        return Inferred(
            out=out,
            weight=weight,
            bias=(c_out,) if self.bias else None,
            params=params,
            macs=macs,
            explain=explain,
            inferred_args={"in_channels": c_in},
            warnings=warnings,
        )
