"""Dataset loading and checking (shapecheck.training.datasets) and the train: section (shapecheck.core.trainspec)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

torch = pytest.importorskip("torch")

from shapecheck.core.trainspec import DatasetSpec, TrainSpec, apply_overrides
from shapecheck.training.datasets import DataError, load_dataset, load_split

ROOT = Path(__file__).resolve().parent.parent
MNIST_5K = next(
    (p for p in (ROOT / "examples" / "data" / "mnist-5k", Path("/work/shared/data/mnist-5k"))
     if (p / "train-images-idx3-ubyte.gz").exists()),
    None,
)
NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | arr.ndim
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + \
        arr.tobytes()


def write_idx(folder: Path, n_train: int = 40, n_test: int = 20, *, size: int = 28,
              gz: bool = True, classes: int = 10, overrides: dict | None = None) -> Path:
    """A small MNIST-like IDX folder; overrides maps a file key to raw bytes to write instead."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, size, size)),
        "train_y": np.arange(n_train) % classes,
        "test_x": rng.integers(0, 256, (n_test, size, size)),
        "test_y": np.arange(n_test) % classes,
    }
    for key, arr in arrays.items():
        data = (overrides or {}).get(key, idx_bytes(arr))
        if data is None:
            continue
        name = NAMES[key] + (".gz" if gz else "")
        (folder / name).write_bytes(gzip.compress(data) if gz else data)
    return folder


def load(path: Path, fmt: str | None = "idx", shape=(1, 28, 28), classes: int = 10, **kw):
    spec = DatasetSpec(format=fmt, path=str(path), **kw)
    return load_dataset(spec, input_shape=shape, num_classes=classes)


# ---------------------------------------------------------------- formats that work


