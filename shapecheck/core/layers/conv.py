"""conv2d and convtranspose2d: PyTorch's shape rules, parameters and MACs."""

import math
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
    _int_or_pair,
    anycase,
    channels_arrive,
    divisor_list,
    divisors,
    fmt,
    model_named,
    need_rank,
    on_first_use,
    pair,
    pair_schema,
    times,
)
from .window import (
    SAME,
    Consumed,
    Transposed,
    Window,
    conv_out,
    effective,
    floor_line,
    kernel_too_large,
    pad_text,
    same_padding,
    settings,
    transposed_out,
    unused_rows,
    unused_warning,
)

# conv2d and convtranspose2d: a 3-d tensor is one unbatched sample to torch.
_UNBATCHED_3D = Stricter("SC209", (3,), why="torch takes a 3-d tensor as one unbatched sample "
                         "(C, H, W): in a network it would read the batch as channels")


def _padding(value: Any) -> Any:
    if isinstance(value, str):
        if value.lower() in ("same", "valid"):
            return value.lower()
        raise PydanticCustomError(
            "padding", "must be an int, a pair [h, w], 'same' or 'valid', got {value}",
            {"value": repr(value)},
        )
    return _int_or_pair(value, 0)


def groups_hint(c_in: int, c_out: int) -> str:
    """The groups a conv accepts: the common divisors of its channels, depthwise marked."""
    g = math.gcd(c_in, c_out)
    return "groups that divide both: " + divisor_list(divisors(g), c_in if g == c_in else None)


# F.pad's limits per side: reflect mirrors without repeating the edge, so it needs pad < size;
# circular wraps around at most once, pad <= size. zeros and replicate pad any amount.
# A conv's window on an axis, by its settings: a long network repeats a few convs, and the
# receptive field asks for both axes of each (a Window is never changed once made)
_WINDOWS: dict[tuple, Window] = {}
# A conv's kernel, stride, dilation and padding as pairs, by its settings (Conv2d.geometry).
_GEOMETRY: dict[tuple, tuple] = {}
# What Conv2d.infer worked out, by the fields it reads and the input.
_INFERRED: dict[tuple, Inferred] = {}

_PAD_RULE = {"reflect": "less than the input size", "circular": "at most the input size"}


def _pad_limit(mode: str, size: int) -> int | None:
    """The largest padding per side that padding_mode allows on an input of this size."""
    return {"reflect": size - 1, "circular": size}.get(mode)


class _Channels:
    """What conv2d and convtranspose2d share about channels: the declared in_channels, groups
    that must divide both sides, and a bias that a following norm would cancel."""

    def bias_before_norm(self) -> bool:
        return self.bias

    def declared_input(self, x: Dims) -> Dims | None:
        if self.in_channels is None or len(x) != 4:
            return None
        return (x[0], self.in_channels, *x[2:])

    def check_channels(self, c_in: int) -> None:
        if self.in_channels is not None and self.in_channels != c_in:
            raise ShapeError("SC203", f"in_channels is {self.in_channels}, but "
                             f"{channels_arrive(c_in)}",
                             f"set in_channels: {c_in}, or leave it out to infer it")
        c_out, g = self.out_channels, self.groups
        if c_in % g or c_out % g:
            raise ShapeError(
                "SC206", f"groups={g} must divide in_channels ({c_in}) and out_channels ({c_out})",
                groups_hint(c_in, c_out))


