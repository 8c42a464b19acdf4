"""Dense prediction: segmentation and per-pixel regression, trained end to end from a spec.

mnist-seg and mnist-sr are made from the shipped digits, so every test here runs on real
images: a small U-Net segments them, tiny_sr super-resolves them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from shapecheck.cli import main
from shapecheck.core.trainspec import AugmentSpec, DatasetSpec
from shapecheck.training import datasets as cls_data
from shapecheck.training.data import augment
from shapecheck.training.datasets import DataError
from shapecheck.training.dense import iou_of, mean_iou
from shapecheck.training.dense_datasets import (
    IGNORE_INDEX,
    INK_THRESHOLD,
    MNIST_SEG_CLASSES,
    SHIPPED_DIGITS,
    Target,
    load_dense,
    load_dense_split,
    mnist_seg,
    mnist_sr,
)

ROOT = Path(__file__).resolve().parent.parent
UNET = ROOT / "specs" / "unet_mnist.yaml"
TINY_SR = ROOT / "specs" / "tiny_sr.yaml"
needs_digits = pytest.mark.skipif(not (SHIPPED_DIGITS / "train-images-idx3-ubyte.gz").exists(),
                                  reason="examples/data/mnist-5k is missing")
SEG = Target("segment", (11, 28, 28))


def test_the_shipped_digits_are_found_beside_the_package():
    """In a checkout the package finds the repository's digits, which the tests below need."""
    assert SHIPPED_DIGITS == ROOT / "examples" / "data" / "mnist-5k"
    assert (SHIPPED_DIGITS / "train-images-idx3-ubyte.gz").exists()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_unet(tmp_path: Path, **train) -> Path:
    """specs/unet_mnist.yaml trained on a few hundred digits: a few seconds on one core."""
    spec = yaml.safe_load(UNET.read_text(encoding="utf-8"))
    spec["train"] = {"dataset": {"format": "mnist-seg", "train_size": 400, "test_size": 100},
                     "optimizer": {"type": "adam", "lr": 0.003}, "epochs": 3,
                     "batch_size": 8, "seed": 0, "device": "cpu", **train}
    path = tmp_path / "unet_mnist.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the shipped sets


@needs_digits
def test_mnist_seg_marks_each_digits_ink_with_its_class():
    raw, _, _ = cls_data.read_idx(SHIPPED_DIGITS, want=("train",), required=("train",))
    images, labels = raw.x[:, 0], raw.y
    masks = mnist_seg(images, labels)
    ink = images >= INK_THRESHOLD
    assert (masks[~ink] == 0).all()
    assert (masks == np.where(ink, labels[:, None, None] + 1, 0)).all()
    # Loaded for training: the same masks, the 11 classes named, made alike every time.
    spec = DatasetSpec.model_validate({"format": "mnist-seg"})
    a = load_dense(spec, target=SEG, input_shape=(1, 28, 28))
    b = load_dense(spec, target=SEG, input_shape=(1, 28, 28))
    assert torch.equal(a.y_train, torch.from_numpy(masks.astype(np.int64)))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.classes == MNIST_SEG_CLASSES and len(a.classes) == 11
    assert sorted(a.y_train.unique().tolist()) == list(range(11))
    assert (a.num_train, a.num_test) == (4000, 1000)


@needs_digits
def test_mnist_sr_pairs_a_digit_with_the_mean_of_its_2x2_blocks():
    raw, _, _ = cls_data.read_idx(SHIPPED_DIGITS, want=("train",), required=("train",))
    low, high = mnist_sr(raw.x[:50, 0])
    assert low.shape == (50, 14, 14) and high.shape == (50, 28, 28)
    assert np.allclose(high, raw.x[:50, 0] / 255)
    assert np.allclose(low[:, 3, 5], high[:, 6:8, 10:12].mean(axis=(1, 2)))
    # Repeated over the three channels tiny_sr has; targets are not normalised.
    d = load_dense(DatasetSpec.model_validate({"format": "mnist-sr", "train_size": 50}),
                   target=Target("regress", (3, 28, 28)), input_shape=(3, 14, 14))
    assert d.x_train.shape == (50, 3, 14, 14) and d.y_train.shape == (50, 3, 28, 28)
    assert torch.equal(d.y_train[:, 0], d.y_train[:, 2])
    assert float(d.y_train.min()) == 0.0 and float(d.y_train.max()) == 1.0


# ---------------------------------------------------------------- training end to end


