"""Loading and checking training data: IDX (MNIST), .npz, image folders, synthetic.

Everything is read into memory up front as float32 image tensors ``(N, C, H, W)``
and int64 label tensors, normalised once, and checked against the spec (image
shape, number of classes, label range) so that a mismatch is a ``DataError``
with a plain message before any training step. The formats, the split rules and
the normalisation are described in ``shapecheck.core.trainspec``.

Only ``shapecheck build --train`` and ``eval`` import this module.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.atomic import check_regular, read_bounded
from ..core.diagnostics import install_hint
from ..core.memory import available_memory, human_bytes, shortfall
from ..core.trainspec import DatasetSpec

__all__ = [
    "SPLITS",
    "DataError",
    "Dataset",
    "MemoryLimitError",
    "detect_format",
    "load_dataset",
    "load_split",
    "resolve_path",
]

SYNTHETIC_TRAIN_SIZE = 512
SYNTHETIC_TEST_SIZE = 128
# The held-out split of a test_fraction dataset must not move when the training
# seed does, or eval would score the model on images it was trained on.
SPLIT_SEED = 20240229

IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataError(Exception):
    """The dataset cannot be read, or does not fit the spec. The message says why."""


@dataclass
class Dataset:
    """A dataset in memory: normalised float32 images ``(N, C, H, W)``, int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: list[float]
    std: list[float]
    classes: list[str] | None = None  # class names, for image folders
    source: str = ""
    notes: list[str] = field(default_factory=list)  # worth telling the user, not errors
    x_val: torch.Tensor | None = None  # the validation part (val_fraction), if any
    y_val: torch.Tensor | None = None

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def num_val(self) -> int:
        return 0 if self.x_val is None else int(self.x_val.shape[0])


# A split as read from disk: images (N, C, H, W) as numpy (uint8 or float), labels int64.
@dataclass
class RawSplit:
    x: np.ndarray
    y: np.ndarray
    where: str
    labels_where: str = ""  # where the labels come from, when not from ``where``


