"""The spec's ``train:`` section, read by ``shapecheck build --train``.

Plain pydantic models with no torch import, so loading and planning a spec
never pays for torch. Every field has a default except the dataset, which may
also come from the command line (``apply_overrides``).

    train:
      dataset: {format: idx, path: data/mnist-5k}   # or just: dataset: data/mnist-5k
      task: segment                # classify, segment or regress; left out: from the output's shape
      loss: cross_entropy          # default: nll_loss after a logsoftmax layer, else cross_entropy
                                   # (mse or l1: per-pixel regression)
      optimizer: {type: sgd, lr: 0.01, momentum: 0.5}
      epochs: 10
      batch_size: 64
      seed: 0
      device: auto                 # auto: cuda, then mps, then cpu
      output: runs/lecture_cnn     # default: runs/<name> in the working directory
      drop_last: false             # true: skip each epoch's last, smaller batch
      label_smoothing: 0.0         # cross_entropy only
      class_weights: null          # a list (one per class) or "balanced"
      grad_clip: null              # clip the gradients' global norm to this
      patience: null               # stop after this many epochs without a better validation score
      monitor: score               # or loss: what patience and model_best.pt watch
      min_delta: 0.0               # an improvement this small does not reset patience
      deterministic: false         # torch.use_deterministic_algorithms and cuDNN flags
      tensorboard: false           # true: event files in <run>/tensorboard (needs tensorboard)
      precision: "32"              # 32, bf16 or fp16: autocast (fp16 with a GradScaler)
      scheduler: {type: cosine, warmup_epochs: 1, min_lr: 0.0}   # or step (step_size, gamma),
                                   # multistep (milestones), exponential, onecycle, plateau
      workers: null                # image folders: stream from disk with N reader processes
      augment: {crop_padding: 4, flip: true}   # random crops and mirror images while training
      checkpoint_every: null       # N: also checkpoint every N optimizer steps, mid-epoch
      sync_bn: true                # --nproc: BatchNorm over the global batch (SyncBatchNorm)
      freeze: [conv1, conv2]       # layers whose parameters do not train (with --init PATH)
      ema: {decay: 0.999}          # also keep an EMA of the weights: model_ema.pt
      accumulate: 1                # K: one optimizer step per K batches (gradient accumulation)

Datasets (``format``; left out, it is detected from ``path``):

- ``idx``: a folder with the four MNIST IDX files, gzipped or not
  (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``); the folder may
  also be torchvision's root, with the files under ``MNIST/raw/`` or ``raw/``.
- ``npz``: a ``.npz`` file with ``x_train, y_train, x_test, y_test`` (as Keras'
  ``mnist.npz``), or with ``x, y`` and a ``test_fraction`` to hold out. Images are
  ``(N, H, W)`` for one channel, ``(N, C, H, W)`` or ``(N, H, W, C)``; labels are
  integers ``0 .. classes-1``.
- ``folder``: one sub-folder of images per class (class index = sorted folder
  name, as torchvision's ImageFolder), either under ``train/`` and ``test/`` (or
  ``val/``), or directly in the folder together with a ``test_fraction``.
- ``synthetic``: random class-dependent images of the spec's input shape, for
  smoke tests (``train_size``/``test_size`` samples; default 512/128).
- ``mnist-seg`` and ``mnist-sr``: dense-prediction sets derived from MNIST digits (the
  shipped ``examples/data/mnist-5k``, or the IDX folder in ``path``): a mask of 11
  classes per digit, and a 14×14 → 28×28 super-resolution pair (``shapecheck.densedata``).

Tasks (``task``; left out, from the network's output): an output ``(N, K)`` is
classification into K classes; ``(N, K, H, W)`` is per-pixel classification
(``segment``: each target is an ``(H, W)`` mask of class indices, 255 ignored), or
per-pixel regression (``regress``) with ``loss: mse`` or ``l1``, or on ``mnist-sr`` (each
target is an image of the output's shape; the loss then defaults to mse). For the dense tasks, ``npz`` holds ``x`` and ``y`` (or
``x_train, y_train, x_test, y_test``) with ``y`` the masks or target images, and
``folder`` holds ``images/`` and ``masks/`` (or ``targets/``) with matching file stems.

Images stored as 8-bit integers are scaled to [0, 1] first (as torchvision's
``ToTensor``); then each channel is normalised with ``mean``/``std``, which
default to those of the training split. A ``test_fraction`` split is stratified
per class and fixed (it does not depend on the training seed), so ``eval`` with
the same dataset entry sees the same held-out images. A ``test_fraction`` on a
dataset that has its own test split is an error (``val_fraction`` is the
hold-out for that case). ``train_size`` and ``test_size`` keep a random subset
of n samples of each split, stratified by class and fixed in the same way.
``val_fraction`` holds out part of the training split (after ``train_size``)
as a validation split: it chooses ``model_best.pt`` and drives ``patience``.
``resize: true`` resizes images of another size to the spec's input size
(bilinear, antialiased); left out, a different size is an error.
"""

