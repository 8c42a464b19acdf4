"""Data for dense prediction: an image in, a map out (``task: segment`` or ``regress``).

A segmentation target is an ``(H, W)`` mask of class indices (int64; ``IGNORE_INDEX``
marks pixels that count for nothing), a regression target an image ``(C, H, W)`` of the
network's output shape (float32; 8-bit targets scaled to [0, 1]). Inputs are read,
scaled and normalised as ``shapecheck.training.datasets`` does for classification; the targets are
never normalised. Formats:

- ``npz``: ``x, y`` (with ``test_fraction``) or ``x_train, y_train, x_test, y_test``;
  ``y`` holds the masks ``(N, H, W)`` or the target images.
- ``folder``: ``images/`` and ``masks/`` (``targets/`` for regression) with matching file
  stems, either directly in the folder (with ``test_fraction``) or under ``train/`` and
  ``test/`` (or ``val/``). A mask is a palette or grayscale PNG whose pixel values are the
  class indices.
- ``mnist-seg``: each MNIST digit with a mask: 0 (background) everywhere, ``1 + digit``
  where its ink is (intensity >= ``INK_THRESHOLD`` of 255): 11 classes.
- ``mnist-sr``: each digit as a ×2 super-resolution pair: the input is the 14×14 mean of
  each 2×2 block, the target the 28×28 digit, both in [0, 1].

The two MNIST sets are made from ``examples/data/mnist-5k`` (4,000 training and 1,000 test
digits) unless ``path`` names another MNIST IDX folder, deterministically, in memory. Grey
digits are repeated over the channels the network has. The split rules are
classification's: ``test_fraction`` and ``val_fraction`` hold out a fixed random part,
``train_size`` and ``test_size`` keep a fixed random subset (not stratified: a mask has
many classes).

Only ``shapecheck build --train`` and ``eval`` import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..core.trainspec import DatasetSpec
from . import datasets as cls_data
from .datasets import DataError, Dataset, RawSplit

IGNORE_INDEX = 255
INK_THRESHOLD = 128  # of 255: a digit's pixel at half intensity or more is ink
SR_FACTOR = 2
MNIST_SEG_CLASSES = ["background"] + [f"digit {d}" for d in range(10)]
# The shipped digits, beside the package in a source checkout.
SHIPPED_DIGITS = Path(__file__).resolve().parents[2] / "examples" / "data" / "mnist-5k"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Target:
    """What the network's output asks of each target: ``task`` segment, ``classes`` K and
    the output's ``(H, W)``; or regress, an image of the output's ``(C, H, W)``."""

    task: str
    output_shape: tuple[int, int, int]  # the output's (K, H, W)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.output_shape[1:] if self.task == "segment" else self.output_shape

    @property
    def classes(self) -> int:
        return self.output_shape[0]

    def describe(self) -> str:
        k, h, w = self.output_shape
        return f"(N, {k}, {h}, {w})"


# ---------------------------------------------------------------- the MNIST sets


def mnist_seg(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The masks of digits ``images`` (N, H, W) uint8 with classes ``labels``: uint8 (N, H, W),
    0 on the background and ``1 + label`` where the ink is."""
    ink = images >= INK_THRESHOLD
    return np.where(ink, (labels.astype(np.uint8) + 1)[:, None, None], 0).astype(np.uint8)


