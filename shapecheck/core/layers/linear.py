"""linear: y = x·Wᵀ + b on the last dim of a tensor of any rank, as nn.Linear does."""

import math
from typing import Literal

from .base import Context, Dims, Flag, Inferred, LayerSpec, PosInt, ShapeError, Stricter, fmt, times
from .window import SAME, Consumed


class Linear(LayerSpec):
    type: Literal["linear"]
    in_features: PosInt | None = None
    out_features: PosInt
    bias: Flag = True

    torch_class = "Linear"
    family = "linear"
    name_prefix = "fc"
    inferred_fields = ("in_features",)
    stricter_than_torch = (
        Stricter("SC213", (1,), why="after a flatten with start_dim 0, torch takes the whole "
                 "batch as one sample's features"),
    )

    def settings(self) -> str:
        return f"→ {self.out_features}"

    def declared_input(self, x: Dims) -> Dims | None:
        if self.in_features is None or len(x) < 2:
            return None
        return (*x[:-1], self.in_features)

    def axis_map(self, x: Dims, dim: int):
        if dim == len(x) - 1:
            return Consumed("linear's in_features is the size of the last dim"), dim
        return SAME, dim

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        if len(x) == 1:
            raise ShapeError(
                "SC213",
                "linear on a 1-d tensor would treat the whole batch as one sample's features",
                "flatten with start_dim: 1 (the default) keeps the batch dimension",
            )
        last = x[-1]
        origin = ctx.features_from or "the last dim of the input"
        if self.in_features is not None and self.in_features != last:
            flat = math.prod(x[1:])
            if len(x) > 2 and flat == self.in_features:
                hint = f"add flatten before {self.name}: it gives {flat} features"
            elif len(x) > 2:
                hint = (
                    f"add flatten before {self.name}: it gives {flat} features "
                    f"({times(x[1:])}); then set in_features: {flat}, or leave it out"
                )
            else:
                hint = f"set in_features: {last} ({origin}), or leave it out to infer it"
            raise ShapeError(
                "SC204",
                f"in_features is {self.in_features}, but the last dim of the input is {last}",
                hint,
            )
        out_f = self.out_features
        rows = math.prod(x[1:-1])  # per sample: every position of the leading dims
        params = last * out_f + (out_f if self.bias else 0)
        macs = rows * last * out_f
        explain = [f"in_features = {last} ({origin})"]
        explain.append(
            f"weight = out × in = {out_f} × {last}; params = {fmt(last * out_f)}"
            + (f" + {out_f} (bias) = {fmt(params)}" if self.bias else "")
        )
        explain.append(f"MACs = {fmt(rows)} × {last} × {out_f} = {fmt(macs)}" if rows > 1
                       else f"MACs = {last} × {out_f} = {fmt(macs)}")
        warnings = []
        if len(x) > 2 and not ctx.channels_last:  # channels-last linears are meant
            flat = math.prod(x[1:])
            warnings.append(
                (
                    "SC305",
                    f"linear on a {len(x)}-d tensor acts on the last dim ({last}) only",
                    f"add flatten before {self.name}: it gives {flat} features",
                )
            )
        return Inferred(
            out=(*x[:-1], out_f),
            weight=(out_f, last),
            bias=(out_f,) if self.bias else None,
            params=params,
            macs=macs,
            explain=explain,
            inferred_args={"in_features": last},
            warnings=warnings,
        )