import math
from typing import Annotated, Any, Literal

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
from pydantic_core import core_schema

__all__ = [
    "DatasetFormat",
    "DatasetSpec",
    "LossName",
    "OptimizerSpec",
    "TaskName",
    "TrainSpec",
    "apply_overrides",
]

DatasetFormat = Literal["idx", "npz", "folder", "synthetic", "mnist-seg", "mnist-sr"]
LossName = Literal["cross_entropy", "nll_loss", "mse", "l1"]
TaskName = Literal["classify", "segment", "regress"]
# Datasets named by a word, not a path: made here, not read from a file of their own.
NAMED_DATASETS = ("synthetic", "mnist-seg", "mnist-sr")
REGRESSION_LOSSES = ("mse", "l1")
DeviceName = Literal["auto", "cpu", "cuda", "mps"]

DEFAULT_LR = {"sgd": 0.01, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.01}


# Training runs in float32: a value beyond its range overflows inside torch.
FLOAT32_MAX = 3.4028234663852886e38
INT64_MAX = 2**63 - 1  # torch.manual_seed and the data order take a signed 64-bit seed


def check_finite(value: float | list[float] | None, what: str) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is not None and not (math.isfinite(v) and abs(v) <= FLOAT32_MAX):
            raise ValueError(f"{what} must be a finite number within float32's range "
                             f"(at most {FLOAT32_MAX:.4g}), got {v:g}")


class DatasetSpec(BaseModel):
    """Where the training data comes from (see the module docstring for formats)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    format: DatasetFormat | None = None
    path: str | None = None
    mean: float | list[float] | None = None
    std: PositiveFloat | list[PositiveFloat] | None = None
    test_fraction: float | None = Field(default=None, gt=0, lt=1)
    val_fraction: float | None = Field(default=None, gt=0, lt=1)
    train_size: PositiveInt | None = Field(default=None, le=INT64_MAX)
    test_size: PositiveInt | None = Field(default=None, le=INT64_MAX)
    resize: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        # `dataset: synthetic`, `dataset: mnist-seg` and `dataset: data/mnist` are shorthands.
        if isinstance(data, str):
            return {"format": data} if data in NAMED_DATASETS else {"path": data}
        return data

    @field_validator("format", mode="before")
    @classmethod
    def _lower_format(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("mean", "std")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("give one number, or one per channel")
        return v

    @model_validator(mode="after")
    def _check(self) -> "DatasetSpec":
        check_finite(self.mean, "mean")
        check_finite(self.std, "std")
        if self.format == "synthetic":
            if self.path is not None:
                raise ValueError("a synthetic dataset takes no path")
        elif self.path is not None and not self.path.strip():
            raise ValueError("a dataset's path may not be empty")
        elif self.path is None and self.format not in NAMED_DATASETS:
            raise ValueError("a dataset needs a path (or format: synthetic, mnist-seg or "
                             "mnist-sr)")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        return self


class OptimizerSpec(BaseModel):
    """``torch.optim`` SGD, Adam, AdamW or RMSprop.

    Left out, ``lr`` is 0.01 for sgd and rmsprop and 0.001 for adam/adamw, ``momentum`` 0, and
    ``weight_decay`` PyTorch's default (0, but 0.01 for adamw); ``betas`` and ``eps`` (adam,
    adamw; ``eps`` also rmsprop) and ``alpha`` (rmsprop's smoothing) are PyTorch's defaults.
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)

    type: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    lr: PositiveFloat | None = None
    momentum: NonNegativeFloat | None = None
    nesterov: bool = False
    weight_decay: NonNegativeFloat | None = None
    betas: tuple[float, float] | None = None
    eps: PositiveFloat | None = None
    alpha: float | None = Field(default=None, gt=0, lt=1)
    # False: norm-layer weights and all biases get no weight decay. True (PyTorch's
    # behaviour) keeps a spec meaning what the same numbers mean in torch.optim.
    decay_norm_and_bias: bool = True

    @field_validator("type", mode="before")
    @classmethod
    def _lower_type(cls, v: Any) -> Any:
        # PyTorch spells them SGD, Adam, AdamW; accept any case.
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> "OptimizerSpec":
        check_finite(self.lr, "lr")
        check_finite(self.weight_decay, "weight_decay")
        check_finite(self.eps, "eps")
        if self.momentum is not None and self.type not in ("sgd", "rmsprop") \
                and self.momentum != 0:
            raise ValueError(f"momentum applies to sgd and rmsprop ({self.type} has its own "
                             "betas)")
        if self.betas is not None:
            if self.type not in ("adam", "adamw"):
                raise ValueError(f"betas apply to adam and adamw, not {self.type}")
            if not all(0 <= b < 1 for b in self.betas):
                raise ValueError("betas must each be at least 0 and below 1")
        if self.eps is not None and self.type == "sgd":
            raise ValueError("eps applies to adam, adamw and rmsprop, not sgd")
        if self.alpha is not None and self.type != "rmsprop":
            raise ValueError(f"alpha is rmsprop's smoothing constant; {self.type} has none")
        if self.momentum is not None and self.momentum >= 1:
            raise ValueError("momentum must be below 1")
        if self.nesterov and (self.type != "sgd" or not self.momentum):
            raise ValueError("nesterov needs sgd with a momentum above 0")
        return self

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.type]

    @property
    def effective_momentum(self) -> float:
        return self.momentum or 0.0

    @property
    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.type == "adamw" else 0.0