def resolve_path(spec: DatasetSpec, base_dir: str | Path | None) -> Path | None:
    """The dataset's path, a relative one taken from ``base_dir`` (the spec's folder)."""
    if spec.path is None:
        return None
    p = Path(spec.path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(os.path.normpath(Path(base_dir) / p))  # specs/../data reads as data
    return p


def detect_format(spec: DatasetSpec, path: Path | None) -> str:
    """The spec's format, or the one the path looks like."""
    if spec.format is not None:
        return spec.format
    if path is None:
        raise DataError("the dataset has no path")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        raise DataError(
            f"{path}: cannot tell the dataset format from this file; "
            "give format: idx, npz or folder"
        )
    if path.is_dir():
        return "idx" if _idx_dir(path) is not None else "folder"
    raise DataError(f"dataset not found: {path}")


# ---------------------------------------------------------------- public loaders


class MemoryLimitError(DataError):
    """The dataset would not fit in the memory available, or its allocation failed."""


def load_dataset(
    spec: DatasetSpec,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    base_dir: str | Path | None = None,
    extra_bytes: int = 0,
    extra_what: str = "",
) -> Dataset:
    """Read the train, validation and test splits, check them, normalise them.

    ``input_shape`` is the spec's ``(C, H, W)``; ``num_classes`` the last layer's
    ``out_features``. ``extra_bytes`` (described by ``extra_what``) is memory the
    caller will need besides the data, counted in the check that everything fits.
    Raises ``DataError`` (``MemoryLimitError`` when it does not fit).
    """
    shape = check_input_shape(input_shape)
    parts = _parts(spec, resolve_path(spec, base_dir), shape, num_classes)
    train, val, test = parts.train, parts.val, parts.test
    assert train is not None and test is not None
    classes = parts.classes
    for raw in (train, val, test):
        if raw is not None:
            _check(raw, shape, num_classes, classes, spec.resize)
    if classes is not None and len(classes) != num_classes:
        raise DataError(
            f"{parts.path}: {len(classes)} class folders ({', '.join(classes)}) but the last "
            f"layer has out_features {num_classes}"
        )
    notes = list(parts.notes)
    seen = np.unique(train.y).size
    subset_named = any(n.startswith("train_size") for n in notes)
    if classes is None and seen < num_classes and not subset_named:
        notes.append(
            f"the training labels use {seen} of the {num_classes} classes "
            "the last layer has"
        )
    splits = [r for r in (train, val, test) if r is not None]
    check_data_fits(splits, shape, extra_bytes, extra_what)
    x_train, x_val, x_test = (to_float(r, shape) if r is not None else None
                              for r in (train, val, test))
    assert x_train is not None and x_test is not None
    mean, std = mean_std(spec, x_train, shape[0])
    for x in (x_train, x_val, x_test):
        if x is not None:
            normalise(x, mean, std)
    return Dataset(
        x_train=x_train,
        y_train=torch.from_numpy(train.y),
        x_test=x_test,
        y_test=torch.from_numpy(test.y),
        mean=mean,
        std=std,
        classes=classes,
        source=parts.source,
        notes=notes,
        x_val=x_val,
        y_val=torch.from_numpy(val.y) if val is not None else None,
    )


@dataclass
class FileLists:
    """An image folder's splits as file paths and labels: what streaming reads from."""

    train: tuple[list[str], np.ndarray]
    test: tuple[list[str], np.ndarray]
    val: tuple[list[str], np.ndarray] | None
    classes: list[str]
    mean: list[float] | None  # from the entry; None: to be measured on the training split
    std: list[float] | None
    source: str
    notes: list[str]


def list_folder(
    spec: DatasetSpec, *, input_shape: Sequence[int], num_classes: int,
    base_dir: str | Path | None = None,
) -> FileLists:
    """The splits of an image folder by the same rules as ``load_dataset``, without reading
    a single image. Raises DataError."""
    shape = check_input_shape(input_shape)
    path = resolve_path(spec, base_dir)
    if detect_format(spec, path) != "folder":
        raise DataError("streaming (train.workers) reads image folders; idx, npz and synthetic "
                        "data are held in memory: leave workers out")
    parts = _parts(spec, path, shape, num_classes, listing=True)
    assert parts.train is not None and parts.test is not None and parts.classes is not None
    if len(parts.classes) != num_classes:
        raise DataError(
            f"{parts.path}: {len(parts.classes)} class folders ({', '.join(parts.classes)}) "
            f"but the last layer has out_features {num_classes}")
    mean = std = None
    if spec.mean is not None and spec.std is not None:
        mean = _per_channel(spec.mean, shape[0], "mean")
        std = _per_channel(spec.std, shape[0], "std")

    def pair(raw: RawSplit) -> tuple[list[str], np.ndarray]:
        return [str(p) for p in raw.x], raw.y

    return FileLists(train=pair(parts.train), test=pair(parts.test),
                     val=pair(parts.val) if parts.val is not None else None,
                     classes=list(parts.classes), mean=mean, std=std,
                     source=parts.source + " (streamed)", notes=list(parts.notes))


SPLITS = ("test", "val", "train", "all")


def load_split(
    spec: DatasetSpec,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    base_dir: str | Path | None = None,
    split: str = "test",
    classes: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """One split for evaluation, normalised with the training run's ``mean``/``std``.

    The split rules are load_dataset's, so the same dataset entry gives the same
    images: ``test`` is the test split (or the held-out ``test_fraction``),
    ``val`` the validation part, ``train`` the training part that was trained on;
    ``all`` is every image in the dataset, whatever the entry's sizes and
    fractions. A dataset with no split of its own and no ``test_fraction`` has
    only ``all``. ``classes`` (the run's class names) maps image folders by
    name, so an eval folder may hold a subset of the classes. Returns images,
    labels and what they are, in words.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    shape = check_input_shape(input_shape)
    path = resolve_path(spec, base_dir)
    parts = _parts(spec, path, shape, num_classes, known=classes, want=split)
    raw = {"test": parts.test, "val": parts.val, "train": parts.train, "all": parts.all}[split]
    if raw is None:
        raise DataError(f"{parts.path}: {parts.why_missing.get(split, 'no ' + split + ' split')}")
    if classes is None:
        classes = parts.classes
    _check(raw, shape, num_classes, list(classes) if classes is not None else None, spec.resize)
    x = to_float(raw, shape)
    normalise(x, list(mean), list(std))
    return x, torch.from_numpy(raw.y), raw.where


@dataclass
class _Parts:
    """The splits of a dataset entry, as the split rules make them."""

    path: str
    source: str
    train: RawSplit | None = None
    val: RawSplit | None = None
    test: RawSplit | None = None
    all: RawSplit | None = None
    classes: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    why_missing: dict[str, str] = field(default_factory=dict)


def _parts(
    spec: DatasetSpec,
    path: Path | None,
    shape: tuple[int, int, int],
    num_classes: int,
    known: Sequence[str] | None = None,
    want: str | None = None,
    listing: bool = False,
) -> _Parts:
    """Read the dataset and split it: train/test (a test split of its own, or
    ``test_fraction`` held out), then ``train_size``/``test_size`` subsets, then
    ``val_fraction`` held out of the training part. ``want`` None: for training
    (every missing split is an error); else the one split eval asks for."""
    fmt = detect_format(spec, path)
    if fmt == "synthetic":
        train, test = _synthetic(spec, shape, num_classes)
        parts = _Parts(path="synthetic data", source="synthetic")
        whole = None
    else:
        assert path is not None
        parts = _Parts(path=str(path), source=f"{fmt} {path}")
        if fmt == "idx":
            train, test, whole = read_idx(path, want=("train", "test"), required=(
                () if want is not None else
                ("train",) if spec.test_fraction is not None else ("train", "test")))
        elif fmt == "npz":
            train, test, whole = read_npz(path, shape, spec.resize)
        elif fmt == "folder":
            train, test, whole, parts.classes = _read_folder(
                path, shape, num_classes, known=known, resize=spec.resize, listing=listing)
        else:  # pragma: no cover - the Literal rules it out
            raise DataError(f"unknown dataset format {fmt!r}")
    if want == "all":
        pieces = [r for r in (whole, train, test) if r is not None]
        parts.all = pieces[0] if len(pieces) == 1 else _concat(pieces, parts.path)
        return parts
    f = spec.test_fraction
    if whole is not None:
        if f is None:
            if want is None:
                raise DataError(
                    f"{path}: missing split: the data has no separate test set; give "
                    "test_fraction (e.g. 0.2) to hold out part of it"
                )
            # Data kept for evaluation only: all of it is the test split.
            parts.test = RawSplit(whole.x, whole.y, f"{whole.where} (all of it: no split)")
            parts.why_missing = {s: "the data has no separate test set, and the entry no "
                                 "test_fraction, so it has no " + s + " part" for s in SPLITS}
            return parts
        train, test = _stratified(whole, f)
    elif test is not None and f is not None:
        raise DataError(
            f"{path}: the dataset has its own test split, so test_fraction {f:g} would "
            "be ignored; remove it (to hold out part of the training data for validation, "
            "use val_fraction)"
        )
    elif test is None and train is not None and f is not None:
        train, test = _stratified(train, f)
    if train is None and want is None:
        raise DataError(f"{path}: missing split: no training data found")
    if test is None:
        parts.why_missing["test"] = ("missing split: no test data found (--split all scores "
                                     "every image)")
        if want is None:
            raise DataError(
                f"{path}: missing split: no test data found; add it, or give test_fraction "
                "to hold out part of the training data"
            )
    if train is not None:
        train = _subset(train, spec.train_size, "train_size", parts.notes, num_classes)
        if spec.val_fraction is not None:
            train, val = _stratified(train, spec.val_fraction, "validation part")
            parts.val = val
    if test is not None:
        test = _subset(test, spec.test_size, "test_size", parts.notes, num_classes)
    if parts.val is None:
        parts.why_missing["val"] = "the dataset entry has no val_fraction, so no validation part"
    if train is None:
        parts.why_missing["train"] = "missing split: no training data found"
    parts.train, parts.test = train, test
    return parts


def _concat(pieces: list[RawSplit], where: str) -> RawSplit:
    shapes = {tuple(r.x.shape[1:]) for r in pieces}
    if len(shapes) > 1:
        raise DataError(f"{where}: the splits hold images of different shapes")
    return RawSplit(np.concatenate([r.x for r in pieces]), np.concatenate([r.y for r in pieces]),
                where)


# ---------------------------------------------------------------- checks


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise DataError(
            f"training needs an image input (channels, height, width); "
            f"input.shape is {list(input_shape)}"
        )
    c, h, w = (int(v) for v in input_shape)
    return c, h, w


def format_shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(v)) for v in shape)


def _check(
    raw: RawSplit,
    shape: tuple[int, int, int],
    num_classes: int,
    classes: list[str] | None,
    resize: bool = False,
) -> None:
    if raw.x.shape[0] == 0:
        raise DataError(f"{raw.where}: the dataset is empty")
    if raw.x.shape[0] != raw.y.shape[0]:
        raise DataError(
            f"{raw.where}: {raw.x.shape[0]} images but {raw.y.shape[0]} labels"
        )
    if tuple(raw.x.shape[1:]) != shape and not (resize and raw.x.shape[1] == shape[0]):
        raise DataError(
            f"{raw.where}: images are {format_shape(raw.x.shape[1:])} (channels×height×width) "
            f"but the spec's input.shape is {list(shape)}"
            + ("" if raw.x.shape[1] != shape[0] else
               " (dataset resize: true resizes them)")
        )
    if raw.x.dtype.kind == "f" and not np.isfinite(raw.x).all():
        raise DataError(f"{raw.where}: the images contain NaN or infinite values")
    lo, hi = int(raw.y.min()), int(raw.y.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(
            f"{raw.labels_where or raw.where}: label {bad} is out of range: the last layer has "
            f"out_features {num_classes}, so labels must be 0..{num_classes - 1}"
        )
    if classes is not None and len(classes) > num_classes:
        raise DataError(
            f"{raw.where}: {len(classes)} classes but the last layer has "
            f"out_features {num_classes}"
        )


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be one integer per image, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not (y == np.round(y)).all():
            raise DataError(f"{where}: labels must be integers")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{where}: labels must be integers, not {y.dtype}")
    # Cast to int64 only what fits: a uint64 2**64-1 would wrap to -1, a float 1e300 to garbage.
    if y.size and y.dtype.kind in "uf" and y.max() > np.iinfo(np.int64).max:
        raise DataError(f"{where}: label {int(y.max())} is out of range (larger than int64)")
    if y.size and y.dtype.kind == "f" and y.min() < np.iinfo(np.int64).min:
        raise DataError(f"{where}: label {int(y.min())} is out of range (smaller than int64)")
    return y.astype(np.int64)


def as_images(x: np.ndarray, where: str, channels: int | None = None) -> np.ndarray:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) to (N, C, H, W)."""
    x = np.asarray(x)
    if x.dtype.kind not in "uif" or x.dtype.kind == "b":
        raise DataError(f"{where}: images must be numbers, not {x.dtype}")
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4:
        # Channels-first unless only channels-last matches the spec's channel count.
        if channels is not None and x.shape[1] != channels and x.shape[3] == channels:
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x
    raise DataError(
        f"{where}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C); got shape {x.shape}"
    )


# ---------------------------------------------------------------- conversion


# Bytes of float64 per chunk of images converted, resized or summed at a time: bounds
# the temporaries to a few MB whatever the image size.
CHUNK_BYTES = 8 << 20


def _chunk(shape: Sequence[int]) -> int:
    return max(1, CHUNK_BYTES // (8 * int(np.prod(shape[1:]))))


def _nbytes(raw: RawSplit, shape: tuple[int, int, int]) -> int:
    return int(raw.x.shape[0]) * shape[0] * shape[1] * shape[2] * 4


def check_data_fits(splits: list[RawSplit], shape: tuple[int, int, int], extra: int, what: str) -> None:
    """Refuse, before converting anything, data (plus ``extra``) that would not fit."""
    data = sum(_nbytes(r, shape) for r in splits)
    available = shortfall(data + extra)
    if available is None:
        return
    n = sum(int(r.x.shape[0]) for r in splits)
    also = f" and {what} ({human_bytes(extra)})" if extra else ""
    raise MemoryLimitError(
        f"the {n:,} images as float32 ({format_shape(shape)} each: {human_bytes(data)}){also} need "
        f"{human_bytes(data + extra)}, but only {human_bytes(available)} of memory are available; "
        "train on a subset (train_size, test_size) or smaller images"
    )


def to_float(raw: RawSplit, shape: tuple[int, int, int]) -> torch.Tensor:
    """float32 (N, C, H, W) of ``shape``: 8-bit images scaled to [0, 1], other sizes resized.

    Filled a chunk at a time, so the peak is the result plus one chunk."""
    x = raw.x
    n = int(x.shape[0])
    try:
        out = torch.empty((n, *shape), dtype=torch.float32)
    except (MemoryError, RuntimeError) as e:
        raise MemoryLimitError(
            f"{raw.where}: cannot allocate {human_bytes(n * 4 * shape[0] * shape[1] * shape[2])} "
            f"for {n:,} images as float32 ({type(e).__name__}); train on a subset "
            "(train_size, test_size) or smaller images"
        ) from None
    resize = tuple(x.shape[2:]) != shape[1:]
    step = _chunk(x.shape)
    for i in range(0, n, step):
        chunk = torch.from_numpy(np.asarray(x[i:i + step], dtype=np.float32))
        if x.dtype == np.uint8:
            chunk.div_(255.0)
        if resize:
            chunk = torch.nn.functional.interpolate(
                chunk, size=shape[1:], mode="bilinear", align_corners=False, antialias=True)
        out[i:i + step] = chunk
    return out


def mean_std(
    spec: DatasetSpec, x: torch.Tensor, channels: int
) -> tuple[list[float], list[float]]:
    if spec.mean is not None and spec.std is not None:
        mean = _per_channel(spec.mean, channels, "mean")
        std = _per_channel(spec.std, channels, "std")
        return mean, std
    # Two passes over chunks, summed in float64: no copy of the whole tensor, and
    # no cancellation from summing squares of large values.
    n = x.shape[0] * x.shape[2] * x.shape[3]
    step = _chunk(x.shape)
    total = torch.zeros(channels, dtype=torch.float64)
    for i in range(0, x.shape[0], step):
        total += x[i:i + step].sum(dim=(0, 2, 3), dtype=torch.float64)
    mean_t = total / n
    sq = torch.zeros(channels, dtype=torch.float64)
    m = mean_t.view(1, -1, 1, 1)
    for i in range(0, x.shape[0], step):
        sq += ((x[i:i + step].double() - m) ** 2).sum(dim=(0, 2, 3))
    std_t = (sq / max(n - 1, 1)).sqrt()
    # A constant channel (blank synthetic data) would divide by zero.
    std_t = torch.where(std_t > 1e-12, std_t, torch.ones_like(std_t))
    return [float(v) for v in mean_t], [float(v) for v in std_t]


def _per_channel(v: float | list[float], channels: int, what: str) -> list[float]:
    values = [float(v)] * channels if not isinstance(v, list) else [float(a) for a in v]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise DataError(
            f"dataset {what} has {len(values)} values but the images have {channels} channels"
        )
    return values


def normalise(x: torch.Tensor, mean: list[float], std: list[float]) -> None:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    x.sub_(m).div_(s)


def _subset(raw: RawSplit, n: int | None, key: str, notes: list[str], num_classes: int) -> RawSplit:
    """A random subset of n samples, stratified by class, the same for every run.

    Each class's samples are shuffled and spread evenly over [0, 1); the n with the
    lowest positions are kept, so every class gets its share (give or take one)
    however the data is sorted, and a smaller n keeps a subset of a larger one's.
    """
    if n is None or n >= raw.x.shape[0]:
        return raw
    rng = np.random.default_rng(SPLIT_SEED)
    position = np.empty(raw.y.shape[0])
    for c in np.unique(raw.y):
        idx = np.flatnonzero(raw.y == c)
        idx = idx[rng.permutation(idx.size)]
        position[idx] = (np.arange(idx.size) + rng.random(idx.size)) / idx.size
    keep = np.sort(np.argsort(position, kind="stable")[:n])
    present = np.unique(raw.y)
    missing = sorted(set(present.tolist()) - set(np.unique(raw.y[keep]).tolist()))
    if missing:
        notes.append(
            f"{key} {n} keeps {present.size - len(missing)} of the {present.size} classes "
            f"in {raw.where}; missing: {', '.join(map(str, missing))}"
        )
    return RawSplit(raw.x[keep], raw.y[keep], raw.where, raw.labels_where)


def _stratified(raw: RawSplit, fraction: float, held_out: str = "held-out part") -> tuple[RawSplit, RawSplit]:
    if raw.x.shape[0] == 0:
        raise DataError(f"{raw.where}: the dataset is empty")
    if raw.x.shape[0] != raw.y.shape[0]:
        raise DataError(f"{raw.where}: {raw.x.shape[0]} images but {raw.y.shape[0]} labels")
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx: list[np.ndarray] = []
    train_idx: list[np.ndarray] = []
    for c in np.unique(raw.y):
        idx = np.flatnonzero(raw.y == c)
        idx = idx[rng.permutation(idx.size)]
        k = round(idx.size * fraction)
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    # Keep the original order inside each split; the trainer shuffles anyway.
    tr = np.sort(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))
    base = raw.where.removesuffix(" (training part)")
    return (
        RawSplit(raw.x[tr], raw.y[tr], f"{base} (training part)", raw.labels_where),
        RawSplit(raw.x[te], raw.y[te], f"{base} ({held_out})", raw.labels_where),
    )


# ---------------------------------------------------------------- synthetic


def _synthetic(
    spec: DatasetSpec, shape: tuple[int, int, int], num_classes: int
) -> tuple[RawSplit, RawSplit]:
    n_train = spec.train_size or SYNTHETIC_TRAIN_SIZE
    n_test = spec.test_size or SYNTHETIC_TEST_SIZE
    # Made here in float32, so bounded before anything is allocated.
    need, limit = (num_classes + n_train + n_test) * math.prod(shape) * 4, _max_bytes()
    if need > limit:
        raise DataError(f"synthetic data: {n_train:,} + {n_test:,} images of "
                        f"{format_shape(shape)} need {need:,} bytes, more than the {limit:,} "
                        "bytes of memory available")
    # One fixed random template per class plus noise: learnable, yet not trivial.
    g = torch.Generator().manual_seed(1234)
    templates = torch.randn((num_classes, *shape), generator=g)

    def make(n: int, where: str) -> RawSplit:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = templates[y] + 0.5 * torch.randn((n, *shape), generator=g)
        return RawSplit(x.numpy(), y.numpy().astype(np.int64), where)

    train = make(n_train, "synthetic training data")
    test = make(n_test, "synthetic test data")
    return train, test


# ---------------------------------------------------------------- IDX


def _idx_dir(path: Path) -> Path | None:
    """The folder holding the IDX files: ``path`` itself, or torchvision's raw/ under it."""
    for d in (path, path / "raw", path / "MNIST" / "raw"):
        if any(_idx_file(d, name) is not None for name in IDX_NAMES.values()):
            return d
    return None


def _idx_file(d: Path, name: str) -> Path | None:
    # Some copies spell the files with a dot: t10k-images.idx3-ubyte.
    dotted = name.replace("-idx", ".idx")
    for n in (name, name + ".gz", dotted, dotted + ".gz"):
        p = d / n
        if p.exists() and not p.is_dir():  # a FIFO too: _read_bytes says what it is
            return p
    return None


def _read_bytes(p: Path) -> bytes:
    limit = _max_bytes()
    try:
        data = read_bounded(p, limit)  # a FIFO or a device is refused, not read
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            # Bounded, so that a small gzip bomb cannot fill memory; member after member, as
            # gzip.decompress reads them.
            out, rest = b"", data
            while rest[:2] == b"\x1f\x8b":
                d = zlib.decompressobj(wbits=31)
                out += d.decompress(rest, limit + 1 - len(out))
                if len(out) > limit:
                    raise DataError(f"{p}: unpacks to more than {limit:,} bytes, more than the "
                                    "memory available")
                if not d.eof:
                    raise EOFError("compressed file ended before the end-of-stream marker")
                rest = d.unused_data
            data = out
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{p}: truncated or corrupt gzip file ({e})") from None
    return data


def _max_bytes() -> int:
    """The most bytes one dataset file (or synthetic data) may hold: the memory available
    (16 GiB where that cannot be told)."""
    return available_memory() or 16 * 2**30


def _parse_idx(p: Path, data: bytes, ndim: int) -> np.ndarray:
    kind = "images" if ndim == 3 else "labels"
    expected = 0x0800 | ndim
    if len(data) < 4:
        raise DataError(f"{p}: too short to be an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[3] != ndim:
        raise DataError(
            f"{p}: not an IDX {kind} file: magic number 0x{magic:08X}, "
            f"expected 0x{expected:08X}"
        )
    dtype = IDX_TYPES.get(data[2])
    if dtype is None:
        raise DataError(f"{p}: unknown IDX data type 0x{data[2]:02X}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{p}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected_bytes = header + math.prod(dims) * dtype.itemsize  # exact: no int64 overflow
    if len(data) != expected_bytes:
        what = "truncated" if len(data) < expected_bytes else "has extra bytes"
        raise DataError(
            f"{p}: {what}: the header says {format_shape(dims)} ({expected_bytes} bytes) "
            f"but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(
    path: Path, want: Sequence[str], required: Sequence[str]
) -> tuple[RawSplit | None, RawSplit | None, None]:
    d = _idx_dir(path)
    if d is None:
        raise DataError(
            f"{path}: no MNIST IDX files found (expected {IDX_NAMES['train', 'images']}[.gz] "
            "and the other three)"
        )
    splits: dict[str, RawSplit | None] = {}
    for split in ("train", "test"):
        img_p = _idx_file(d, IDX_NAMES[split, "images"])
        lbl_p = _idx_file(d, IDX_NAMES[split, "labels"])
        if img_p is None or lbl_p is None:
            if split in required:
                missing = IDX_NAMES[split, "images" if img_p is None else "labels"]
                raise DataError(f"{d}: missing split: {missing}[.gz] not found")
            splits[split] = None
            continue
        if split not in want:
            splits[split] = None
            continue
        x = _parse_idx(img_p, _read_bytes(img_p), 3)
        y = _parse_idx(lbl_p, _read_bytes(lbl_p), 1)
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{d}: {img_p.name} has {x.shape[0]} images but {lbl_p.name} has "
                f"{y.shape[0]} labels"
            )
        splits[split] = RawSplit(as_images(x, str(img_p)), _labels(y, str(lbl_p)), str(img_p),
                             str(lbl_p))
    return splits["train"], splits["test"], None


# ---------------------------------------------------------------- npz


def check_npz(path: Path, shape: tuple[int, int, int], resize: bool) -> None:
    """Refuse before loading what loading would regret: a file that is not a zip archive (numpy
    would try to unpickle it), and arrays whose headers declare images of another size, more
    bytes than their member holds, Python objects, or more bytes than the memory available.
    Reads only the headers."""
    try:
        check_regular(path)
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DataError(f"{path}: not an .npz file (an .npz is a zip archive of .npy arrays)")
    c = shape[0]
    total, limit = 0, _max_bytes()
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                with zf.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    dims, _, dtype = read_header(member)
                    header = member.tell()
                declared = math.prod(dims) * dtype.itemsize
                if dtype.hasobject:
                    raise DataError(f"{path} [{key}]: holds Python objects, not numbers")
                if header + declared > info.file_size:
                    raise DataError(f"{path} [{key}]: declares {format_shape(dims)} {dtype} "
                                    f"({declared:,} bytes) but holds {info.file_size:,} bytes")
                # Read as as_images will: (N, H, W) is grey, (N, H, W, C) only where C fits.
                image = tuple(dims[1:])
                if len(image) == 2:
                    image = (1, *image)
                elif len(image) == 3 and image[0] != c and image[2] == c:
                    image = (image[2], image[0], image[1])
                wrong = image[:1] != shape[:1] if resize else image != shape  # resize: H, W
                if key in ("x", "x_train", "x_test") and wrong:
                    raise DataError(
                        f"{path} [{key}]: images are {format_shape(image)} (channels×height×"
                        f"width) but the spec's input.shape is {list(shape)}"
                        + (" (dataset resize: true resizes them)"
                           if image[:1] == shape[:1] else ""))
                total += declared
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read as .npz: {e}") from None
    if total > limit:
        raise DataError(f"{path}: its arrays need {total:,} bytes, more than the {limit:,} "
                        "bytes of memory available")


def read_npz(
    path: Path, shape: tuple[int, int, int], resize: bool = False,
    targets: Callable[[np.ndarray, str], np.ndarray] | None = None,
) -> tuple[RawSplit | None, RawSplit | None, RawSplit | None]:
    """The (train, test, whole) splits of an .npz file; ``targets(y, where)`` checks the y
    arrays (class labels by default; a dense task's masks or target images)."""
    check_npz(path, shape, resize)
    targets = targets or _labels
    channels = shape[0]
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read as .npz: {e}") from None
    keys = set(arrays)

    def pair(xk: str, yk: str) -> RawSplit | None:
        if xk not in arrays and yk not in arrays:
            return None
        if xk not in arrays or yk not in arrays:
            have, lack = (xk, yk) if xk in arrays else (yk, xk)
            raise DataError(f"{path}: has {have!r} but no {lack!r}")
        where = f"{path} [{xk}]"
        x = as_images(arrays[xk], where, channels)
        return RawSplit(x, targets(arrays[yk], f"{path} [{yk}]"), where, f"{path} [{yk}]")

    train = pair("x_train", "y_train")
    test = pair("x_test", "y_test")
    whole = pair("x", "y")
    if train is None and whole is None:
        raise DataError(
            f"{path}: expected arrays x_train, y_train, x_test, y_test "
            f"(or x, y with a test_fraction); found {sorted(keys) or 'none'}"
        )
    if whole is not None and train is not None:
        raise DataError(f"{path}: has both x/y and x_train/y_train; keep one layout")
    if test is not None and train is None:
        raise DataError(f"{path}: has x_test/y_test but no x_train/y_train")
    return train, test, whole


# ---------------------------------------------------------------- image folders

_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _read_folder(
    path: Path,
    shape: tuple[int, int, int],
    num_classes: int,
    known: Sequence[str] | None = None,
    resize: bool = False,
    listing: bool = False,
) -> tuple[RawSplit | None, RawSplit | None, RawSplit | None, list[str]]:
    if not path.is_dir():
        raise DataError(f"{path}: not a folder")
    try:
        from PIL import Image  # noqa: F401
    except ImportError:
        raise DataError(f"image folders need Pillow: {install_hint('torch')}") from None
    if shape[0] not in _PIL_MODES:
        raise DataError(
            f"{path}: image folders give 1 (grey), 3 (RGB) or 4 (RGBA) channels; "
            f"input.shape has {shape[0]}"
        )
    train_dir = path / "train"
    test_dir = next((path / n for n in ("test", "val") if (path / n).is_dir()), None)
    if train_dir.is_dir():
        classes = list(known) if known is not None else _class_dirs(train_dir)
        train = _read_classes(train_dir, classes, shape, known is not None, resize, listing)
        test = _read_classes(test_dir, classes, shape, True, resize, listing) \
            if test_dir else None
        return train, test, None, classes
    if test_dir is not None and known is not None:
        # Evaluating on a folder that only has a test part.
        classes = list(known)
        return None, _read_classes(test_dir, classes, shape, True, resize, listing), None, \
            classes
    names = _class_dirs(path)
    classes = list(known) if known is not None else names
    whole = _read_classes(path, classes, shape, known is not None, resize, listing)
    return None, None, whole, classes


def _class_dirs(d: Path) -> list[str]:
    names = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{d}: the dataset is empty: no class sub-folders")
    return names


def _read_classes(
    d: Path,
    classes: list[str],
    shape: tuple[int, int, int],
    subset: bool = False,
    resize: bool = False,
    listing: bool = False,
) -> RawSplit:
    """The images of each class folder; with ``listing``, only their paths (as ``x``,
    an object array), for a pipeline that reads them while training."""
    present = _class_dirs(d)
    unknown = [n for n in present if n not in classes]
    if unknown:
        raise DataError(
            f"{d}: class folder(s) {', '.join(unknown)} not among the training classes "
            f"({', '.join(classes)})"
        )
    if not subset and len(present) != len(classes):
        missing = [n for n in classes if n not in present]
        raise DataError(f"{d}: class folder(s) missing: {', '.join(missing)}")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, name in enumerate(classes):
        cd = d / name
        if not cd.is_dir():
            continue
        files = sorted(p for p in cd.iterdir() if not p.name.startswith("."))
        files = [p for p in files if p.is_file()]
        if not files:
            raise DataError(f"{cd}: class folder has no images")
        for p in files:
            xs.append(str(p) if listing else read_image(p, shape, resize))
            ys.append(label)
    if not xs:
        raise DataError(f"{d}: the dataset is empty")
    if listing:
        return RawSplit(np.asarray(xs, dtype=object), np.asarray(ys, dtype=np.int64), str(d))
    x = np.stack(xs).transpose(0, 3, 1, 2)
    return RawSplit(np.ascontiguousarray(x), np.asarray(ys, dtype=np.int64), str(d))


def read_image(p: str | Path, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
    """One image file as uint8 ``(H, W, C)`` of the spec's shape. Raises DataError."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(p) as im:  # reads the header only
            if im.size != (w, h) and not resize:  # before the pixels are decoded
                raise DataError(
                    f"{p}: image is {im.size[0]}×{im.size[1]} (width×height) but the "
                    f"spec's input.shape needs {w}×{h} (dataset resize: true "
                    "resizes them)"
                )
            im.load()
            im = im.convert(_PIL_MODES[c])
            if im.size != (w, h):
                # Pillow's bilinear widens its filter when shrinking: antialiased.
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{p}: image is too large to read ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{p}: not a readable image ({e})") from None
    return arr.reshape(h, w, c)
