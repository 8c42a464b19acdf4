"""batchnorm2d: one weight and bias per channel; running statistics are buffers, not parameters."""

from typing import Literal

from .base import Context, Dims, Flag, Inferred, LayerSpec, Number, PosInt, ShapeError, need_rank


class BatchNorm2d(LayerSpec):
    type: Literal["batchnorm2d"]
    num_features: PosInt | None = None
    eps: Number = 1e-5
    momentum: Number | None = 0.1
    affine: Flag = True
    track_running_stats: Flag = True

    torch_class = "BatchNorm2d"
    family = "norm"
    name_prefix = "bn"
    cancels_channel_bias = True  # it subtracts each channel's mean

    def infer(self, x: Dims, ctx: Context) -> Inferred:
        need_rank(x, (4,), "batchnorm2d")
        c = x[1]
        if self.num_features is not None and self.num_features != c:
            raise ShapeError(
                "SC205",
                f"num_features is {self.num_features}, but {c} channels arrive",
                f"set num_features: {c}, or leave it out to infer it",
            )
        explain = [f"num_features = channels of the input = {c}"]
        if self.affine:
            explain.append(f"weight [{c}] + bias [{c}] = {2 * c} params")
        return Inferred(
            out=x,
            weight=(c,) if self.affine else None,
            bias=(c,) if self.affine else None,
            params=2 * c if self.affine else 0,
            explain=explain,
            inferred_args={"num_features": c},
        )