class _Later:
    """A field of the ``train:`` section validated by a model of trainoptions.py, which is
    imported only when a spec gives the field: plan and check read most train sections
    without defining those five models (their definitions cost more than reading a spec)."""

    def __init__(self, name: str):
        self.name = name

    def model(self) -> type[BaseModel]:
        from . import trainoptions

        return getattr(trainoptions, self.name)

    def validate(self, value: Any) -> Any:
        return None if value is None else self.model().model_validate(value)

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return core_schema.no_info_plain_validator_function(self.validate)

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        # What `NAME | None` gives: the model's schema among the definitions, or null.
        return handler(core_schema.nullable_schema(self.model().__pydantic_core_schema__))


def _untitled(schema: dict) -> None:
    """The JSON schema of the _Later fields as a model's field has it: without a title."""
    for name in _LATER:
        schema["properties"][name].pop("title", None)


_LATER = ("scheduler", "augment", "ema")


class TrainSpec(BaseModel):
    """The ``train:`` section. ``loss`` left out is chosen from the last layer."""

    model_config = ConfigDict(extra="forbid", defer_build=True, json_schema_extra=_untitled)

    dataset: DatasetSpec | None = None
    # Left out: from the output's shape and the loss (see the module docstring).
    task: TaskName | None = None
    loss: LossName | None = None
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    seed: NonNegativeInt = Field(default=0, le=INT64_MAX)
    device: DeviceName = "auto"
    output: str | None = None
    drop_last: bool = False
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    class_weights: Literal["balanced"] | list[PositiveFloat] | None = None
    grad_clip: PositiveFloat | None = None
    patience: PositiveInt | None = None
    # What patience and model_best.pt watch: the validation score (accuracy, mean IoU) or
    # loss; an improvement smaller than min_delta does not count.
    monitor: Literal["score", "loss"] = "score"
    min_delta: NonNegativeFloat = 0.0
    deterministic: bool = False
    tensorboard: bool = False
    precision: Literal["32", "bf16", "fp16"] = "32"
    scheduler: Annotated[Any, _Later("SchedulerSpec")] = None
    # Image folders only: read from disk while training by this many worker processes
    # (0: by the training process). Left out, the images are held in memory.
    workers: NonNegativeInt | None = None
    augment: Annotated[Any, _Later("AugmentSpec")] = None
    # Also save an exact checkpoint every this many optimizer steps (counted over the run),
    # for epochs too long to lose to a kill.
    checkpoint_every: PositiveInt | None = None
    # Distributed runs: BatchNorm statistics over the global batch (SyncBatchNorm), as in one
    # process. False keeps each process's own (DDP's plain behaviour).
    sync_bn: bool = True
    # Layers (their spec names) whose parameters do not train: fine-tuning the rest.
    freeze: list[str] | None = None
    ema: Annotated[Any, _Later("EmaSpec")] = None
    # Gradients summed over this many batches of batch_size before each optimizer step: the
    # step of one batch accumulate × batch_size large, in the memory of one batch.
    accumulate: PositiveInt = 1

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        # 32 in YAML is an integer; fp32 and float32 mean the same.
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str):
            v = v.lower()
            return {"fp32": "32", "float32": "32", "bfloat16": "bf16", "float16": "fp16",
                    "16": "fp16"}.get(v, v)
        return v

    @field_validator("loss", "device", "task", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> "TrainSpec":
        check_finite(self.grad_clip, "grad_clip")
        if isinstance(self.class_weights, list):
            check_finite(self.class_weights, "class_weights")
        if self.label_smoothing and self.loss in ("nll_loss", *REGRESSION_LOSSES):
            raise ValueError(f"label_smoothing needs cross_entropy ({self.loss} has none)")
        regression = self.loss in REGRESSION_LOSSES
        if self.task is not None and regression != (self.task == "regress"):
            raise ValueError(f"task {self.task} does not train with loss {self.loss}: regress "
                             "takes mse or l1, classify and segment cross_entropy or nll_loss")
        if self.class_weights is not None and (regression or self.task == "regress"):
            raise ValueError("class_weights are for classification; regression has no classes")
        return self


def apply_overrides(
    spec: TrainSpec | None,
    *,
    data: str | None = None,
    data_format: str | None = None,
    task: str | None = None,
    loss: str | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    output: str | None = None,
    val_fraction: float | None = None,
    patience: int | None = None,
    drop_last: bool | None = None,
    deterministic: bool | None = None,
    tensorboard: bool | None = None,
    precision: str | None = None,
    workers: int | None = None,
    sync_bn: bool | None = None,
) -> TrainSpec:
    """A new, validated TrainSpec: ``spec`` (or the defaults) with each non-None flag applied.

    For the command line: ``--data PATH`` replaces the whole dataset entry
    (``--data synthetic`` and the other named sets too), ``--optimizer adam`` keeps lr/weight_decay unless
    given. Raises ``pydantic.ValidationError`` for bad values.
    """
    base: dict[str, Any] = spec.model_dump(exclude_none=True) if spec is not None else {}
    if data is not None:
        base["dataset"] = {"format": data} if data in NAMED_DATASETS else {"path": data}
    if data_format is not None:
        base.setdefault("dataset", {})["format"] = data_format
    if val_fraction is not None:
        base.setdefault("dataset", {})["val_fraction"] = val_fraction
    opt: dict[str, Any] = base.setdefault("optimizer", {})
    if optimizer is not None:
        if opt.get("type", "sgd") != optimizer.lower():
            for key in ("momentum", "betas", "eps", "alpha"):  # one optimizer's, not another's
                opt.pop(key, None)
        opt["type"] = optimizer
    for key, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if value is not None:
            opt[key] = value
    for key, value in (
        ("task", task),
        ("loss", loss),
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("seed", seed),
        ("device", device),
        ("output", output),
        ("patience", patience),
        ("drop_last", drop_last),
        ("deterministic", deterministic),
        ("tensorboard", tensorboard),
        ("precision", precision),
        ("workers", workers),
        ("sync_bn", sync_bn),
    ):
        if value is not None:
            base[key] = value
    return TrainSpec.model_validate(base)


def resolve_task(output_shape: Any, batch: Any, spec: TrainSpec) -> tuple[TaskName, int] | str:
    """(task, K) for a network whose plan ends in ``output_shape``, or why it cannot train.

    (N, K) classifies into K classes; (N, K, H, W) segments into K classes per pixel, or
    regresses K channels per pixel with an mse or l1 loss (or on mnist-sr). ``spec.task``, when given, must
    agree with the shape."""
    out = list(output_shape) if output_shape is not None else None
    shape = "(" + ", ".join(map(str, out)) + ")" if out is not None else "unknown"
    if out is None or out[0] != batch or len(out) not in (2, 4):
        return (f"cannot be trained: its output is {shape}; a classifier needs (N, classes) "
                "and a dense predictor (N, K, H, W)")
    if len(out) == 2:
        if spec.task in ("segment", "regress"):
            return (f"cannot be trained with task {spec.task}: its output is {shape}, a "
                    f"per-image vector; {spec.task} needs a per-pixel output (N, K, H, W)")
        if spec.loss in REGRESSION_LOSSES:
            return (f"cannot be trained with loss {spec.loss}: regression is per pixel and "
                    f"needs an output (N, K, H, W); this output is {shape}")
        return "classify", int(out[1])
    if spec.task == "classify":
        return (f"cannot be trained with task classify: its output is {shape}, a per-pixel "
                "map; a classifier ends in (N, classes), e.g. after global pooling, flatten "
                "and linear (or leave task out to train it per pixel: segment, or regress "
                "with loss mse or l1)")
    # mnist-sr holds target images, not masks: it alone says regress.
    regress = spec.task == "regress" or spec.loss in REGRESSION_LOSSES or (
        spec.task is None and spec.loss is None and spec.dataset is not None
        and spec.dataset.format == "mnist-sr")
    return ("regress" if regress else "segment"), int(out[1])


def __getattr__(name: str):  # the optional parts' models, where they were defined before
    if name in _OPTIONAL:
        from . import trainoptions

        return getattr(trainoptions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_OPTIONAL = ("AugmentSpec", "EmaSpec", "ErasingSpec", "ResizedCropSpec", "SchedulerSpec")
