"""Sliding-window arithmetic: every layer that slides a kernel over H and W (conv, pools, and
the transposed conv) reads its output size, settings text, explanation and unused-row check
from here, with PyTorch's formulas."""

import math

from ..record import Record
from .base import ShapeError, pair


def effective(kernel: int, dilation: int) -> int:
    """The span of a dilated kernel: d·(k−1) + 1."""
    return dilation * (kernel - 1) + 1


def conv_out(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    """floor((H + pad_l + pad_r − d·(k−1) − 1) / s) + 1, PyTorch's formula."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def pool_out(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool) -> int:
    """ATen's pooling_output_shape, including its rule for ceil_mode: a last window that would
    start in the right padding is dropped."""
    out = (size + 2 * pad - effective(kernel, dilation) + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def transposed_out(size: int, kernel: int, stride: int, pad: int, output_padding: int,
                   dilation: int) -> int:
    """(H − 1)·s − 2p + d·(k − 1) + output_padding + 1, PyTorch's ConvTranspose2d formula."""
    return (size - 1) * stride - 2 * pad + dilation * (kernel - 1) + output_padding + 1


def same_padding(kernel: int, dilation: int) -> tuple[int, int]:
    """PyTorch's split for padding='same': the extra pixel of an even total goes right/bottom."""
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def floor_line(axis: str, size: int, pad: str, dilation: int, kernel: int, stride: int,
               out: int) -> str:
    """The --explain line of one axis: ``H_out = floor((28 + 2·0 − 1·(5−1) − 1) / 1) + 1 = 24``."""
    return f"{axis}_out = floor(({size} + {pad} − {dilation}·({kernel}−1) − 1) / {stride}) + 1 = {out}"


def pad_text(left: int, right: int) -> str:
    """Padding in an explain line: ``2·1`` when symmetric, ``1+2`` when not."""
    return f"2·{left}" if left == right else f"{left}+{right}"


def settings(kernel, stride, padding=None, dilation=1, *, show_zero_padding: bool = True) -> list[str]:
    """The settings column's words for a window: ``5×5``, ``/2``, ``p1``, ``d2``; ``padding`` may
    be a string ('same'), an int or a pair."""
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    parts = [f"{kh}×{kw}", f"/{sh}" if sh == sw else f"/{sh},{sw}"]
    if isinstance(padding, str):
        parts.append(f"p:{padding}")
    elif padding is not None:
        ph, pw = pair(padding)
        if show_zero_padding or (ph, pw) != (0, 0):
            parts.append(f"p{ph}" if ph == pw else f"p{ph},{pw}")
    dh, dw = pair(dilation)
    if (dh, dw) != (1, 1):
        parts.append(f"d{dh}" if dh == dw else f"d{dh},{dw}")
    return parts


def unused_rows(size: int, pad_l: int, pad_r: int, eff: int, stride: int) -> int:
    """Input rows (not padding) after the last window that no window reads. A kernel narrower
    than its stride skips pixels on purpose, so that case is not counted."""
    if eff < stride:
        return 0
    return max(0, (size + pad_l + pad_r - eff) % stride - pad_r)


def unused_warning(unused: tuple[int, int], size: tuple[int, int], stride: tuple[int, int],
                   hint: str) -> tuple[str, str, str] | None:
    """One SC301 warning for the rows and columns a stride leaves unused, or None."""
    parts = [f"{n} {word}{'s' * (n > 1)}"
             for n, word in zip(unused, ("row", "column")) if n]
    if not parts:
        return None
    s = stride[0] if stride[0] == stride[1] else f"{stride[0]},{stride[1]}"
    message = f"stride {s} leaves the last {' and '.join(parts)} of the {size[0]}×{size[1]} input unused"
    return ("SC301", message, hint)


def kernel_too_large(kernel: tuple[int, int], eff: int, dilation: int, axis: str, size: int,
                     pad_total: int) -> ShapeError:
    """SC201 for a (dilated) kernel that does not fit in the padded input."""
    return ShapeError(
        "SC201",
        f"kernel {kernel[0]}×{kernel[1]} (effective {eff} with dilation {dilation}) is larger "
        f"than the padded input {axis}={size + pad_total} ({size} + padding {pad_total})",
        None,  # the planner adds the smallest input that works
    )


# One spatial axis of a layer, as the analyses (receptive field, accepted input sizes) see it.
# A layer kind states its own with ``axis_map(x, dim)``: how it maps the size of the axis that
# sits at ``dim`` of its input ``x``, and at which dim that axis leaves. The maps are plain
# classes (record.Record): quicker to define at start-up than named tuples, and as quick to make.


class Window(Record):
    """A sliding window on the axis: conv, pools, padding layers (a 1-wide window that only
    pads or crops), pixelunshuffle (a window as wide as its stride)."""

    __slots__ = _fields = ("kernel", "stride", "before", "after", "dilation", "ceil", "exact",
                           "min_size")

    def __init__(self, kernel: int = 1, stride: int = 1, before: int = 0, after: int = 0,
                 dilation: int = 1, ceil: bool = False, exact: bool = False, min_size: int = 1):
        self.kernel, self.stride, self.dilation = kernel, stride, dilation
        self.before = before  # padding on the top/left (negative crops)
        self.after = after  # padding on the bottom/right
        self.ceil = ceil  # pooling's ceil_mode
        self.exact = exact  # the size must be a multiple of the stride (pixelunshuffle)
        self.min_size = min_size  # reflect/circular padding needs an input at least this large

    def out(self, n: int) -> int:
        """The output size for input size n (below 1 where the input is too small)."""
        if self.ceil:
            return pool_out(n, self.kernel, self.stride, self.before, self.dilation, True)
        return conv_out(n, self.kernel, self.stride, self.before + self.after, self.dilation)

    def fits(self, n: int) -> bool:
        return n >= self.min_size and self.out(n) >= 1

    def even(self, n: int) -> bool:
        """Whether a strided window gives exactly n / stride (the grids line up, so an upsampling
        by the stride gives n back)."""
        return self.stride == 1 or (n % self.stride == 0 and self.out(n) == n // self.stride)

    def unused(self, n: int) -> int:
        if self.ceil or self.exact:
            return 0
        return unused_rows(n, self.before, self.after, effective(self.kernel, self.dilation),
                           self.stride)


SAME = Window()  # the axis passes through unchanged (elementwise layers, channel ops)


def keeps_axes(self, x, dim: int) -> "tuple[AxisMap, int]":
    """The axis_map of a layer that works value by value: every axis stays as it is. The
    receptive field knows it, and skips such layers without asking."""
    return SAME, dim


class Scale(Record):
    """Upsampling by a factor: out = floor(n · factor) (upsample, pixelshuffle)."""

    __slots__ = _fields = ("factor",)

    def __init__(self, factor: float):
        self.factor = factor

    def out(self, n: int) -> int:
        return math.floor(n * self.factor)  # in float64, as torch computes it


class Transposed(Record):
    """A transposed conv on the axis."""

    __slots__ = _fields = ("kernel", "stride", "padding", "output_padding", "dilation")

    def __init__(self, kernel: int, stride: int, padding: int, output_padding: int,
                 dilation: int):
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.output_padding, self.dilation = output_padding, dilation

    def out(self, n: int) -> int:
        return transposed_out(n, self.kernel, self.stride, self.padding, self.output_padding,
                              self.dilation)


class Fixed(Record):
    """The output size does not depend on the input's (adaptive pools, upsample to a size)."""

    __slots__ = _fields = ("size",)

    def __init__(self, size: int):
        self.size = size


class Resized(Record):
    """The output size is another tensor's (upsample with ``size: {like: NAME}``)."""

    __slots__ = _fields = ("like",)

    def __init__(self, like: str):
        self.like = like


class Consumed(Record):
    """The layer's weights depend on this axis's size (a linear on it, a layernorm over it, a
    conv taking it as channels): the size must be the one the spec was planned at."""

    __slots__ = _fields = ("why",)

    def __init__(self, why: str):
        self.why = why


class Whole(Record):
    """Every output position depends on the whole axis, whatever its size (a softmax over
    it)."""

    __slots__ = _fields = ("why",)

    def __init__(self, why: str):
        self.why = why


class Fold(Record):
    """The axis is merged with other dims into one (flatten): the values keep their place, but
    later layers see its size only inside a product."""

    __slots__ = ()


AxisMap = Window | Scale | Transposed | Fixed | Consumed | Whole | Fold


def channel_map(dim: int, what: str) -> "tuple[AxisMap, int]":
    """A layer with one weight per channel (dim 1): it keeps every other axis as it is."""
    return (Consumed(f"{what} has one weight per channel") if dim == 1 else SAME), dim


def spatial(x, dim: int) -> int | None:
    """0 for H, 1 for W when ``dim`` is one of the last two dims of ``x`` (where 2-d layers
    work), else None."""
    i = dim - len(x) + 2
    return i if len(x) >= 3 and 0 <= i <= 1 else None