@on_first_use
def _make_Conv2d():
    class Conv2d(_Channels, LayerSpec):
        type: Literal["conv2d"]
        in_channels: PosInt | None = None
        out_channels: PosInt
        kernel_size: PosPair
        stride: PosPair = 1
        padding: Annotated[Any, BeforeValidator(_padding), WithJsonSchema(
            {"anyOf": [pair_schema(0), {"type": "string", "pattern": f"^({anycase('same')}|{anycase('valid')})$"}]})] = 0  # int, [h, w], 'same' or 'valid'
        dilation: PosPair = 1
        groups: PosInt = 1
        bias: Flag = True
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros"

        torch_class = "Conv2d"
        family = "conv"
        name_prefix = "conv"
        inferred_fields = ("in_channels",)
        stricter_than_torch = (_UNBATCHED_3D,)


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

        def axis_map(self, x: Dims, dim: int):
            i = dim - 2 if len(x) == 4 and 2 <= dim <= 3 else None  # H or W of N×C×H×W
            if i is None:
                return (Consumed("conv2d has weights per channel") if dim == 1 else SAME), dim
            # the settings read at once from the fields: each attribute of a model is read
            # through pydantic's __getattr__ hook, and this runs twice for every conv
            d = self.__dict__
            key = (d["kernel_size"], d["stride"], d["padding"], d["dilation"], d["padding_mode"], i)
            window = _WINDOWS.get(key)
            if window is None:
                before, after = self.pads()[i]
                min_size = 1
                if self.padding_mode in _PAD_RULE:  # reflect needs pad < size, circular <= size
                    min_size = max(before, after) + (1 if self.padding_mode == "reflect" else 0)
                if len(_WINDOWS) > 1024:  # a long-lived process (the language server)
                    _WINDOWS.clear()
                window = Window(pair(self.kernel_size)[i], pair(self.stride)[i], before, after,
                                pair(self.dilation)[i], min_size=min_size)
                other = _WINDOWS.get((*key[:-1], 1 - i))
                # a square conv's two axes share one window: the field is worked out once
                _WINDOWS[key] = other if other == window else window
                window = _WINDOWS[key]
            return window, dim

        def settings(self) -> str:
            parts = settings(self.kernel_size, self.stride, self.padding, self.dilation)
            if self.groups != 1:
                parts.append(f"g{self.groups}")
            return " ".join(parts)

        def geometry(self) -> tuple:
            """(kernel, stride, dilation, ((top, bottom), (left, right)), effective kernel),
            each a pair: worked out once per distinct setting, as a long network repeats a few
            convs."""
            key = (self.kernel_size, self.stride, self.padding, self.dilation)
            found = _GEOMETRY.get(key)
            if found is None:
                if len(_GEOMETRY) > 1024:  # a long-lived process (the language server)
                    _GEOMETRY.clear()
                kernel, stride, dil = pair(self.kernel_size), pair(self.stride), pair(self.dilation)
                found = _GEOMETRY[key] = (kernel, stride, dil, self.pads(),
                                          (effective(kernel[0], dil[0]), effective(kernel[1], dil[1])))
            return found

        def infer(self, x: Dims, ctx: Context) -> Inferred:
            # A long network repeats the same conv on the same input: the rule is worked out
            # once for each (what it reads of the layer, the input). An Inferred is never
            # changed once made, and errors are not kept.
            key = (x, self.in_channels, self.out_channels, self.kernel_size, self.stride,
                   self.padding, self.dilation, self.groups, self.bias, self.padding_mode)
            found = _INFERRED.get(key)
            if found is None:
                if len(_INFERRED) > 1024:  # a long-lived process (the language server)
                    _INFERRED.clear()
                found = _INFERRED[key] = self._infer(x)
            return found

        def _infer(self, x: Dims) -> Inferred:
            if len(x) != 4:
                need_rank(x, (4,), "conv2d")
            _, c_in, h, w = x
            self.check_channels(c_in)
            c_out, g = self.out_channels, self.groups
            kernel, stride, dil, pads, effs = self.geometry()
            warnings = []
            if self.padding == "same":
                if stride != (1, 1):
                    k, s, d = kernel[0], stride[0], dil[0]
                    p = d * (k - 1) // 2
                    raise ShapeError(
                        "SC207",
                        f"padding='same' needs stride 1, but stride is {self.stride}",
                        f"use padding: {p} (with stride {s} it gives H={conv_out(h, k, s, 2 * p, d)} "
                        f"from {h}), or set stride: 1",
                    )
                if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
                    warnings.append(
                        (
                            "SC304",
                            (f"kernel {times(kernel)} with padding='same' pads one more pixel on "
                             "the bottom/right than on the top/left"),
                            "use an odd kernel_size for symmetric padding",
                        )
                    )
            out_hw, unused = [], []
            for i, (axis, size) in enumerate((("H", h), ("W", w))):
                (pl, pr), eff, s = pads[i], effs[i], stride[i]
                if self.padding_mode != "zeros":
                    limit = _pad_limit(self.padding_mode, size)
                    if limit is not None and max(pl, pr) > limit:
                        raise ShapeError(
                            "SC201",
                            f"padding {max(pl, pr)} is too large for padding_mode="
                            f"'{self.padding_mode}' on an input of {axis}={size}",
                            f"{self.padding_mode} padding must be at most {limit} here "
                            f"({_PAD_RULE[self.padding_mode]}); use padding_mode: zeros or "
                            "replicate, or a larger input",
                        )
                padded = size + pl + pr
                if padded < eff:
                    raise kernel_too_large(kernel, eff, dil[i], axis, size, pl + pr)
                out_hw.append((padded - eff) // s + 1)  # conv_out
                unused.append(unused_rows(size, pl, pr, eff, s))
            if unused[0] or unused[1]:
                warnings.append(unused_warning(
                    tuple(unused), (h, w), stride,
                    "adjust padding or the input size so the windows reach the edge"))
            weight = (c_out, c_in // g, *kernel)
            per_out = (c_in // g) * kernel[0] * kernel[1]
            out = (x[0], c_out, *out_hw)
            macs = c_out * out_hw[0] * out_hw[1] * per_out
            params = math.prod(weight) + (c_out if self.bias else 0)

            def explain() -> list[str]:
                lines = [floor_line(axis, size, pad_text(*pads[i]), dil[i], kernel[i], stride[i],
                                    out_hw[i])
                         for i, (axis, size) in enumerate((("H", h), ("W", w)))]
                lines.append(
                    f"weight = out × in/groups × kh × kw = {times(weight)}; params = "
                    f"{fmt(math.prod(weight))}"
                    + (f" + {c_out} (bias) = {fmt(params)}" if self.bias else ""))
                lines.append(
                    f"MACs = {c_out}×{out_hw[0]}×{out_hw[1]} outputs × {per_out} "
                    f"({c_in // g}×{kernel[0]}×{kernel[1]}) = {fmt(macs)}")
                return lines

            return Inferred(out, weight, (c_out,) if self.bias else None, params, macs,
                            Lines(explain), {"in_channels": c_in}, warnings)

    return Conv2d


@on_first_use
def _make_ConvTranspose2d():
    class ConvTranspose2d(_Channels, LayerSpec):
        """The transposed convolution (a learnable upsampling): each input pixel spreads a
    kernel-sized patch over the output, ``stride`` pixels apart."""

        type: Literal["convtranspose2d"]
        in_channels: PosInt | None = None
        out_channels: PosInt
        kernel_size: PosPair
        stride: PosPair = 1
        padding: NonNegPair = 0
        output_padding: NonNegPair = 0
        groups: PosInt = 1
        bias: Flag = True
        dilation: PosPair = 1
        padding_mode: Literal["zeros"] = "zeros"  # the only mode torch implements for it

        torch_class = "ConvTranspose2d"
        family = "conv"
        name_prefix = "deconv"
        inferred_fields = ("in_channels",)
        stricter_than_torch = (
            _UNBATCHED_3D,
            Stricter("SC202", why="where the padding takes all of the output, torch makes an "
                     "empty tensor, which fails later or never"),
        )


        def axis_map(self, x: Dims, dim: int):
            i = dim - 2 if len(x) == 4 and 2 <= dim <= 3 else None  # H or W of N×C×H×W
            if i is None:
                return (Consumed("convtranspose2d has weights per channel") if dim == 1 else SAME), dim
            return Transposed(pair(self.kernel_size)[i], pair(self.stride)[i], pair(self.padding)[i],
                              pair(self.output_padding)[i], pair(self.dilation)[i]), dim

        def settings(self) -> str:
            parts = settings(self.kernel_size, self.stride, self.padding, self.dilation)
            oh, ow = pair(self.output_padding)
            if (oh, ow) != (0, 0):
                parts.append(f"op{oh}" if oh == ow else f"op{oh},{ow}")
            if self.groups != 1:
                parts.append(f"g{self.groups}")
            return " ".join(parts)

        def infer(self, x: Dims, ctx: Context) -> Inferred:
            need_rank(x, (4,), "convtranspose2d")
            _, c_in, h, w = x
            self.check_channels(c_in)
            c_out, g = self.out_channels, self.groups
            kernel, stride, dil = pair(self.kernel_size), pair(self.stride), pair(self.dilation)
            pad, out_pad = pair(self.padding), pair(self.output_padding)
            out_hw, explain = [], []
            for axis, size, k, s, p, op, d in zip(("H", "W"), (h, w), kernel, stride, pad, out_pad,
                                                   dil):
                if op >= s and op >= d:
                    raise ShapeError(
                        "SC214", f"output_padding {op} must be smaller than the stride ({s}) or "
                        f"the dilation ({d})",
                        f"use output_padding: {max(s, d) - 1} or less; it only picks one of the "
                        "output sizes a stride allows")
                out = transposed_out(size, k, s, p, op, d)
                if out < 1:
                    raise ShapeError(
                        "SC202", f"padding {p} on an input of {axis}={size} gives an output of "
                        f"{axis}={out}", None)  # the planner adds the smallest input that works
                out_hw.append(out)
                explain.append(f"{axis}_out = ({size}−1)·{s} − 2·{p} + {d}·({k}−1) + {op} + 1 = {out}")
            weight = (c_in, c_out // g, *kernel)
            per_in = (c_out // g) * kernel[0] * kernel[1]
            macs = c_in * h * w * per_in
            params = math.prod(weight) + (c_out if self.bias else 0)
            explain.append(
                f"weight = in × out/groups × kh × kw = {times(weight)}; params = "
                f"{fmt(math.prod(weight))}" + (f" + {c_out} (bias) = {fmt(params)}" if self.bias else ""))
            explain.append(f"MACs = {c_in}×{h}×{w} inputs × {per_in} ({c_out // g}×{kernel[0]}×"
                           f"{kernel[1]}) = {fmt(macs)}")
            return Inferred(out=(x[0], c_out, *out_hw), weight=weight,
                            bias=(c_out,) if self.bias else None, params=params, macs=macs,
                            explain=explain, inferred_args={"in_channels": c_in})

    return ConvTranspose2d


def __getattr__(name: str):  # a model by its class name, defined on first use
    return model_named(globals(), name)
