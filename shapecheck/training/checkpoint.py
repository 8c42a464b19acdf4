"""``checkpoint.pt``: ``Checkpoint`` writes it, reads it back and checks every field.

A checkpoint is a file on disk that anyone can edit: an int that became a string, a tensor
replaced by a list, a missing key. Each field is validated here, so that a damaged checkpoint is
one clear message naming the field (a RunFolderError), never a traceback from deep inside torch in
the middle of a resume. Only types and what the fields say of each other are checked here;
whether the checkpoint fits the run (the architecture, the optimizer, the position in the
epoch) is resume.py's question.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from ..core.trainspec import TrainSpec
from .base import RunFolderError
from .runfolder import EpochMetrics, load_tensors, save_torch

# What a checkpoint holds; a checkpoint of another version is refused, not guessed at.
CHECKPOINT_VERSION = 1

Count = Annotated[StrictInt, Field(ge=0)]
Size = Annotated[StrictInt, Field(ge=1)]
Real = StrictFloat | StrictInt
# Tensors are checked as what they are (torch.Tensor instances), not converted.
_TENSOR = ConfigDict(arbitrary_types_allowed=True, extra="forbid")


def _metrics_model() -> type[BaseModel]:
    """One epoch's line of metrics as runfolder.EpochMetrics declares it: a field added there
    is checked here, with no second list to keep."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(EpochMetrics):
        if f.name == "epoch":
            fields[f.name] = (Size, ...)
        elif f.default is dataclasses.MISSING:
            fields[f.name] = (Real, ...)
        else:
            fields[f.name] = (Real | None, None)
    return create_model("_Metrics", __config__=ConfigDict(extra="forbid"), **fields)


_Metrics = _metrics_model()


class _Rng(BaseModel):
    """torch's generator state, and the GPU's where the run had one."""

    model_config = _TENSOR
    torch: torch.Tensor
    cuda: list[torch.Tensor] | None = None
    mps: torch.Tensor | None = None

    @model_serializer(mode="wrap")
    def _as_saved(self, handler: Any) -> dict[str, Any]:
        # A GPU's state is there only when the run had that GPU (base.set_rng_state).
        return {k: v for k, v in handler(self).items() if v is not None}

    @field_validator("torch", "mps")
    @classmethod
    def _bytes(cls, v: torch.Tensor | None) -> torch.Tensor | None:
        if v is not None and (v.dtype != torch.uint8 or v.dim() != 1):
            raise ValueError("must be a generator state (a 1-d uint8 tensor)")
        return v


class Partial(BaseModel):
    """The sums of the epoch a mid-epoch checkpoint stopped in."""

    model_config = ConfigDict(extra="forbid")
    loss_sum: Real
    correct: Count
    seen: Count
    pixels: Count | None = None  # a dense run's: the pixels the sums count
    train_s: Annotated[Real, Field(ge=0)] = 0.0


class _Optimizer(BaseModel):
    """An optimizer's state_dict: per-parameter state, and the parameter groups."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="allow")
    state: dict[StrictInt, dict[StrictStr, torch.Tensor | Real | bool | None]]
    param_groups: list[dict[StrictStr, Any]] = Field(min_length=1)

    @field_validator("param_groups")
    @classmethod
    def _params(cls, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for group in groups:
            params = group.get("params")
            if not (isinstance(params, list)
                    and all(type(p) is int and p >= 0 for p in params)):
                raise ValueError("each group's params must be a list of parameter indices")
        return groups


class Checkpoint(BaseModel):
    """checkpoint.pt: what ``--resume`` continues from. The loop makes one and ``write``s it;
    ``load`` reads it back, every field checked. Fields a later version adds are refused: the
    version says what a checkpoint holds."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    version: Literal[CHECKPOINT_VERSION] = CHECKPOINT_VERSION
    epoch: Count  # completed epochs
    step: Count  # optimizer steps done in the next epoch (a mid-epoch checkpoint)
    model: dict[StrictStr, torch.Tensor]
    optimizer: _Optimizer
    rng: _Rng
    rng_ranks: list[_Rng] | None = None  # each rank's, in a distributed run
    world_size: Size = 1
    scaler: dict[StrictStr, Any] | None = None
    ema: dict[StrictStr, torch.Tensor] | None = None  # the averaged weights, with `ema:`
    partial: Partial | None = None
    metrics: list[_Metrics]
    train: dict[StrictStr, Any]  # the train spec, as JSON
    dataset: dict[StrictStr, Any] | None = None  # the dataset entry (data.absolute_dataset)
    threads: Size | None = None
    input_shape: tuple[Size, Size, Size]
    num_classes: Size
    mean: list[Real] = Field(min_length=1)
    std: list[Real] = Field(min_length=1)
    loss: StrictStr | None = None
    torch_version: StrictStr | None = None

    @field_validator("train")
    @classmethod
    def _train_spec(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            TrainSpec.model_validate(v)
        except ValidationError as e:
            raise ValueError(f"not a train spec ({_problems(e)})") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Checkpoint:
        if len(self.metrics) != self.epoch or any(
                m.epoch != i + 1 for i, m in enumerate(self.metrics)):
            raise ValueError(f"metrics holds {len(self.metrics)} epochs, numbered "
                             f"{[m.epoch for m in self.metrics][:5]}, but epoch is {self.epoch}")
        if self.step and self.partial is None:
            raise ValueError(f"step {self.step} is inside an epoch, but partial is missing")
        if self.rng_ranks is not None and len(self.rng_ranks) != self.world_size:
            raise ValueError(f"rng_ranks holds {len(self.rng_ranks)} states for "
                             f"world_size {self.world_size}")
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.input_shape[0]:
                raise ValueError(f"{what} has {len(values)} values for "
                                 f"{self.input_shape[0]} input channels")
        return self

    @field_serializer("input_shape")
    def _shape_as_list(self, shape: tuple[int, int, int]) -> list[int]:
        return list(shape)  # as every version has written it

    @property
    def history(self) -> list[EpochMetrics]:
        """The metrics of the completed epochs."""
        return [EpochMetrics(**m.model_dump()) for m in self.metrics]

    @property
    def spec(self) -> TrainSpec:
        """The train spec the checkpoint was made with."""
        return TrainSpec.model_validate(self.train)

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state_dict, for ``load_state_dict``."""
        return self.optimizer.model_dump()

    def rng_state(self, rank: int, world_size: int) -> dict[str, Any]:
        """The generator state of ``rank``: its own when the run had as many processes (each
        draws its own dropout masks), else rank 0's."""
        rngs = self.rng_ranks
        return (rngs[rank] if rngs and len(rngs) == world_size else self.rng).model_dump()

    def write(self, path: Path) -> None:
        """Written atomically: a kill at any instant leaves the previous checkpoint whole."""
        save_torch(self.model_dump(), path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """The checkpoint at ``path``, every field checked; RunFolderError says what is
        wrong."""
        if not path.is_file():
            raise RunFolderError(f"nothing to resume: {path} does not exist")
        data = load_tensors(path, "checkpoint")
        if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
            raise RunFolderError(f"{path} is not a shapecheck checkpoint (version "
                                 f"{CHECKPOINT_VERSION})")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise RunFolderError(f"{path} is damaged: {_problems(e)}") from None


def _problems(e: ValidationError) -> str:
    problems = []
    for err in e.errors()[:3]:
        where = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "missing"
        problems.append(f"{where}: {message}" if where else message)
    more = len(e.errors()) - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")
