"""A training run folder's ``run.json`` (``RunInfo`` writes it, reads it back and validates it, as
the spec is validated), and the rule for when a folder is shapecheck's run folder.

``build --train`` writes ``run.json``; ``eval`` reads it back, and a damaged or foreign one is a
clear error (exit 2), never a traceback or a NaN. A folder is shapecheck's, and training may
replace (or, with ``--fresh``, remove) the files it writes there, only when it is empty or its
``run.json`` validates here and carries shapecheck's mark (``RUN_MARK``: a key no one writes by
hand). Training writes ``run.json`` first, so a run killed in its first moments leaves a folder
that is still its own. Any other folder is left alone unless the user says ``--force``.
No torch import: ``build`` decides this before torch is loaded.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from ..core.atomic import LOCK_FILE, atomic_write, read_bounded, temp_name_prefix
from ..core.trainspec import FLOAT32_MAX, INT64_MAX, DatasetSpec, LossName, TaskName

__all__ = ["RUN_FILE", "RunInfo", "RunInfoError", "previous_run_problem",
           "record_resume", "run_folder_problem"]

RUN_FILE = "run.json"
SOURCE_FILE = "model.py"
# The files training writes (train.RUN_FILES, which imports torch; a test keeps them equal).
# Weights and the checkpoint: a run's results, which a new run replaces only when told to.
RESULT_FILES = ("model.pt", "model_best.pt", "checkpoint.pt")
RUN_FILES = (*RESULT_FILES, "metrics.csv", "curves.png", SOURCE_FILE, RUN_FILE,
             "predictions.png")
MAX_RUN_JSON = 16 * 1024 * 1024  # a run.json is a few KB; its class names are the bulk
# The key and value that mark a run.json shapecheck wrote (the key's value is the format).
RUN_MARK = ("shapecheck_run_folder", 1)


class RunInfoError(Exception):
    """run.json is missing, unreadable or damaged."""


def _finite(v: float) -> float:
    if not (math.isfinite(v) and abs(v) <= FLOAT32_MAX):
        raise ValueError(f"must be a finite float32 number, got {v!r}")
    return v


Size = Annotated[StrictInt, Field(ge=1, le=INT64_MAX)]
Real = Annotated[StrictFloat | StrictInt, AfterValidator(_finite)]


class RunInfo(BaseModel):
    """run.json: what ``eval`` needs from a run. Training makes one and ``write``s it; ``load``
    reads it back, validated. Fields a later version adds are allowed."""

    model_config = ConfigDict(extra="allow")

    # The mark of a run folder shapecheck made: eval reads a run.json without it (one written
    # before it existed), but training writes only into a folder whose run.json has it.
    shapecheck_run_folder: Literal[1] | None = None
    name: StrictStr
    input_shape: tuple[Size, Size, Size]
    num_classes: Annotated[StrictInt, Field(ge=1, le=1_000_000)]
    classes: list[StrictStr] | None = None
    mean: list[Real] = Field(min_length=1)
    std: list[Annotated[Real, Field(gt=0)]] = Field(min_length=1)
    loss: LossName = "cross_entropy"
    task: TaskName = "classify"  # runs made before dense tasks were classifiers
    output_shape: tuple[Size, Size, Size] | None = None  # a dense task's output (K, H, W)
    module_class: StrictStr | None = None
    dataset: DatasetSpec
    train: dict[str, Any] | None = None
    # What training records besides: checked too, so that a hand-edited value is named here
    # rather than met later (a resume appends to ``resumes``).
    splits: dict[StrictStr, Annotated[StrictInt, Field(ge=0)] | None] | None = None
    threads: Size | None = None
    world_size: Size | None = None
    init: StrictStr | None = None  # --init: where a fresh run's weights came from
    torch_version: StrictStr | None = None
    created: StrictStr | None = None
    resumes: list[dict[StrictStr, Any]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RunInfo:
        channels = self.input_shape[0]
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != channels:
                raise ValueError(f"{what} has {len(values)} values but the input has "
                                 f"{channels} channel{'s' * (channels != 1)}")
        if self.classes is not None and len(self.classes) > self.num_classes:
            raise ValueError(f"{len(self.classes)} class names but num_classes is "
                             f"{self.num_classes}")
        return self


    def write(self, folder: Path) -> None:
        """``folder``/run.json, written atomically: the fields given, in their order (a field
        left at its default and not given is not written)."""
        atomic_write(Path(folder) / RUN_FILE,
                     json.dumps(self.model_dump(mode="json", exclude_unset=True), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> RunInfo:
        """The validated run.json of a run folder; RunInfoError says what is wrong with it."""
        path = Path(run_dir) / RUN_FILE
        try:
            data = _read_json(path)
        except FileNotFoundError:
            raise RunInfoError(f"{run_dir} is not a training run folder ({RUN_FILE} is "
                               "missing)") from None
        except OSError as e:
            raise RunInfoError(f"cannot read {path}: {e.strerror or e}") from None
        except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise RunInfoError(f"{path} is not valid JSON ({e})") from None
        except RecursionError:  # [[[[...]]]] nested deeper than Python's stack
            raise RunInfoError(f"{path} is damaged: nested too deeply") from None
        if not isinstance(data, dict):
            raise RunInfoError(f"{path} is damaged: a JSON {type(data).__name__}, not an "
                               "object")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = []
            for err in e.errors()[:5]:
                where = ".".join(str(part) for part in err["loc"])
                message = err["msg"].removeprefix("Value error, ")
                problems.append(f"{where}: {message}" if where else message)
            raise RunInfoError(f"{path} is damaged: {'; '.join(problems)}") from None


def _read_json(path: Path) -> Any:
    return json.loads(read_bounded(path, MAX_RUN_JSON).decode("utf-8"))


def record_resume(folder: Path, entry: dict[str, Any], train: dict[str, Any]) -> None:
    """A resume appended to run.json's ``resumes``, and the train spec it continues with. The
    rest of the file is kept as it is, unchecked: run.json is for eval, and a resume (one told
    ``--force`` over a damaged run.json included) must not fail for want of it."""
    path = Path(folder) / RUN_FILE
    try:
        info = _read_json(path)
    except (OSError, ValueError, RecursionError):
        return
    if not isinstance(info, dict):
        return  # not a run's (eval says so); left as it is
    if not isinstance(info.get("resumes"), list):
        info["resumes"] = []
    info["resumes"].append(entry)
    info["train"] = train
    atomic_write(path, json.dumps(info, indent=2) + "\n")


def previous_run_problem(folder: Path) -> str | None:
    """Why a new run must not start in ``folder``, a shapecheck run folder: the weights or the
    checkpoint of a previous run are there, and nothing of a run is removed unasked."""
    kept = [f for f in RESULT_FILES if (folder / f).exists()]
    if not kept:
        return None
    return (f"{folder} holds a previous run ({', '.join(kept)}); continue it with --resume, "
            "train into another folder with --out DIR, or replace it with --fresh")


def run_folder_problem(folder: str | os.PathLike[str], force: bool,
                       replace: bool = True) -> str | None:
    """Why training must not write into ``folder``, or None (see the module docstring).
    ``replace``: whether the new run may replace a previous run's weights and checkpoint
    (it resumes that run, or was told to start afresh)."""
    folder = Path(folder)
    if not folder.exists():
        return None if not folder.is_symlink() else f"{folder} is a dangling symbolic link"
    if not folder.is_dir():
        return f"cannot write the run: {folder} is not a folder"
    try:
        # The lock and the temporary files of an interrupted atomic write are ours.
        names = [n for n in os.listdir(folder) if n != LOCK_FILE and not (
            n.endswith(".tmp") and n.startswith(tuple(temp_name_prefix(f) for f in RUN_FILES)))]
    except OSError as e:
        return f"cannot read the run folder {folder}: {e.strerror or e}"
    if not names or force:
        return None
    if (folder / RUN_FILE).exists():
        try:
            info = RunInfo.load(folder)
            if getattr(info, RUN_MARK[0]) == RUN_MARK[1]:
                return None if replace else previous_run_problem(folder)
            why = (f"its {RUN_FILE} was not written by shapecheck: it has no "
                   f"{RUN_MARK[0]!r} mark")
        except RunInfoError as e:
            why = str(e)
    else:
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        why = f"it holds {shown} and no {RUN_FILE}"
    return (f"{folder} is not a shapecheck run folder ({why}); nothing in it was changed "
            "(use --force to train there anyway, replacing the run files in it)")
