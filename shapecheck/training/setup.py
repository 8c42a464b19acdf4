"""Before the first step: the device, what the spec asks of the module, the data on the
device, the optimizer and the precision; and ``Run``, the state a run carries from its set-up
through its epochs."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.trainspec import OptimizerSpec, TrainSpec, resolve_task
from .base import TrainError, default_loss, last_layer, select_device
from .checkpoint import Partial
from .data import stream_folder
from .datasets import MemoryLimitError, load_dataset
from .distributed import World, backend_for
from .distributed import setup as join_world
from .runfolder import EpochMetrics, check_tensorboard


@dataclass
class Splits:
    """The run's data on its device. ``loaded`` is what ``shapecheck.training.datasets`` read: its notes,
    classes, normalisation and split sizes (and the image files, when streamed)."""

    loaded: Any
    x_train: Any  # a tensor, or LazyImages when streamed
    y_train: torch.Tensor
    x_test: Any
    y_test: torch.Tensor
    x_val: Any | None
    y_val: torch.Tensor | None
    streamed: bool


@dataclass
class Precision:
    """The forward pass and loss under ``torch.autocast`` (bf16, fp16) or not (32)."""

    device_type: str
    amp_dtype: torch.dtype | None
    # fp16 needs its loss scaled against underflow; bf16 has fp32's range and needs none.
    scaler: torch.amp.GradScaler | None

    @classmethod
    def of(cls, spec: TrainSpec, device: torch.device) -> Precision:
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)
        scaler = torch.amp.GradScaler(device.type) if spec.precision == "fp16" else None
        return cls(device.type, amp_dtype, scaler)

    def autocast(self) -> Any:
        return (torch.autocast(self.device_type, dtype=self.amp_dtype)
                if self.amp_dtype is not None else contextlib.nullcontext())


@dataclass
class Run:
    """One training run: what its set-up decided and what its epochs carry on."""

    spec: TrainSpec
    name: str
    world: World
    device: torch.device
    out: Path
    log: Callable[[str], Any]
    module: nn.Module  # the plain module: its weights are what the run folder keeps
    loss_name: str
    data: Splits
    class_weights: torch.Tensor | None
    dataset_entry: dict[str, Any]
    input_shape: tuple[int, int, int]
    num_classes: int
    optimizer: torch.optim.Optimizer
    precision: Precision
    history: list[EpochMetrics] = field(default_factory=list)
    start_epoch: int = 0
    start_step: int = 0  # steps of start_epoch a resumed checkpoint had done
    partial: Partial | None = None  # their sums
    resumed: bool = False
    # Recorded in run.json with the first checkpoint written: a resume that fails before
    # then leaves the run folder as it was.
    pending_resume: dict[str, Any] | None = None
    task: str = "classify"  # or segment, regress (trainspec.resolve_task)
    init_from: str | None = None  # --init: where a fresh run's weights came from
    ema_state: dict[str, Any] | None = None  # a resumed run's weight EMA
    output_shape: tuple[int, ...] | None = None  # the module's output for one sample

    @property
    def n(self) -> int:
        return self.data.x_train.shape[0]

    @property
    def steps(self) -> int:
        """Optimizer steps an epoch: each takes ``accumulate`` batches."""
        n, bs = self.n, self.spec.batch_size * self.spec.accumulate
        return n // bs if self.spec.drop_last else math.ceil(n / bs)

    def last_good(self) -> str:
        done = len(self.history)
        return (f"the last good checkpoint (epoch {done}) is kept in {self.out}" if done
                else "no epoch had completed, so no checkpoint was written")


# ---------------------------------------------------------------- device and spec


def choose_device(spec: TrainSpec, world: World, backend: str) -> torch.device:
    """The spec's device; in a distributed run, this rank's, once it has joined the others."""
    device = select_device(spec.device)
    if world.distributed:
        device = join_world(world, device, backend_for(device, backend))
    return device


def task_of(module: nn.Module, spec: TrainSpec,
            input_shape: tuple[int, int, int]) -> tuple[str, tuple[int, ...] | None]:
    """(task, the output's shape for one sample), from one sample through the module on the
    CPU. A module that fails on it is classification here: ``check_output`` says why."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros((1, *input_shape)))
    except Exception:  # noqa: BLE001 - said by check_output, with the batch's shape
        return spec.task or "classify", None
    finally:
        module.train(was_training)
    task = resolve_task(tuple(out.shape), 1, spec)
    if isinstance(task, str):
        raise TrainError("the network " + task.replace("(1, ", "(N, "))
    return task[0], tuple(out.shape[1:])


def check_spec(module: nn.Module, spec: TrainSpec, device: torch.device,
               log: Callable[[str], Any], task: str = "classify") -> str:
    """The run's loss, once what the spec asks is found possible with this module and device.

    A softmax last layer before cross_entropy is the plan's warning SC302, which
    ``build --train`` prints with the spec's line; it is not repeated here."""
    assert spec.dataset is not None
    if spec.precision != "32" and device.type == "mps":
        raise TrainError(f"precision {spec.precision} is for cpu and cuda; train on mps in 32")
    if task != "classify" and spec.workers is not None:
        raise TrainError(f"streaming (workers) reads classification image folders; {task} "
                         "data is held in memory: leave workers out")
    loss_name = spec.loss or ("mse" if task == "regress" else default_loss(module))
    last = last_layer(module)
    if loss_name == "nll_loss" and not isinstance(last, nn.LogSoftmax):
        log(f"note: nll_loss expects log-probabilities, but the last layer is "
            f"{type(last).__name__}")
    if spec.label_smoothing and loss_name != "cross_entropy":
        raise TrainError(f"label_smoothing needs cross_entropy; this run's loss is {loss_name} "
                         "(the last layer is LogSoftmax): give loss: cross_entropy and drop "
                         "the logsoftmax layer")
    if spec.scheduler is not None and spec.scheduler.type == "plateau" \
            and spec.dataset.val_fraction is None:
        raise TrainError("scheduler plateau watches the validation loss: give the dataset a "
                         "val_fraction (e.g. 0.1); the test split drives no decision")
    if spec.patience is not None and spec.dataset.val_fraction is None:
        raise TrainError("patience needs a validation split: give the dataset a val_fraction "
                         "(e.g. 0.1); the test split drives no decision")
    a = spec.augment
    if a is not None and not a.per_image_only:
        if task != "classify":
            raise TrainError(f"augment's resized_crop, trivial, erasing, mixup and cutmix are for "
                             f"classification; {task} takes crop_padding and flip")
        if (a.mixup or a.cutmix) and loss_name != "cross_entropy":
            raise TrainError(f"mixup and cutmix train on soft targets, which need "
                             f"cross_entropy; this run's loss is {loss_name}")
    if spec.tensorboard:
        check_tensorboard()
    return loss_name


# ---------------------------------------------------------------- data


def read_data(module: nn.Module, spec: TrainSpec, *, input_shape: tuple[int, int, int],
              num_classes: int, base_dir: Path, log: Callable[[str], Any],
              task: str = "classify", output_shape: tuple[int, ...] | None = None) -> Any:
    """The dataset, in memory or streamed, with its notes said."""
    assert spec.dataset is not None
    if task != "classify":
        from .dense_datasets import Target, load_dense

        assert output_shape is not None and len(output_shape) == 3
        param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
        data = load_dense(spec.dataset, target=Target(task, tuple(output_shape)),
                          input_shape=input_shape, base_dir=base_dir,
                          extra_bytes=param_bytes * 4,
                          extra_what="the weights, gradients and optimizer state")
    elif spec.workers is not None:
        data = stream_folder(spec.dataset, input_shape=input_shape, num_classes=num_classes,
                             base_dir=base_dir, workers=int(spec.workers or 0))
    else:
        # Weights, gradients and optimizer state, counted with the data in one memory check.
        param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
        copies = 2 + (2 if spec.optimizer.type in ("adam", "adamw") else int(
            spec.optimizer.type == "rmsprop") + int(bool(spec.optimizer.effective_momentum)))
        data = load_dataset(spec.dataset, input_shape=input_shape, num_classes=num_classes,
                            base_dir=base_dir, extra_bytes=param_bytes * copies,
                            extra_what="the weights, gradients and optimizer state")
    for note in data.notes:
        log(f"note: {note}")
    if data.source == "synthetic":
        log("note: synthetic data is a smoke test: it shows that the model trains and the "
            "run folder is written; its accuracy says nothing about real data")
    return data


def place(module: nn.Module, data: Any, spec: TrainSpec, device: torch.device,
          fresh: bool) -> Splits:
    """Seed torch, re-initialise a fresh run's parameters, and move the module and the data
    to the device."""
    torch.manual_seed(spec.seed)
    if fresh:
        _reinit(module)
    try:
        module.to(device)
        return Splits(
            loaded=data,
            x_train=data.x_train.to(device), y_train=data.y_train.to(device),
            x_test=data.x_test.to(device), y_test=data.y_test.to(device),
            x_val=data.x_val.to(device) if data.x_val is not None else None,
            y_val=data.y_val.to(device) if data.y_val is not None else None,
            streamed=spec.workers is not None)
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "memory" not in str(e).lower():
            raise
        raise MemoryLimitError(f"the data does not fit on {device.type}: "
                               f"{type(e).__name__}: {str(e).splitlines()[0]}") from None


def _reinit(module: nn.Module) -> None:
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


# ---------------------------------------------------------------- optimizer


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
# The scales build writes as helper classes (layers/norm.py): a per-channel gain, like a norm
# layer's weight, that decay would pull towards zero.
_SCALES = ("LayerScale",)


def param_groups(module: nn.Module, o: OptimizerSpec) -> list[dict[str, Any]]:
    """One group, or two when norm weights and biases are kept out of weight decay.

    Each group carries ``decay`` so a resume can re-apply the spec's weight decay."""
    wd = o.effective_weight_decay
    # Frozen parameters (train.freeze) are left out: nothing may move them.
    if o.decay_norm_and_bias:
        return [{"params": [p for p in module.parameters() if p.requires_grad],
                 "weight_decay": wd, "decay": True}]
    plain, exempt = [], []
    for m in module.modules():
        for pname, p in m.named_parameters(recurse=False):
            if p.requires_grad:
                no_decay = (isinstance(m, _NORMS) or type(m).__name__ in _SCALES
                            or pname == "bias")
                (exempt if no_decay else plain).append(p)
    groups = [{"params": plain, "weight_decay": wd, "decay": True},
              {"params": exempt, "weight_decay": 0.0, "decay": False}]
    return [g for g in groups if g["params"]]


def make_optimizer(module: nn.Module, o: OptimizerSpec) -> torch.optim.Optimizer:
    groups = param_groups(module, o)
    if o.type == "sgd":
        return torch.optim.SGD(groups, lr=o.effective_lr, momentum=o.effective_momentum,
                               nesterov=o.nesterov)
    # Only what the spec gives is passed: the rest stays PyTorch's default.
    given = {k: v for k, v in (("eps", o.eps), ("betas", o.betas), ("alpha", o.alpha))
             if v is not None}
    if o.type == "rmsprop":
        return torch.optim.RMSprop(groups, lr=o.effective_lr, momentum=o.effective_momentum,
                                   **given)
    cls = torch.optim.Adam if o.type == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.effective_lr, **given)


def apply_hyperparameters(optimizer: torch.optim.Optimizer, o: OptimizerSpec) -> None:
    # A resumed run takes lr and the like from the spec, which may have changed.
    for group in optimizer.param_groups:
        group["lr"] = o.effective_lr
        group["weight_decay"] = o.effective_weight_decay if group.get("decay", True) else 0.0
        if "momentum" in group:
            group["momentum"] = o.effective_momentum
        if "nesterov" in group:
            group["nesterov"] = o.nesterov
        for key, value in (("eps", o.eps), ("betas", o.betas), ("alpha", o.alpha)):
            if value is not None and key in group:
                group[key] = value


def wrap(module: nn.Module, world: World, device: torch.device, compile: bool) -> nn.Module:
    """The module as it trains: in DistributedDataParallel across ranks, compiled if asked."""
    model: nn.Module = module
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            module, device_ids=[device] if device.type == "cuda" else None)
    if compile:
        model = torch.compile(model)
    return model