@needs_digits
def test_a_small_unet_learns_mnist_seg_and_eval_prints_the_iou(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["build", str(small_unet(tmp_path)), "--train", "--threads", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test pixel accuracy" in printed and "mIoU" in printed
    rows = metrics(out)
    assert list(rows[0]) == ["epoch", "train_loss", "train_pixel_acc", "val_loss",
                             "val_pixel_acc", "val_miou", "test_loss", "test_pixel_acc",
                             "test_miou", "lr", "samples_per_s", "seconds"]
    miou = [float(r["test_miou"]) for r in rows]
    assert miou[0] < miou[1] < miou[2], miou
    assert float(rows[-1]["test_pixel_acc"]) > 0.86  # the background alone is ~0.81 of it
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    info = json.loads((out / "run.json").read_text())
    assert info["task"] == "segment" and info["output_shape"] == [11, 28, 28]
    assert (out / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["eval", str(out), "--predictions", str(tmp_path / "p.png")]) == 0
    text = capsys.readouterr().out
    assert "mean IoU" in text and "confusion matrix over pixels" in text
    table = text.split("class")[1]
    for name in MNIST_SEG_CLASSES:
        assert f"\n{name} " in table
    assert f"mean IoU {miou[-1]:.2%}" in text  # eval scores the run's own test split alike
    assert (tmp_path / "p.png").stat().st_size > 1000


@needs_digits
def test_tiny_sr_learns_mnist_sr_and_reports_psnr(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["build", str(TINY_SR), "--input", "3x14x14", "--train", "--data", "mnist-sr",
                 "--optimizer", "adam", "--lr", "0.003", "--epochs", "2", "--threads", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert "test PSNR" in capsys.readouterr().out
    rows = metrics(out)
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_psnr", "test_loss",
                             "test_psnr", "lr", "samples_per_s", "seconds"]
    psnr = [float(r["test_psnr"]) for r in rows]
    mse = float(rows[-1]["test_loss"])  # the default loss of a regression: mse
    assert psnr[-1] == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
    assert psnr[0] < psnr[1] and psnr[1] > 18
    assert json.loads((out / "run.json").read_text())["loss"] == "mse"
    assert (out / "predictions.png").is_file()
    assert main(["eval", str(out)]) == 0
    assert f"PSNR {psnr[-1]:.2f} dB" in capsys.readouterr().out
    # Exported as a classifier is: the output checked is the map, (N, 3, 28, 28).
    pytest.importorskip("onnxruntime")
    assert main(["export", str(out), "--onnx", str(tmp_path / "sr.onnx")]) == 0
    assert "output (N, 3, 28, 28), checked with onnxruntime" in capsys.readouterr().out


@needs_digits
def test_model_best_watches_the_validation_miou(tmp_path, capsys):
    out = tmp_path / "run"
    path = small_unet(tmp_path, epochs=2, dataset={
        "format": "mnist-seg", "train_size": 200, "test_size": 50, "val_fraction": 0.25})
    assert main(["build", str(path), "--train", "--threads", "1", "--out", str(out)]) == 0
    rows = metrics(out)
    assert all(r["val_miou"] and r["val_pixel_acc"] for r in rows)
    best = max(rows, key=lambda r: float(r["val_miou"]))["epoch"]
    assert f"best validation epoch {best} (model_best.pt" in capsys.readouterr().out
    assert (out / "model_best.pt").is_file()


# ---------------------------------------------------------------- shapes that do not fit


def test_the_task_must_fit_the_output(tmp_path, capsys):
    lenet = ROOT / "specs" / "lenet5.yaml"
    assert main(["build", str(lenet), "--train", "--data", "synthetic", "--task", "segment",
                 "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "task segment" in err and "(N, K, H, W)" in err and "Traceback" not in err
    assert main(["build", str(UNET), "--train", "--task", "classify",
                 "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "(N, 11, 28, 28)" in err and "flatten and linear" in err
    assert main(["build", str(lenet), "--train", "--data", "synthetic", "--loss", "mse",
                 "--out", str(tmp_path / "r")]) == 1
    assert "needs an output (N, K, H, W)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_targets_of_another_shape_are_refused_naming_both(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "seg.npz"
    np.savez(path, x_train=rng.random((20, 1, 28, 28), dtype=np.float32),
             y_train=rng.integers(0, 11, (20, 14, 14)),
             x_test=rng.random((5, 1, 28, 28), dtype=np.float32),
             y_test=rng.integers(0, 11, (5, 14, 14)))
    spec = DatasetSpec.model_validate({"path": str(path)})
    with pytest.raises(DataError, match=r"masks are \(N, 14, 14\) but the network's output is "
                                        r"\(N, 11, 28, 28\)"):
        load_dense(spec, target=SEG, input_shape=(1, 28, 28))
    # The same through build: a one-line error, exit 2, nothing left behind.
    assert main(["build", str(UNET), "--train", "--data", str(path),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "(N, 14, 14)" in err and "(N, 11, 28, 28)" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@needs_digits
def test_mask_values_beyond_the_classes_are_refused():
    # unet_small's two classes cannot hold mnist-seg's eleven.
    with pytest.raises(DataError, match=r"mask value \d+ is out of range: the output has 2 "
                                        r"classes"):
        load_dense(DatasetSpec.model_validate("mnist-seg"),
                   target=Target("segment", (2, 28, 28)), input_shape=(1, 28, 28))


# ---------------------------------------------------------------- formats


def _png(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    from PIL import Image

    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if palette:  # pixel values are palette indices; the colours say nothing
        im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
        im.putpalette([v for c in range(256) for v in (c * 7 % 256, c * 13 % 256, c)])
    else:
        im = Image.fromarray(arr)
    im.save(path)


def test_image_and_mask_folders_and_npz_read_the_same(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 3, (6, 8, 8)).astype(np.uint8)
    y[0, 0, 0] = IGNORE_INDEX
    for split, idx in (("train", range(4)), ("test", range(4, 6))):
        (tmp_path / "f" / split / "images").mkdir(parents=True)
        (tmp_path / "f" / split / "masks").mkdir()
        for i in idx:
            _png(tmp_path / "f" / split / "images" / f"img{i}.png", x[i])
            # Palette masks and grayscale ones: their pixel values are the classes.
            _png(tmp_path / "f" / split / "masks" / f"img{i}.png", y[i], palette=i % 2 == 0)
    np.savez(tmp_path / "d.npz", x_train=x[:4], y_train=y[:4], x_test=x[4:], y_test=y[4:])
    target = Target("segment", (3, 8, 8))
    a = load_dense(DatasetSpec.model_validate({"path": str(tmp_path / "f")}), target=target,
                   input_shape=(1, 8, 8))
    b = load_dense(DatasetSpec.model_validate({"path": str(tmp_path / "d.npz")}),
                   target=target, input_shape=(1, 8, 8))
    assert torch.equal(a.y_train, torch.from_numpy(y[:4].astype(np.int64)))
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.y_test, b.y_test)
    assert torch.allclose(a.x_train, b.x_train) and a.mean == pytest.approx(b.mean)
    # eval's reader gives the run's own test split.
    xt, yt, _ = load_dense_split(DatasetSpec.model_validate({"path": str(tmp_path / "f")}),
                                 target=target, input_shape=(1, 8, 8), mean=a.mean, std=a.std)
    assert torch.equal(yt, a.y_test) and torch.allclose(xt, a.x_test)

    (tmp_path / "f" / "train" / "masks" / "img0.png").rename(
        tmp_path / "f" / "train" / "masks" / "other.png")
    with pytest.raises(DataError, match=r"images/ and masks/ do not match: img0 \(no mask\), "
                                        r"other \(no image\)"):
        load_dense(DatasetSpec.model_validate({"path": str(tmp_path / "f")}), target=target,
                   input_shape=(1, 8, 8))


def test_an_rgb_mask_is_refused(tmp_path):
    from PIL import Image

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "masks" / "a.png")
    spec = DatasetSpec.model_validate({"path": str(tmp_path), "test_fraction": 0.5})
    with pytest.raises(DataError, match="a mask is a palette or grayscale image of class "
                                        "indices, not RGB"):
        load_dense(spec, target=Target("segment", (3, 8, 8)), input_shape=(1, 8, 8))


# ---------------------------------------------------------------- augmentation and scores


def test_augment_moves_each_mask_with_its_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((16, 1, 12, 12), generator=g) + 0.1  # nothing here is 0: padding is
    masks = (x[:, 0] > 0.6).long()
    xa, ma = augment(x, AugmentSpec(crop_padding=3, flip=True), seed=5, yb=masks)
    padded = xa[:, 0] == 0
    assert padded.any() and not torch.equal(xa, x)
    assert (ma[padded] == IGNORE_INDEX).all()
    assert torch.equal(ma[~padded], (xa[:, 0] > 0.6).long()[~padded])
    # The images alone are drawn as before: the masks change no draw.
    assert torch.equal(augment(x, AugmentSpec(crop_padding=3, flip=True), seed=5), xa)
    # A target twice the size (super-resolution) gets the same transform, scaled.
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    xa2, ya2 = augment(x, AugmentSpec(crop_padding=3, flip=True), seed=5, yb=big)
    assert torch.equal(ya2[..., ::2, ::2], xa2)


def test_iou_counts_each_class_over_the_pixels():
    # [true][predicted]: class 0 50 right, 10 taken for 1; class 1 30 right; class 2 absent.
    c = torch.tensor([[50, 10, 0], [0, 30, 0], [0, 0, 0]])
    iou = iou_of(c)
    assert iou == [pytest.approx(50 / 60), pytest.approx(30 / 40), None]
    assert mean_iou(iou) == pytest.approx((50 / 60 + 30 / 40) / 2)


def test_regression_targets_from_folders_and_npz_are_scaled_not_normalised(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (4, 4, 4)).astype(np.uint8)
    y = rng.integers(0, 256, (4, 8, 8)).astype(np.uint8)  # ×2: a super-resolution pair
    for sub in ("images", "targets"):
        (tmp_path / "f" / sub).mkdir(parents=True)
    for i in range(4):
        _png(tmp_path / "f" / "images" / f"{i}.png", x[i])
        _png(tmp_path / "f" / "targets" / f"{i}.png", y[i])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    target = Target("regress", (1, 8, 8))
    for entry in ({"path": str(tmp_path / "f")}, {"path": str(tmp_path / "d.npz")}):
        d = load_dense(DatasetSpec.model_validate({**entry, "test_fraction": 0.25}),
                       target=target, input_shape=(1, 4, 4))
        both = torch.cat([d.y_train, d.y_test])
        assert sorted(both.flatten().tolist()) == sorted((y / 255).astype(np.float32)
                                                         .flatten().tolist())
        assert d.x_train.shape == (3, 1, 4, 4) and d.y_train.shape == (3, 1, 8, 8)
    with pytest.raises(DataError, match=r"the targets are \(N, 1, 8, 8\) but the network's "
                                        r"output is \(N, 1, 16, 16\)"):
        load_dense(DatasetSpec.model_validate({"path": str(tmp_path / "d.npz"),
                                               "test_fraction": 0.25}),
                   target=Target("regress", (1, 16, 16)), input_shape=(1, 4, 4))


# ---------------------------------------------------------------- resume, the palette


TINY_SEG_SOURCE = """\
from torch import nn


class TinySeg(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 11, 1))
"""
_ns: dict = {}
exec(TINY_SEG_SOURCE, _ns)  # noqa: S102 - our own constant source
TinySeg = _ns["TinySeg"]


class _CtrlCAt(TinySeg):
    """TinySeg pressing Ctrl-C during its n-th training forward pass."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                import os
                import signal

                os.kill(os.getpid(), signal.SIGINT)
        return super().forward(x)


@needs_digits
def test_a_segmentation_run_cut_mid_epoch_resumes_exactly(tmp_path):
    from shapecheck.core.trainspec import TrainSpec
    from shapecheck.training import train

    s = TrainSpec.model_validate({
        "dataset": {"format": "mnist-seg", "train_size": 96, "test_size": 32},
        "optimizer": {"type": "adam", "lr": 0.01}, "epochs": 2, "batch_size": 16,
        "device": "cpu", "augment": {"crop_padding": 2, "flip": True}})

    def go(module, out, **kw):
        return train(module, s, name="tiny_seg", input_shape=(1, 28, 28), num_classes=11,
                     base_dir=ROOT, out_dir=out, model_source=TINY_SEG_SOURCE,
                     log=lambda line: None, **kw)

    whole = go(TinySeg(), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        go(_CtrlCAt(6 + 2), tmp_path / "cut")  # 6 steps an epoch
    resumed = go(TinySeg(), tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The epoch's pixel accuracy counts the pixels of both parts of the cut epoch.
    assert resumed.history[-1].train_acc == pytest.approx(whole.history[-1].train_acc)
    assert resumed.history[-1].test_miou == whole.history[-1].test_miou


def test_predictions_use_the_fixed_palette():
    from shapecheck.training.dense import IGNORED_COLOUR, PALETTE, _colour

    mask = torch.tensor([[0, 1, 10], [IGNORE_INDEX, 3, 0]])
    rgb = _colour(mask)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == torch.uint8
    assert tuple(rgb[0, 0].tolist()) == (0, 0, 0) == PALETTE[0]
    assert tuple(rgb[0, 1].tolist()) == PALETTE[1] and tuple(rgb[0, 2].tolist()) == PALETTE[10]
    assert tuple(rgb[1, 0].tolist()) == IGNORED_COLOUR
    assert len(set(PALETTE[:11])) == 11  # mnist-seg's classes are told apart