def mnist_sr(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) of digits ``images`` (N, H, W) uint8: float32 in [0, 1], the input the
    mean of each ``SR_FACTOR``×``SR_FACTOR`` block of the target."""
    high = images.astype(np.float32) / 255
    n, h, w = high.shape
    f = SR_FACTOR
    low = high.reshape(n, h // f, f, w // f, f).mean(axis=(2, 4), dtype=np.float32)
    return low, high


def _digits(spec: DatasetSpec, base_dir: str | Path | None) -> tuple[RawSplit, RawSplit, Path]:
    path = cls_data.resolve_path(spec, base_dir) or SHIPPED_DIGITS
    if not path.exists():
        raise DataError(f"{path}: the MNIST digits {spec.format} is made from are not there; "
                        "give the dataset a path: an MNIST IDX folder")
    train, test, _ = cls_data.read_idx(path, want=("train", "test"),
                                        required=("train", "test"))
    assert train is not None and test is not None
    return train, test, path


def _mnist(spec: DatasetSpec, base_dir: str | Path | None, channels: int,
           target: Target) -> tuple[RawSplit, RawSplit, str]:
    train, test, path = _digits(spec, base_dir)

    def make(raw: RawSplit) -> RawSplit:
        x = raw.x[:, 0]
        if spec.format == "mnist-seg":
            return RawSplit(_repeat(x[:, None], channels), mnist_seg(x, raw.y),
                        f"{spec.format} of {raw.where}")
        low, high = mnist_sr(x)
        return RawSplit(_repeat(low[:, None], channels), _repeat(high[:, None], target.shape[0]),
                    f"{spec.format} of {raw.where}")

    return make(train), make(test), f"{spec.format} (made from {path})"


def _repeat(x: np.ndarray, channels: int) -> np.ndarray:
    return x if channels == 1 else np.repeat(x, channels, axis=1)


# ---------------------------------------------------------------- npz and folders


def _read_npz(path: Path, shape: tuple[int, int, int],
              target: Target, resize: bool) -> tuple[RawSplit | None, RawSplit | None,
                                                     RawSplit | None]:
    return cls_data.read_npz(path, shape, resize, partial(_targets, target=target))


def _targets(y: np.ndarray, where: str, target: Target) -> np.ndarray:
    """Masks (N, H, W) as int64, or target images (N, C, H, W) as read."""
    y = np.asarray(y)
    if y.dtype.kind not in "uif" or y.dtype.kind == "b":
        raise DataError(f"{where}: targets must be numbers, not {y.dtype}")
    if target.task == "regress":
        return cls_data.as_images(y, where, target.shape[0])
    if y.ndim == 4 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 3:
        raise DataError(f"{where}: masks must be (N, H, W) class indices, got shape {y.shape}")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DataError(f"{where}: masks must hold integer class indices")
    if y.size and (y.min() < 0 or y.max() > np.iinfo(np.int64).max):
        raise DataError(f"{where}: mask value {y.min() if y.min() < 0 else y.max()} is out of "
                        "range")
    return y.astype(np.int64)


def _read_folder(path: Path, shape: tuple[int, int, int],
                 target: Target, resize: bool) -> tuple[RawSplit | None, RawSplit | None, RawSplit | None]:
    if not path.is_dir():
        raise DataError(f"{path}: not a folder")
    test_dir = next((path / n for n in ("test", "val") if (path / n).is_dir()), None)
    if (path / "train").is_dir():
        return (_read_pairs(path / "train", shape, target, resize),
                _read_pairs(test_dir, shape, target, resize) if test_dir else None, None)
    return None, None, _read_pairs(path, shape, target, resize)


def _stems(d: Path) -> dict[str, Path]:
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in _IMAGE_SUFFIXES)
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise DataError(f"{d}: two files named {p.stem}: {stems[p.stem].name} and {p.name}")
        stems[p.stem] = p
    return stems


def _read_pairs(d: Path, shape: tuple[int, int, int], target: Target, resize: bool) -> RawSplit:
    kind = "masks" if target.task == "segment" else "targets"
    images_dir, targets_dir = d / "images", d / kind
    for sub in (images_dir, targets_dir):
        if not sub.is_dir():
            raise DataError(f"{d}: no {sub.name}/ folder; a {target.task} dataset folder holds "
                            f"images/ and {kind}/ with matching file stems")
    images, targets = _stems(images_dir), _stems(targets_dir)
    if not images:
        raise DataError(f"{images_dir}: the dataset is empty")
    lonely = sorted(images.keys() ^ targets.keys())
    if lonely:
        which = [f"{s} (no {'image' if s in targets else kind[:-1]})" for s in lonely[:5]]
        raise DataError(f"{d}: images/ and {kind}/ do not match: {', '.join(which)}"
                        + (f" and {len(lonely) - 5} more" if len(lonely) > 5 else ""))
    xs, ys = [], []
    for stem in sorted(images):
        xs.append(cls_data.read_image(images[stem], shape, resize))
        ys.append(_read_mask(targets[stem], target.shape) if target.task == "segment"
                  else cls_data.read_image(targets[stem], target.shape, False)
                  .transpose(2, 0, 1))
    x = np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2))
    return RawSplit(x, np.stack(ys), str(images_dir), str(targets_dir))


def _read_mask(p: Path, hw: tuple[int, ...]) -> np.ndarray:
    """A palette or grayscale image's pixel values: the class indices, (H, W) int64."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            if im.mode not in ("P", "L", "I", "I;16", "1"):
                raise DataError(f"{p}: a mask is a palette or grayscale image of class "
                                f"indices, not {im.mode}")
            if im.size != (hw[1], hw[0]):
                raise DataError(f"{p}: mask is {im.size[0]}×{im.size[1]} (width×height) but "
                                f"the network's output is {hw[1]}×{hw[0]}")
            arr = np.asarray(im).astype(np.int64)  # a palette image's values are its indices
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{p}: not a readable image ({e})") from None
    return arr