@pytest.mark.skipif(MNIST_5K is None, reason="mnist-5k sample not found")
def test_mnist_5k_loads_normalised():
    ds = load(MNIST_5K)
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.mean[0] == pytest.approx(0.1307, abs=0.005)
    assert ds.std[0] == pytest.approx(0.3081, abs=0.005)
    assert float(ds.x_train.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(ds.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    assert torch.bincount(ds.y_train).tolist() == [400] * 10
    assert ds.notes == []


def test_idx_plain_and_gz_give_the_same(tmp_path):
    a = load(write_idx(tmp_path / "gz", gz=True))
    b = load(write_idx(tmp_path / "plain", gz=False))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.num_train == 40 and a.num_test == 20


def test_idx_in_torchvision_layout_and_detected_format(tmp_path):
    write_idx(tmp_path / "root" / "MNIST" / "raw")
    ds = load(tmp_path / "root", fmt=None)
    assert ds.num_train == 40


def test_spec_mean_std_and_sizes(tmp_path):
    ds = load(write_idx(tmp_path / "d"), mean=0.5, std=0.25, train_size=10, test_size=5)
    assert ds.mean == [0.5] and ds.std == [0.25]
    assert ds.num_train == 10 and ds.num_test == 5
    assert float(ds.x_train.max()) <= (1 - 0.5) / 0.25 + 1e-6


def test_fewer_classes_than_outputs_is_a_note(tmp_path):
    ds = load(write_idx(tmp_path / "d", classes=3))
    assert ds.notes and "3 of the 10 classes" in ds.notes[0]


def test_npz_with_train_and_test_keys_channels_last(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8),
             y_train=np.arange(30) % 4,
             x_test=rng.random((12, 8, 8, 3)).astype(np.float32), y_test=np.arange(12) % 4)
    ds = load(p, fmt=None, shape=(3, 8, 8), classes=4)
    assert ds.x_train.shape == (30, 3, 8, 8) and ds.x_test.shape == (12, 3, 8, 8)
    assert len(ds.mean) == 3


def test_npz_x_y_with_test_fraction_is_stratified_and_fixed(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.random.default_rng(2).random((100, 1, 6, 6)), y=np.arange(100) % 5)
    ds = load(p, fmt="npz", shape=(1, 6, 6), classes=5, test_fraction=0.2)
    assert ds.num_train == 80 and ds.num_test == 20
    assert torch.bincount(ds.y_test).tolist() == [4] * 5
    again = load(p, fmt="npz", shape=(1, 6, 6), classes=5, test_fraction=0.2)
    assert torch.equal(ds.x_test, again.x_test)


def write_folder(root: Path, classes=("cat", "dog"), n: int = 3, size=(10, 8), mode="RGB"):
    from PIL import Image

    for i, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.new(mode, size, color=(i * 80 + j,) * len(mode)).save(d / f"{j}.png")
    return root


def test_image_folder_train_test(tmp_path):
    write_folder(tmp_path / "f" / "train")
    write_folder(tmp_path / "f" / "test", n=2)
    ds = load(tmp_path / "f", fmt=None, shape=(3, 8, 10), classes=2)
    assert ds.classes == ["cat", "dog"]
    assert ds.x_train.shape == (6, 3, 8, 10) and ds.num_test == 4
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_grey_with_fraction_and_hidden_files_ignored(tmp_path):
    root = write_folder(tmp_path / "f", n=5, mode="L")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1junk")
    ds = load(root, fmt="folder", shape=(1, 8, 10), classes=2, test_fraction=0.2)
    assert ds.num_train == 8 and ds.num_test == 2


def test_eval_split_maps_folder_classes_by_name(tmp_path):
    root = write_folder(tmp_path / "f", classes=("dog",), n=2)
    spec = DatasetSpec(path=str(root))
    x, y, _ = load_split(spec, input_shape=(3, 8, 10), num_classes=3, mean=[0, 0, 0],
                      std=[1, 1, 1], classes=["bird", "cat", "dog"])
    assert y.tolist() == [2, 2] and x.shape == (2, 3, 8, 10)


def test_synthetic_has_the_spec_shape():
    ds = load_dataset(DatasetSpec(format="synthetic", train_size=50, test_size=20),
                      input_shape=(3, 5, 7), num_classes=4)
    assert ds.x_train.shape == (50, 3, 5, 7) and ds.num_test == 20
    assert int(ds.y_train.max()) == 3


# ---------------------------------------------------------------- errors, each before training


def expect_error(match: str, path: Path, **kw):
    with pytest.raises(DataError, match=match):
        load(path, **kw)


def test_truncated_gzip(tmp_path):
    d = write_idx(tmp_path / "d")
    p = d / (NAMES["train_x"] + ".gz")
    p.write_bytes(p.read_bytes()[:500])
    expect_error(r"truncated or corrupt gzip", d)


def test_corrupt_gzip(tmp_path):
    d = write_idx(tmp_path / "d")
    p = d / (NAMES["train_y"] + ".gz")
    data = bytearray(p.read_bytes())
    data[12:30] = b"\xff" * 18
    p.write_bytes(bytes(data))
    expect_error(r"truncated or corrupt gzip", d)


def test_wrong_idx_magic(tmp_path):
    images = np.zeros((40, 28, 28), dtype=np.uint8)
    d = write_idx(tmp_path / "d", overrides={"train_x": idx_bytes(images, magic=0x0801)})
    expect_error(r"not an IDX images file: magic number 0x00000801, expected 0x00000803", d)


def test_idx_labels_swapped_for_images(tmp_path):
    d = write_idx(tmp_path / "d", overrides={"train_y": idx_bytes(np.zeros((40, 28, 28)))})
    expect_error(r"not an IDX labels file", d)


def test_truncated_idx_payload(tmp_path):
    raw = idx_bytes(np.zeros((40, 28, 28)))[:-100]
    d = write_idx(tmp_path / "d", gz=False, overrides={"train_x": raw})
    expect_error(r"truncated: the header says 40×28×28", d)


def test_label_count_differs_from_image_count(tmp_path):
    d = write_idx(tmp_path / "d", overrides={"test_y": idx_bytes(np.zeros(19))})
    expect_error(r"has 20 images but .* has 19 labels", d)


def test_images_of_the_wrong_size(tmp_path):
    expect_error(r"images are 1×32×32 .* input.shape is \[1, 28, 28\]",
                 write_idx(tmp_path / "d", size=32))


def test_wrong_channel_count(tmp_path):
    expect_error(r"images are 1×28×28 .* input.shape is \[3, 28, 28\]",
                 write_idx(tmp_path / "d"), shape=(3, 28, 28))


def test_labels_out_of_range(tmp_path):
    expect_error(r"label 9 is out of range: the last layer has out_features 5",
                 write_idx(tmp_path / "d"), classes=5)


def test_empty_dataset(tmp_path):
    d = write_idx(tmp_path / "d", overrides={"train_x": idx_bytes(np.zeros((0, 28, 28))),
                                            "train_y": idx_bytes(np.zeros(0))})
    expect_error(r"the dataset is empty", d)


def test_missing_idx_split(tmp_path):
    d = write_idx(tmp_path / "d", overrides={"test_x": None, "test_y": None})
    expect_error(r"missing split: t10k-images-idx3-ubyte", d)


def test_missing_idx_split_can_be_held_out(tmp_path):
    d = write_idx(tmp_path / "d", overrides={"test_x": None, "test_y": None})
    assert load(d, test_fraction=0.25).num_test == 10


def test_no_dataset_at_all(tmp_path):
    with pytest.raises(DataError, match="dataset not found"):
        load(tmp_path / "nope", fmt=None)
    (tmp_path / "empty").mkdir()
    expect_error(r"no MNIST IDX files found", tmp_path / "empty")


def test_npz_errors(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((10, 28, 28)), y=np.zeros(10))
    expect_error(r"missing split: .* give test_fraction", p, fmt="npz")
    np.savez(p, x_train=np.zeros((10, 28, 28)), y_train=np.zeros(10))
    expect_error(r"missing split: no test data", p, fmt="npz")
    np.savez(p, x_train=np.zeros((10, 28, 28)), y_train=np.zeros(9),
             x_test=np.zeros((2, 28, 28)), y_test=np.zeros(2))
    expect_error(r"10 images but 9 labels", p, fmt="npz")
    np.savez(p, images=np.zeros((10, 28, 28)))
    expect_error(r"expected arrays x_train, y_train, x_test, y_test", p, fmt="npz")
    np.savez(p, x_train=np.zeros((4, 28, 28)), y_train=np.array([0, 1, 0.5, 1]),
             x_test=np.zeros((2, 28, 28)), y_test=np.zeros(2))
    expect_error(r"labels must be integers", p, fmt="npz")
    p.write_bytes(b"PK\x03\x04 this is not a zip")
    expect_error(r"cannot read as .npz", p, fmt="npz")


def test_folder_non_image_file(tmp_path):
    root = write_folder(tmp_path / "f", n=2)
    (root / "dog" / "notes.txt").write_text("not a picture")
    expect_error(r"notes.txt: not a readable image", root, fmt="folder", shape=(3, 8, 10),
                 classes=2, test_fraction=0.5)


def test_folder_image_of_the_wrong_size(tmp_path):
    from PIL import Image

    root = write_folder(tmp_path / "f", n=2)
    Image.new("RGB", (12, 8)).save(root / "cat" / "big.png")
    expect_error(r"big.png: image is 12×8 .* needs 10×8", root, fmt="folder",
                 shape=(3, 8, 10), classes=2, test_fraction=0.5)


def test_folder_class_count_and_empty(tmp_path):
    root = write_folder(tmp_path / "f", n=2)
    expect_error(r"2 class folders \(cat, dog\) but the last layer has out_features 10",
                 root, fmt="folder", shape=(3, 8, 10), test_fraction=0.5)
    (tmp_path / "e" / "a").mkdir(parents=True)
    expect_error(r"class folder has no images", tmp_path / "e", fmt="folder",
                 shape=(3, 8, 10), classes=1, test_fraction=0.5)
    (tmp_path / "none").mkdir()
    expect_error(r"the dataset is empty: no class sub-folders", tmp_path / "none",
                 fmt="folder", test_fraction=0.5)


def test_folder_missing_test_split_and_unknown_test_class(tmp_path):
    write_folder(tmp_path / "f" / "train", n=2)
    expect_error(r"missing split: no test data", tmp_path / "f", fmt="folder",
                 shape=(3, 8, 10), classes=2)
    write_folder(tmp_path / "f" / "test", classes=("cow",), n=1)
    expect_error(r"cow not among the training classes", tmp_path / "f", fmt="folder",
                 shape=(3, 8, 10), classes=2)


# ---------------------------------------------------------------- the train: section


def test_train_spec_defaults_and_shorthands():
    t = TrainSpec.model_validate({"dataset": "data/mnist", "optimizer": {"type": "Adam"}})
    assert t.dataset.path == "data/mnist" and t.dataset.format is None
    assert t.optimizer.type == "adam" and t.optimizer.effective_lr == 0.001
    assert (t.epochs, t.batch_size, t.seed, t.device, t.loss) == (10, 64, 0, "auto", None)
    assert TrainSpec.model_validate({"dataset": "synthetic"}).dataset.format == "synthetic"
    assert TrainSpec().optimizer.effective_lr == 0.01
    assert TrainSpec.model_validate(
        {"optimizer": {"type": "adamw"}}).optimizer.effective_weight_decay == 0.01


@pytest.mark.parametrize("bad", [
    {"epochs": 0},
    {"batch_size": -1},
    {"optimizer": {"lr": 0}},
    {"optimizer": {"type": "lbfgs"}},  # rmsprop is one now
    {"optimizer": {"type": "adam", "momentum": 0.9}},
    {"optimizer": {"momentum": 1.5}},
    {"loss": "huber"},
    {"task": "detect"},
    {"task": "regress", "loss": "cross_entropy"},  # regression takes mse or l1
    {"task": "segment", "loss": "mse"},
    {"loss": "mse", "class_weights": [1.0, 2.0]},
    {"device": "tpu"},
    {"epoch": 3},
    {"dataset": {"format": "idx"}},
    {"dataset": {"format": "synthetic", "path": "x"}},
    {"dataset": {"path": "x", "mean": 0.1}},
    {"dataset": {"path": "x", "mean": 0.1, "std": 0}},
    {"dataset": {"path": "x", "test_fraction": 1.0}},
    {"dataset": {"path": "x", "shuffle": True}},
])
def test_train_spec_rejects(bad):
    with pytest.raises(ValidationError):
        TrainSpec.model_validate(bad)


def test_apply_overrides():
    base = TrainSpec.model_validate({
        "dataset": {"format": "idx", "path": "a"},
        "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9}, "epochs": 3})
    t = apply_overrides(base, data="b.npz", optimizer="adam", epochs=5, seed=7)
    assert t.dataset.path == "b.npz" and t.dataset.format is None
    assert t.optimizer.type == "adam" and t.optimizer.lr == 0.1 and t.optimizer.momentum is None
    assert (t.epochs, t.seed) == (5, 7)
    assert apply_overrides(None, data="synthetic").dataset.format == "synthetic"
    assert apply_overrides(base, lr=0.5).optimizer.momentum == 0.9
    with pytest.raises(ValidationError):
        apply_overrides(base, batch_size=0)


# ---------------------------------------------------------------- subsets, splits, memory


def test_subsets_of_a_class_sorted_folder_are_random_and_stratified(tmp_path):
    # An image folder is read class by class: the first 60 images are all one class.
    classes = ("a", "b", "c")
    write_folder(tmp_path / "f" / "train", classes=classes, n=40, size=(4, 4))
    write_folder(tmp_path / "f" / "test", classes=classes, n=20, size=(4, 4))
    ds = load(tmp_path / "f", fmt=None, shape=(3, 4, 4), classes=3, train_size=60,
              test_size=30)
    assert torch.bincount(ds.y_train).tolist() == [20, 20, 20]
    assert torch.bincount(ds.y_test).tolist() == [10, 10, 10]
    again = load(tmp_path / "f", fmt=None, shape=(3, 4, 4), classes=3, train_size=60,
                 test_size=30)
    assert torch.equal(ds.x_train, again.x_train)  # the same subset on every run
    assert ds.notes == []


def test_subset_of_a_class_sorted_npz_and_missing_classes_are_named(tmp_path):
    p = tmp_path / "sorted.npz"
    y = np.repeat(np.arange(10), 50)  # 0 0 0 ... 9 9 9
    np.savez(p, x_train=np.zeros((500, 4, 4), np.uint8), y_train=y,
             x_test=np.zeros((100, 4, 4), np.uint8), y_test=np.repeat(np.arange(10), 10))
    ds = load(p, fmt=None, shape=(1, 4, 4), train_size=100)
    assert torch.bincount(ds.y_train).tolist() == [10] * 10
    few = load(p, fmt=None, shape=(1, 4, 4), train_size=4)
    assert few.num_train == 4
    missing = sorted(set(range(10)) - set(few.y_train.tolist()))
    assert len(few.notes) == 1 and "train_size 4 keeps 4 of the 10 classes" in few.notes[0]
    assert few.notes[0].endswith("missing: " + ", ".join(map(str, missing)))


def test_test_fraction_is_refused_when_the_data_has_its_own_test_split(tmp_path):
    expect_error(r"has its own test split, so test_fraction 0.2 would be ignored.*val_fraction",
                 write_idx(tmp_path / "d"), test_fraction=0.2)


def test_val_fraction_holds_out_part_of_the_training_split(tmp_path):
    d = write_idx(tmp_path / "d", n_train=100, n_test=20)
    ds = load(d, train_size=80, val_fraction=0.25)
    assert (ds.num_train, ds.num_val, ds.num_test) == (60, 20, 20)
    assert torch.bincount(ds.y_val).tolist() == [2] * 10
    whole = load(d, train_size=80)
    # Disjoint, and together the 80 images of the subset.
    rows = {tuple(r.tolist()) for r in whole.x_train.flatten(1)}
    train_rows = {tuple(r.tolist()) for r in ds.x_train.flatten(1)}
    val_rows = {tuple(r.tolist()) for r in ds.x_val.flatten(1)}
    assert not train_rows & val_rows
    # (whole is normalised with its own statistics; compare the raw labels' counts instead)
    assert len(rows) == 80 and ds.num_train + ds.num_val == 80
    x, _, where = load_split(DatasetSpec(path=str(d), train_size=80, val_fraction=0.25),
                             input_shape=(1, 28, 28), num_classes=10, mean=ds.mean, std=ds.std,
                             split="val")
    assert torch.equal(x, ds.x_val) and "validation part" in where


def test_statistics_in_chunks_match_the_whole_tensor(tmp_path):
    rng = np.random.default_rng(3)
    p = tmp_path / "rgb.npz"
    x = rng.integers(0, 256, (700, 3, 24, 24), dtype=np.uint8)
    x[:, 1] //= 4  # channels with different statistics
    np.savez(p, x_train=x, y_train=np.arange(700) % 10, x_test=x[:10], y_test=np.arange(10))
    ds = load(p, fmt=None, shape=(3, 24, 24))
    full = torch.from_numpy(x).double() / 255
    std, mean = torch.std_mean(full.transpose(0, 1).reshape(3, -1), dim=1)
    assert ds.mean == pytest.approx(mean.tolist(), rel=1e-6)  # float32 images
    assert ds.std == pytest.approx(std.tolist(), rel=1e-6)


PEAK_SCRIPT = """\
import resource, sys
import torch
from shapecheck.training.datasets import load_dataset
from shapecheck.core.trainspec import DatasetSpec
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ds = load_dataset(DatasetSpec(path=sys.argv[1]), input_shape=(3, 64, 64), num_classes=10)
rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(rise / ((ds.x_train.numel() + ds.x_test.numel()) * 4))
"""


def test_loading_peaks_well_below_twice_the_float_data(tmp_path):
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    p = tmp_path / "rgb.npz"
    np.savez(p, x_train=rng.integers(0, 256, (1600, 64, 64, 3), dtype=np.uint8),
             y_train=np.arange(1600) % 10,
             x_test=rng.integers(0, 256, (400, 64, 64, 3), dtype=np.uint8),
             y_test=np.arange(400) % 10)
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(p)], capture_output=True,
                         text=True, check=True)
    # The float32 tensors, the uint8 arrays they came from (1/4) and small chunks.
    # Copying the whole tensor for the statistics made it 2.1.
    assert float(out.stdout) < 1.6


def test_data_and_the_callers_needs_are_counted_against_the_memory(tmp_path):
    from shapecheck.core.memory import available_memory
    from shapecheck.training.datasets import MemoryLimitError

    available = available_memory()
    if available is None:
        pytest.skip("available memory cannot be told here")
    d = write_idx(tmp_path / "d")
    with pytest.raises(MemoryLimitError, match=r"the 60 images as float32 \(1×28×28 each: "
                       r"183\.8 KiB\) and the weights \(.*\) need .* but only .* available"):
        load_dataset(DatasetSpec(path=str(d)), input_shape=(1, 28, 28), num_classes=10,
                     extra_bytes=2 * available, extra_what="the weights")


ALLOC_SCRIPT = """\
import resource, sys
import torch
from shapecheck.training.datasets import DataError, load_dataset
from shapecheck.core.trainspec import DatasetSpec
# Address space for what is loaded so far plus 80 MiB: the 126 MiB of float32 cannot fit.
with open("/proc/self/status") as f:
    vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (80 << 20), resource.RLIM_INFINITY))
try:
    load_dataset(DatasetSpec(path=sys.argv[1]), input_shape=(1, 64, 64), num_classes=10)
except DataError as e:
    print(type(e).__name__, e)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_an_allocation_that_fails_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "big.npz"
    np.savez(p, x_train=np.zeros((8064, 64, 64), np.uint8), y_train=np.arange(8064) % 10,
             x_test=np.zeros((10, 64, 64), np.uint8), y_test=np.arange(10))
    out = subprocess.run([sys.executable, "-c", ALLOC_SCRIPT, str(p)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MemoryLimitError ") and "cannot allocate 126.0 MiB" in \
        out.stdout and "train_size" in out.stdout


def test_resize(tmp_path):
    write_folder(tmp_path / "f" / "train", size=(12, 10))
    write_folder(tmp_path / "f" / "test", size=(12, 10))
    expect_error(r"image is 12×10 .* needs 10×8 \(dataset resize: true resizes them\)",
                 tmp_path / "f", fmt=None, shape=(3, 8, 10), classes=2)
    ds = load(tmp_path / "f", fmt=None, shape=(3, 8, 10), classes=2, resize=True)
    assert ds.x_train.shape == (6, 3, 8, 10)
    p = tmp_path / "big.npz"
    np.savez(p, x_train=np.full((4, 56, 56), 255, np.uint8), y_train=np.arange(4),
             x_test=np.zeros((2, 56, 56), np.uint8), y_test=np.arange(2))
    expect_error(r"images are 1×56×56 .* \(dataset resize: true resizes them\)", p, fmt=None)
    ds = load(p, fmt=None, resize=True, mean=0.0, std=1.0)
    assert ds.x_train.shape == (4, 1, 28, 28) and float(ds.x_train.min()) == pytest.approx(1.0)
