"""The ``train:`` section's optional parts: the learning-rate schedule, augmentation and the
weights' EMA (trainspec.py's ``scheduler``, ``augment`` and ``ema``). A module of their own, so
that reading a spec that gives none of them never defines their models."""

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from .trainspec import check_finite


class SchedulerSpec(BaseModel):
    """The learning rate over the run, as a function of the optimizer step alone.

    ``warmup_epochs`` ramps the rate linearly from lr/(warm-up steps) to lr over that
    many epochs (counted in steps); then ``step`` multiplies it by ``gamma`` every
    ``step_size`` epochs, ``multistep`` at each epoch of ``milestones``, ``exponential``
    every epoch, ``cosine`` lowers it along half a cosine to ``min_lr`` at the last step of
    the last epoch, and ``constant`` keeps it. ``onecycle`` is torch's OneCycleLR over the
    run's steps (lr the peak; ``pct_start``, ``div_factor``, ``final_div_factor``; the
    momentum is not cycled). ``plateau`` is torch's ReduceLROnPlateau on the validation
    loss: ``gamma`` times the rate after more than ``patience`` epochs without a relative
    improvement of ``threshold``, not below ``min_lr``. As the rate depends on the step
    (and, for plateau, on the validation losses a checkpoint keeps) alone, a resumed run
    continues it exactly.
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)

    type: Literal["constant", "step", "multistep", "exponential", "cosine", "onecycle",
                  "plateau"] = "constant"
    warmup_epochs: NonNegativeFloat = 0.0
    step_size: PositiveInt = 30
    milestones: list[PositiveInt] | None = None
    gamma: PositiveFloat = 0.1
    min_lr: NonNegativeFloat = 0.0
    pct_start: float = Field(default=0.3, gt=0, lt=1)
    div_factor: PositiveFloat = 25.0
    final_div_factor: PositiveFloat = 1e4
    patience: NonNegativeInt = 10
    threshold: NonNegativeFloat = 1e-4

    @field_validator("type", mode="before")
    @classmethod
    def _lower_type(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _check(self) -> "SchedulerSpec":
        check_finite(self.warmup_epochs, "warmup_epochs")
        check_finite(self.gamma, "gamma")
        check_finite(self.min_lr, "min_lr")
        check_finite(self.div_factor, "div_factor")
        check_finite(self.final_div_factor, "final_div_factor")
        if self.type == "multistep":
            if not self.milestones:
                raise ValueError("multistep needs milestones: the epochs at which the rate "
                                 "drops, e.g. [30, 60]")
            if sorted(set(self.milestones)) != self.milestones:
                raise ValueError("milestones must rise, each epoch once")
        elif self.milestones is not None:
            raise ValueError(f"milestones are for type multistep, not {self.type}")
        if self.type == "plateau" and self.gamma >= 1:
            raise ValueError("plateau's gamma (the factor of each drop) must be below 1")
        if self.type == "onecycle" and self.warmup_epochs:
            raise ValueError("onecycle has its own warm-up (pct_start): leave warmup_epochs out")
        return self

    def lr_at(self, step: int, steps_per_epoch: int, epochs: int, lr: float,
              val_losses: list[float | None] | None = None) -> float:
        """The learning rate of optimizer step ``step`` (0-based, counted over the run);
        ``val_losses``: the validation loss of each epoch done (plateau)."""
        if self.type == "onecycle":
            return self._one_cycle(step, epochs * steps_per_epoch, lr)
        warm = round(self.warmup_epochs * steps_per_epoch)
        if step < warm:
            return lr * (step + 1) / warm
        epoch = step // steps_per_epoch
        if self.type == "step":
            return lr * self.gamma ** (epoch // self.step_size)
        if self.type == "multistep":
            return lr * self.gamma ** sum(1 for m in self.milestones or [] if m <= epoch)
        if self.type == "exponential":
            return lr * self.gamma ** epoch
        if self.type == "plateau":
            return self._plateau(lr, val_losses or [])
        if self.type == "cosine":
            total = max(epochs * steps_per_epoch - warm - 1, 1)
            t = min((step - warm) / total, 1.0)
            return self.min_lr + (lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        return lr

    def _one_cycle(self, step: int, total: int, peak: float) -> float:
        # torch.optim.lr_scheduler.OneCycleLR's two phases, cosine annealing.
        start = peak / self.div_factor
        end = start / self.final_div_factor
        rise = float(self.pct_start * total) - 1
        if step <= rise:
            pct, a, b = step / rise if rise > 0 else 1.0, start, peak
        else:
            pct, a, b = (step - rise) / (total - 1 - rise), peak, end
        return b + (a - b) / 2.0 * (math.cos(math.pi * min(pct, 1.0)) + 1)

    def _plateau(self, lr: float, losses: list[float | None]) -> float:
        # torch.optim.lr_scheduler.ReduceLROnPlateau (mode min, relative threshold,
        # no cooldown), replayed over the losses so far.
        best, bad = math.inf, 0
        for loss in losses:
            if loss is None:
                continue
            if loss < best * (1 - self.threshold):
                best, bad = loss, 0
            else:
                bad += 1
            if bad > self.patience:
                new = max(lr * self.gamma, self.min_lr)
                if lr - new > 1e-8:
                    lr = new
                bad = 0
        return lr


def _range(v: tuple[float, float], what: str) -> None:
    if not (0 < v[0] <= v[1]) or not all(math.isfinite(x) for x in v):
        raise ValueError(f"{what} must be [low, high] with 0 < low <= high")


class ResizedCropSpec(BaseModel):
    """torchvision's RandomResizedCrop: a random part of ``scale`` × the image's area and an
    aspect ratio within ``ratio``, resized back to the input size."""

    model_config = ConfigDict(extra="forbid")

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @model_validator(mode="after")
    def _check(self) -> "ResizedCropSpec":
        _range(self.scale, "scale")
        _range(self.ratio, "ratio")
        if self.scale[1] > 1:
            raise ValueError("scale is a fraction of the image's area: at most 1")
        return self


class ErasingSpec(BaseModel):
    """torchvision's RandomErasing: with probability ``p``, a rectangle of ``scale`` × the
    area and an aspect ratio within ``ratio`` set to ``value`` (0 after normalisation: the
    mean)."""

    model_config = ConfigDict(extra="forbid")

    p: float = Field(default=0.5, ge=0, le=1)
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> "ErasingSpec":
        _range(self.scale, "scale")
        _range(self.ratio, "ratio")
        check_finite(self.value, "value")
        if self.scale[1] >= 1:
            raise ValueError("scale is a fraction of the image's area: below 1")
        return self


class AugmentSpec(BaseModel):
    """Random changes to each training batch, drawn from (seed, epoch, step) and each
    sample's place in the global batch, whatever the number of processes.

    ``crop_padding`` pads each image by that many pixels (with 0 after normalisation: the
    mean) and crops a random window of the original size; ``flip`` mirrors half the images
    left to right. Test and validation images are never changed."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    crop_padding: NonNegativeInt = 0
    flip: bool = False
    # Classification only:
    resized_crop: ResizedCropSpec | None = None
    trivial: bool = False  # TrivialAugmentWide: one random op of 14 per image
    erasing: ErasingSpec | None = None
    mixup: PositiveFloat | None = None  # Beta(alpha, alpha)'s alpha
    cutmix: PositiveFloat | None = None

    @field_validator("resized_crop", "erasing", mode="before")
    @classmethod
    def _on(cls, v: Any) -> Any:
        return {} if v is True else (None if v is False else v)

    @property
    def per_image_only(self) -> bool:
        """Whether every change also applies to a dense target (flips and crops do)."""
        return not (self.resized_crop or self.trivial or self.erasing or self.mixup
                    or self.cutmix)


class EmaSpec(BaseModel):
    """Weight EMA: after each optimizer step, the average moves ``1 - decay`` of the way to
    the weights (torch's get_ema_multi_avg_fn)."""

    model_config = ConfigDict(extra="forbid")

    decay: float = Field(default=0.999, gt=0, lt=1)