# ---------------------------------------------------------------- checks and splits


def _check(raw: RawSplit, shape: tuple[int, int, int], target: Target, resize: bool) -> None:
    if raw.x.shape[0] == 0:
        raise DataError(f"{raw.where}: the dataset is empty")
    if raw.x.shape[0] != raw.y.shape[0]:
        raise DataError(f"{raw.where}: {raw.x.shape[0]} images but {raw.y.shape[0]} targets")
    if tuple(raw.x.shape[1:]) != shape and not (resize and raw.x.shape[1] == shape[0]):
        raise DataError(f"{raw.where}: images are {cls_data.format_shape(raw.x.shape[1:])} "
                        f"(channels×height×width) but the spec's input.shape is {list(shape)}")
    if raw.x.dtype.kind == "f" and not np.isfinite(raw.x).all():
        raise DataError(f"{raw.where}: the images contain NaN or infinite values")
    where = raw.labels_where or raw.where
    if tuple(raw.y.shape[1:]) != tuple(target.shape):
        what = "masks" if target.task == "segment" else "targets"
        raise DataError(f"{where}: the {what} are (N, {', '.join(map(str, raw.y.shape[1:]))}) "
                        f"but the network's output is {target.describe()}, so each "
                        f"{what[:-1]} must be ({', '.join(map(str, target.shape))})")
    if target.task == "segment":
        bad = raw.y[(raw.y != IGNORE_INDEX) & ((raw.y < 0) | (raw.y >= target.classes))]
        if bad.size:
            raise DataError(f"{where}: mask value {int(bad[0])} is out of range: the output "
                            f"has {target.classes} classes, so masks hold 0.."
                            f"{target.classes - 1} ({IGNORE_INDEX}: ignored)")
    elif raw.y.dtype.kind == "f" and not np.isfinite(raw.y).all():
        raise DataError(f"{where}: the targets contain NaN or infinite values")


def _take(raw: RawSplit, idx: np.ndarray, where: str | None = None) -> RawSplit:
    return RawSplit(raw.x[idx], raw.y[idx], where or raw.where, raw.labels_where)


def _split(raw: RawSplit, fraction: float, held_out: str) -> tuple[RawSplit, RawSplit]:
    """(the rest, a fixed random ``fraction``), each in the original order."""
    perm = np.random.default_rng(cls_data.SPLIT_SEED).permutation(raw.x.shape[0])
    k = round(raw.x.shape[0] * fraction)
    base = raw.where.removesuffix(" (training part)")
    return (_take(raw, np.sort(perm[k:]), f"{base} (training part)"),
            _take(raw, np.sort(perm[:k]), f"{base} ({held_out})"))


def _subset(raw: RawSplit, n: int | None) -> RawSplit:
    if n is None or n >= raw.x.shape[0]:
        return raw
    perm = np.random.default_rng(cls_data.SPLIT_SEED).permutation(raw.x.shape[0])
    return _take(raw, np.sort(perm[:n]))  # a smaller n keeps a subset of a larger one's


@dataclass
class _Parts:
    train: RawSplit | None
    val: RawSplit | None
    test: RawSplit | None
    whole: RawSplit | None
    source: str


def _parts(spec: DatasetSpec, base_dir: str | Path | None, shape: tuple[int, int, int],
           target: Target, training: bool) -> _Parts:
    path = cls_data.resolve_path(spec, base_dir)
    fmt = spec.format
    if fmt in ("mnist-seg", "mnist-sr"):
        want = "segment" if fmt == "mnist-seg" else "regress"
        if target.task != want:
            raise DataError(f"{fmt} is a {want} dataset; this network trains to {target.task}"
                            + (" (give loss mse or l1 to regress)" if want == "regress" else ""))
        train, test, source = _mnist(spec, base_dir, shape[0], target)
        whole = None
    else:
        fmt = cls_data.detect_format(spec, path)
        if fmt not in ("npz", "folder"):
            raise DataError(f"{fmt} data has a label per image; {target.task} needs a target per "
                            "pixel: an .npz of x and y, a folder of images/ and "
                            f"{'masks' if target.task == 'segment' else 'targets'}/, or "
                            f"{'mnist-seg' if target.task == 'segment' else 'mnist-sr'}")
        assert path is not None
        source = f"{fmt} {path}"
        reader = _read_npz if fmt == "npz" else _read_folder
        train, test, whole = reader(path, shape, target, spec.resize)
    f = spec.test_fraction
    if whole is not None and f is not None:
        train, test = _split(whole, f, "held-out part")
        whole = None
    elif test is not None and f is not None:
        raise DataError(f"{path}: the dataset has its own test split, so test_fraction {f:g} "
                        "would be ignored; remove it (use val_fraction to hold out part of the "
                        "training data for validation)")
    elif whole is not None and training:
        raise DataError(f"{path}: missing split: the data has no separate test set; give "
                        "test_fraction (e.g. 0.2) to hold out part of it")
    elif test is None and training:
        raise DataError(f"{path}: missing split: no test data found; add it, or give "
                        "test_fraction to hold out part of the training data")
    val = None
    if train is not None:
        train = _subset(train, spec.train_size)
        if spec.val_fraction is not None:
            train, val = _split(train, spec.val_fraction, "validation part")
    if test is not None:
        test = _subset(test, spec.test_size)
    for raw in (train, val, test, whole):
        if raw is not None:
            _check(raw, shape, target, spec.resize)
    return _Parts(train, val, test, whole, source)


