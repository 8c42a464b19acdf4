"""Loading and checking training data: IDX (MNIST), .npz, image folders, synthetic.

Everything is read into memory up front as float32 image tensors ``(N, C, H, W)``
and int64 label tensors, normalised once, and checked against the spec (image
shape, number of classes, label range) so that a mismatch is a ``DataError``
with a plain message before any training step. The formats, the split rules and
the normalisation are described in ``shapecheck.trainspec``.

Only ``shapecheck build --train`` and ``eval`` import this module.
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shapecheck.trainspec import DatasetSpec

__all__ = [
    "DataError",
    "Dataset",
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

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


# A split as read from disk: images (N, C, H, W) as numpy (uint8 or float), labels int64.
@dataclass
class _Raw:
    x: np.ndarray
    y: np.ndarray
    where: str


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


def load_dataset(
    spec: DatasetSpec,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    base_dir: str | Path | None = None,
) -> Dataset:
    """Read the train and test splits, check them against the spec, normalise them.

    ``input_shape`` is the spec's ``(C, H, W)``; ``num_classes`` the last layer's
    ``out_features``. Raises ``DataError``.
    """
    shape = _check_input_shape(input_shape)
    path = resolve_path(spec, base_dir)
    fmt = detect_format(spec, path)
    notes: list[str] = []
    classes: list[str] | None = None
    if fmt == "synthetic":
        train, test = _synthetic(spec, shape, num_classes)
        source = "synthetic"
    else:
        assert path is not None
        source = f"{fmt} {path}"
        if fmt == "idx":
            required = ("train",) if spec.test_fraction is not None else ("train", "test")
            train, test, whole = _read_idx(path, want=("train", "test"), required=required)
        elif fmt == "npz":
            train, test, whole = _read_npz(path, shape[0])
        elif fmt == "folder":
            train, test, whole, classes = _read_folder(path, shape, num_classes)
        else:  # pragma: no cover - the Literal rules it out
            raise DataError(f"unknown dataset format {fmt!r}")
        train, test = _split(train, test, whole, spec, path)
    train = _limit(train, spec.train_size)
    test = _limit(test, spec.test_size)
    for raw in (train, test):
        _check(raw, shape, num_classes, classes)
    if classes is not None and len(classes) != num_classes:
        raise DataError(
            f"{path}: {len(classes)} class folders ({', '.join(classes)}) but the last "
            f"layer has out_features {num_classes}"
        )
    seen = np.unique(train.y).size
    if classes is None and seen < num_classes:
        notes.append(
            f"the training labels use {seen} of the {num_classes} classes "
            "the last layer has"
        )
    x_train = _to_float(train.x)
    x_test = _to_float(test.x)
    mean, std = _mean_std(spec, x_train, shape[0])
    _normalise(x_train, mean, std)
    _normalise(x_test, mean, std)
    return Dataset(
        x_train=x_train,
        y_train=torch.from_numpy(train.y),
        x_test=x_test,
        y_test=torch.from_numpy(test.y),
        mean=mean,
        std=std,
        classes=classes,
        source=source,
        notes=notes,
    )


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split for evaluation, normalised with the training run's ``mean``/``std``.

    ``split="test"`` takes the dataset's test split; a dataset that has no split
    of its own (npz with x/y, an image folder of classes) is used whole, or its
    held-out part where the spec has a ``test_fraction``. ``split="train"`` takes
    the training split. ``classes`` (the training run's class names) maps image
    folders by name, so an eval folder may hold a subset of the classes.
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    shape = _check_input_shape(input_shape)
    path = resolve_path(spec, base_dir)
    fmt = detect_format(spec, path)
    if fmt == "synthetic":
        raw = _synthetic(spec, shape, num_classes)[0 if split == "train" else 1]
    else:
        assert path is not None
        folder_classes = None
        f = spec.test_fraction
        if fmt == "idx":
            want = ("test",) if split == "test" else ("train", "test")
            train, test, whole = _read_idx(path, want=want, required=())
            if split == "test" and test is None and f is not None:
                train, test, whole = _read_idx(path, want=("train",), required=())
        elif fmt == "npz":
            train, test, whole = _read_npz(path, shape[0])
        elif fmt == "folder":
            train, test, whole, folder_classes = _read_folder(
                path, shape, num_classes, known=classes
            )
        else:  # pragma: no cover
            raise DataError(f"unknown dataset format {fmt!r}")
        # The same split rules as load_dataset, so a held-out part is the same images.
        if whole is not None:
            raw = whole if f is None else _stratified(whole, f)[split == "test"]
        elif split == "test":
            if test is not None:
                raw = test
            elif train is not None and f is not None:
                raw = _stratified(train, f)[1]
            else:
                raise DataError(f"{path}: missing split: no test data found")
        else:
            if train is None:
                raise DataError(f"{path}: missing split: no training data found")
            raw = _stratified(train, f)[0] if test is None and f is not None else train
        if classes is None:
            classes = folder_classes
    raw = _limit(raw, spec.train_size if split == "train" else spec.test_size)
    _check(raw, shape, num_classes, list(classes) if classes is not None else None)
    x = _to_float(raw.x)
    _normalise(x, list(mean), list(std))
    return x, torch.from_numpy(raw.y)


# ---------------------------------------------------------------- checks


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise DataError(
            f"training needs an image input (channels, height, width); "
            f"input.shape is {list(input_shape)}"
        )
    c, h, w = (int(v) for v in input_shape)
    return c, h, w


def _fmt_shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(v)) for v in shape)


def _check(
    raw: _Raw, shape: tuple[int, int, int], num_classes: int, classes: list[str] | None
) -> None:
    if raw.x.shape[0] == 0:
        raise DataError(f"{raw.where}: the dataset is empty")
    if raw.x.shape[0] != raw.y.shape[0]:
        raise DataError(
            f"{raw.where}: {raw.x.shape[0]} images but {raw.y.shape[0]} labels"
        )
    if tuple(raw.x.shape[1:]) != shape:
        raise DataError(
            f"{raw.where}: images are {_fmt_shape(raw.x.shape[1:])} (channels×height×width) "
            f"but the spec's input.shape is {list(shape)}"
        )
    if raw.x.dtype.kind == "f" and not np.isfinite(raw.x).all():
        raise DataError(f"{raw.where}: the images contain NaN or infinite values")
    lo, hi = int(raw.y.min()), int(raw.y.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(
            f"{raw.where}: label {bad} is out of range: the last layer has "
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
    return y.astype(np.int64)


def _images(x: np.ndarray, where: str, channels: int | None = None) -> np.ndarray:
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


def _to_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(x, dtype=np.float32, order="C"))
    if x.dtype == np.uint8:
        t.div_(255.0)
    return t


def _mean_std(
    spec: DatasetSpec, x: torch.Tensor, channels: int
) -> tuple[list[float], list[float]]:
    if spec.mean is not None and spec.std is not None:
        mean = _per_channel(spec.mean, channels, "mean")
        std = _per_channel(spec.std, channels, "std")
        return mean, std
    std_t, mean_t = torch.std_mean(x.transpose(0, 1).reshape(channels, -1), dim=1)
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


def _normalise(x: torch.Tensor, mean: list[float], std: list[float]) -> None:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    x.sub_(m).div_(s)


def _limit(raw: _Raw, n: int | None) -> _Raw:
    if n is None or n >= raw.x.shape[0]:
        return raw
    return _Raw(raw.x[:n], raw.y[:n], raw.where)


def _split(
    train: _Raw | None, test: _Raw | None, whole: _Raw | None, spec: DatasetSpec, path: Path
) -> tuple[_Raw, _Raw]:
    if whole is not None:
        if spec.test_fraction is None:
            raise DataError(
                f"{path}: missing split: the data has no separate test set; give "
                "test_fraction (e.g. 0.2) to hold out part of it"
            )
        return _stratified(whole, spec.test_fraction)
    if train is None:
        raise DataError(f"{path}: missing split: no training data found")
    if test is None:
        if spec.test_fraction is not None:
            return _stratified(train, spec.test_fraction)
        raise DataError(
            f"{path}: missing split: no test data found; add it, or give test_fraction "
            "to hold out part of the training data"
        )
    return train, test


def _stratified(raw: _Raw, fraction: float) -> tuple[_Raw, _Raw]:
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
    return (
        _Raw(raw.x[tr], raw.y[tr], f"{raw.where} (training part)"),
        _Raw(raw.x[te], raw.y[te], f"{raw.where} (held-out part)"),
    )


# ---------------------------------------------------------------- synthetic


def _synthetic(
    spec: DatasetSpec, shape: tuple[int, int, int], num_classes: int
) -> tuple[_Raw, _Raw]:
    # One fixed random template per class plus noise: learnable, yet not trivial.
    g = torch.Generator().manual_seed(1234)
    templates = torch.randn((num_classes, *shape), generator=g)

    def make(n: int, where: str) -> _Raw:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = templates[y] + 0.5 * torch.randn((n, *shape), generator=g)
        return _Raw(x.numpy(), y.numpy().astype(np.int64), where)

    train = make(spec.train_size or SYNTHETIC_TRAIN_SIZE, "synthetic training data")
    test = make(spec.test_size or SYNTHETIC_TEST_SIZE, "synthetic test data")
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
        if p.is_file():
            return p
    return None


def _read_bytes(p: Path) -> bytes:
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{p}: truncated or corrupt gzip file ({e})") from None
    return data


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
    expected_bytes = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected_bytes:
        what = "truncated" if len(data) < expected_bytes else "has extra bytes"
        raise DataError(
            f"{p}: {what}: the header says {_fmt_shape(dims)} ({expected_bytes} bytes) "
            f"but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _read_idx(
    path: Path, want: Sequence[str], required: Sequence[str]
) -> tuple[_Raw | None, _Raw | None, None]:
    d = _idx_dir(path)
    if d is None:
        raise DataError(
            f"{path}: no MNIST IDX files found (expected {IDX_NAMES['train', 'images']}[.gz] "
            "and the other three)"
        )
    splits: dict[str, _Raw | None] = {}
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
        splits[split] = _Raw(_images(x, str(img_p)), _labels(y, str(lbl_p)), str(img_p))
    return splits["train"], splits["test"], None


# ---------------------------------------------------------------- npz


def _read_npz(path: Path, channels: int) -> tuple[_Raw | None, _Raw | None, _Raw | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read as .npz: {e}") from None
    keys = set(arrays)

    def pair(xk: str, yk: str) -> _Raw | None:
        if xk not in arrays and yk not in arrays:
            return None
        if xk not in arrays or yk not in arrays:
            have, lack = (xk, yk) if xk in arrays else (yk, xk)
            raise DataError(f"{path}: has {have!r} but no {lack!r}")
        where = f"{path} [{xk}]"
        x = _images(arrays[xk], where, channels)
        return _Raw(x, _labels(arrays[yk], f"{path} [{yk}]"), where)

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
) -> tuple[_Raw | None, _Raw | None, _Raw | None, list[str]]:
    if not path.is_dir():
        raise DataError(f"{path}: not a folder")
    try:
        from PIL import Image  # noqa: F401
    except ImportError:
        raise DataError("image folders need Pillow: pip install 'shapecheck[torch]'") from None
    if shape[0] not in _PIL_MODES:
        raise DataError(
            f"{path}: image folders give 1 (grey), 3 (RGB) or 4 (RGBA) channels; "
            f"input.shape has {shape[0]}"
        )
    train_dir = path / "train"
    test_dir = next((path / n for n in ("test", "val") if (path / n).is_dir()), None)
    if train_dir.is_dir():
        classes = list(known) if known is not None else _class_dirs(train_dir)
        train = _read_classes(train_dir, classes, shape, subset=known is not None)
        test = _read_classes(test_dir, classes, shape, subset=True) if test_dir else None
        return train, test, None, classes
    if test_dir is not None and known is not None:
        # Evaluating on a folder that only has a test part.
        classes = list(known)
        return None, _read_classes(test_dir, classes, shape, subset=True), None, classes
    names = _class_dirs(path)
    classes = list(known) if known is not None else names
    whole = _read_classes(path, classes, shape, subset=known is not None)
    return None, None, whole, classes


def _class_dirs(d: Path) -> list[str]:
    names = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{d}: the dataset is empty: no class sub-folders")
    return names


def _read_classes(
    d: Path, classes: list[str], shape: tuple[int, int, int], subset: bool = False
) -> _Raw:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
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
            try:
                with Image.open(p) as im:
                    im.load()
                    if im.size != (w, h):
                        raise DataError(
                            f"{p}: image is {im.size[0]}×{im.size[1]} (width×height) but the "
                            f"spec's input.shape needs {w}×{h}"
                        )
                    arr = np.asarray(im.convert(_PIL_MODES[c]))
            except DataError:
                raise
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                raise DataError(f"{p}: not a readable image ({e})") from None
            xs.append(arr.reshape(h, w, c))
            ys.append(label)
    if not xs:
        raise DataError(f"{d}: the dataset is empty")
    x = np.stack(xs).transpose(0, 3, 1, 2)
    return _Raw(np.ascontiguousarray(x), np.asarray(ys, dtype=np.int64), str(d))
