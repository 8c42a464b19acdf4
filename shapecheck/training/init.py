"""Starting a run from trained weights (``--init PATH``), and freezing layers (``freeze:``).

The weights are read from a run folder (its ``model.pt``), a ``model.pt``, a ``checkpoint.pt``
or any file holding a state dict (Lightning's ``state_dict`` and DDP's ``module.`` prefix are
unwrapped), and checked against the module before anything trains: every key present, every
shape the one the plan gives. A mismatch is reported per layer, with the layer's spec line
when the caller knows it, and both shapes."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..outputs.report import printable
from .base import TrainError, plural
from .runfolder import MODEL_FILE


class WeightsFileError(TrainError):
    """--init names no weights file that loads safely: an input error."""


class WeightsMismatchError(TrainError):
    """--init's weights do not fit the network: the message has a line per layer that
    differs."""


# How a caller names the layer that holds a module path ("fc" -> "layer fc (linear, line 18)").
Describe = Callable[[str], str]


@dataclass
class InitWeights:
    """Checked weights to load into a fresh run, and what they leave out."""

    source: str
    state: dict[str, torch.Tensor]
    skipped: list[str] = field(default_factory=list)  # keys left at their fresh values


def _plain(qualname: str) -> str:
    return f"module {qualname}" if qualname else "the module itself"


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict at ``path``: a run folder, a checkpoint or a state-dict file."""
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise WeightsFileError(f"--init {path}: " + (
            f"the folder has no {MODEL_FILE} (is it a run folder?)" if path.is_dir()
            else "no such file"))
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError) as e:
        raise WeightsFileError(f"--init {file}: not a PyTorch weights file that loads safely "
                               f"({str(e).splitlines()[0][:160]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "optimizer" in obj:
        obj = obj["model"]  # our checkpoint.pt, or one like it
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning's checkpoints
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsFileError(f"--init {file}: holds no state dict (names to tensors)")
    if all(k.startswith("module.") for k in obj):  # saved from a DDP wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def head_keys(module: nn.Module) -> list[str]:
    """The state-dict keys of the last layer that has parameters: the classifier head."""
    last = None
    for name, sub in module.named_modules():
        if any(True for _ in sub.parameters(recurse=False)):
            last = name
    if last is None:
        return []
    prefix = f"{last}." if last else ""
    return [k for k in module.state_dict() if k.startswith(prefix)
            and "." not in k[len(prefix):]]


def check_weights(module: nn.Module, weights: dict[str, torch.Tensor], source: str, *,
                  skip_head: bool = False, describe: Describe | None = None) -> InitWeights:
    """The weights that load into ``module``, or WeightsMismatchError naming every layer that
    does not fit: a missing key, a key the module has not, a shape that differs."""
    want = module.state_dict()
    describe = describe or _plain
    skipped = head_keys(module) if skip_head else []
    problems: dict[str, list[str]] = {}  # the layer's description -> its lines

    def owner(key: str) -> str:
        return describe(key.rpartition(".")[0])

    def named(key: str) -> str:
        # A file's keys are untrusted text; the report keeps its own newlines only.
        return printable(key)

    for key, tensor in want.items():
        if key in skipped:
            continue
        if key not in weights:
            problems.setdefault(owner(key), []).append(
                f"{named(key)}: expected {_shape(tensor)}, not in the file")
        elif tuple(weights[key].shape) != tuple(tensor.shape):
            problems.setdefault(owner(key), []).append(
                f"{named(key)}: expected {_shape(tensor)}, found {_shape(weights[key])}")
    extra = [k for k in weights if k not in want and k not in skipped]
    for key in extra:
        problems.setdefault("not in this network", []).append(
            f"{named(key)}: {_shape(weights[key])} in the file")
    if problems:
        lines = [f"  {where}:\n" + "\n".join(f"    {p}" for p in found)
                 for where, found in problems.items()]
        head = set(head_keys(module))
        only_head = all(k.split(":")[0] in head for found in problems.values()
                        for k in found if not k.endswith("in the file"))
        hint = ("; the classifier head alone differs (another number of classes?): "
                "--init-skip-head keeps it freshly initialised" if only_head and not skip_head
                and not extra else "")
        raise WeightsMismatchError(
            f"--init {printable(source)}: the weights do not fit this network "
            f"({plural(sum(map(len, problems.values())), 'mismatch')} in "
            f"{plural(len(problems), 'layer')}){hint}\n" + "\n".join(lines))
    state = {k: v for k, v in weights.items() if k in want and k not in skipped}
    return InitWeights(source=source, state=state, skipped=skipped)


def load(module: nn.Module, init: InitWeights) -> None:
    with torch.no_grad():
        own = module.state_dict()
        for key, tensor in init.state.items():
            own[key].copy_(tensor)


def freeze(module: nn.Module, names: Sequence[str]) -> int:
    """Stop the gradients of the layers named (and everything inside them); their count of
    parameters. TrainError for a name the module has not, or one without parameters."""
    subs = dict(module.named_modules())
    frozen = 0
    for name in names:
        sub = subs.get(name)
        if sub is None or name == "":
            layers = [n for n, m in subs.items() if n and "." not in n
                      and any(True for _ in m.parameters())]
            raise TrainError(f"freeze: this network has no layer {name!r}; the layers with "
                             f"parameters are {', '.join(layers)}")
        params = list(sub.parameters())
        if not params:
            raise TrainError(f"freeze: layer {name!r} has no parameters to freeze")
        for p in params:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def _shape(t: torch.Tensor) -> str:
    return f"({t.shape[0]},)" if t.dim() == 1 else "(" + ", ".join(map(str, t.shape)) + ")"