def _y_tensor(raw: RawSplit, target: Target) -> torch.Tensor:
    if target.task == "segment":
        return torch.from_numpy(np.ascontiguousarray(raw.y, dtype=np.int64))
    y = torch.from_numpy(np.asarray(raw.y, dtype=np.float32))
    return y / 255 if raw.y.dtype == np.uint8 else y


def _x_tensor(raw: RawSplit, shape: tuple[int, int, int], mean: list[float],
              std: list[float]) -> torch.Tensor:
    x = cls_data.to_float(raw, shape)
    cls_data.normalise(x, mean, std)
    return x


# ---------------------------------------------------------------- public loaders


def load_dense(spec: DatasetSpec, *, target: Target, input_shape: Sequence[int],
               base_dir: str | Path | None = None, extra_bytes: int = 0,
               extra_what: str = "") -> Dataset:
    """The train, validation and test splits of a dense dataset, checked against the input
    shape and ``target``, inputs normalised. Raises DataError (MemoryLimitError)."""
    shape = cls_data.check_input_shape(input_shape)
    parts = _parts(spec, base_dir, shape, target, training=True)
    assert parts.train is not None and parts.test is not None
    splits = [r for r in (parts.train, parts.val, parts.test) if r is not None]
    y_bytes = sum(r.y.shape[0] * int(np.prod(target.shape)) * 8 for r in splits)
    cls_data.check_data_fits(splits, shape, extra_bytes + y_bytes,
                         " and ".join(w for w in (extra_what, "the targets") if w))
    x_train = cls_data.to_float(parts.train, shape)
    mean, std = cls_data.mean_std(spec, x_train, shape[0])
    cls_data.normalise(x_train, mean, std)
    val = parts.val
    return Dataset(
        x_train=x_train, y_train=_y_tensor(parts.train, target),
        x_test=_x_tensor(parts.test, shape, mean, std), y_test=_y_tensor(parts.test, target),
        mean=mean, std=std, classes=_class_names(spec, target), source=parts.source,
        x_val=_x_tensor(val, shape, mean, std) if val is not None else None,
        y_val=_y_tensor(val, target) if val is not None else None)


def load_dense_split(spec: DatasetSpec, *, target: Target, input_shape: Sequence[int],
                     mean: Sequence[float], std: Sequence[float],
                     base_dir: str | Path | None = None,
                     split: str = "test") -> tuple[torch.Tensor, torch.Tensor, str]:
    """One split for ``eval``, normalised with the run's ``mean``/``std``: images, targets,
    and what they are in words."""
    shape = cls_data.check_input_shape(input_shape)
    parts = _parts(spec, base_dir, shape, target, training=False)
    if split == "all":
        pieces = [r for r in (parts.whole, parts.train, parts.val, parts.test) if r is not None]
        raw = pieces[0] if len(pieces) == 1 else RawSplit(
            np.concatenate([r.x for r in pieces]), np.concatenate([r.y for r in pieces]),
            parts.source)
    else:
        raw = {"test": parts.test if parts.test is not None else parts.whole,
               "val": parts.val, "train": parts.train}[split]
        if raw is None:
            raise DataError(f"{parts.source}: no {split} split"
                            + (" (the dataset entry has no val_fraction)" if split == "val"
                               else ""))
    return _x_tensor(raw, shape, list(mean), list(std)), _y_tensor(raw, target), raw.where


def _class_names(spec: DatasetSpec, target: Target) -> list[str] | None:
    if spec.format == "mnist-seg" and target.classes == len(MNIST_SEG_CLASSES):
        return list(MNIST_SEG_CLASSES)
    return None
