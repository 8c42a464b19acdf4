"""``TrainRequest``: what a training run is asked to do, carried as one object from ``train()``
through the run's set-up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from ..core.trainspec import TrainSpec
    from .init import InitWeights


@dataclass(frozen=True)
class TrainRequest:
    """One run of ``train()``.

    ``input_shape`` is the spec's ``(C, H, W)``, ``num_classes`` the last layer's
    ``out_features``, ``base_dir`` the spec file's folder (relative dataset and output paths
    start there), ``out_dir`` overrides the output folder (default: ``spec.output``, else
    ``runs/<name>``), ``model_source`` is written to ``model.py``. ``log`` gets one line per
    epoch and notes; ``progress`` (default: stderr is a terminal) draws a bar on stderr.
    ``reinit`` re-initialises the parameters from the seed on a fresh run (the module's own
    weights are used when False). A run folder that holds a previous run's weights or
    checkpoint is continued with ``resume``, or replaced with ``fresh``; a folder that is not
    a run folder (runinfo) is written only with ``force``. ``threads`` sets torch's intra-op
    threads for the run; ``backend`` is the distributed backend (auto: gloo on the CPU, nccl
    on CUDA); ``compile`` runs the module through torch.compile; ``init``
    (``init.check_weights``) starts a fresh run from those weights.
    """

    module: nn.Module
    spec: TrainSpec
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    base_dir: Path
    out_dir: Path | None
    model_source: str
    resume: bool = False
    fresh: bool = False
    force: bool = False
    log: Callable[[str], Any] = print
    progress: bool | None = None
    reinit: bool = True
    threads: int | None = None
    backend: str = "auto"
    compile: bool = False
    init: InitWeights | None = None
