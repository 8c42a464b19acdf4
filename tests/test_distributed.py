"""Distributed data parallel with real gloo processes on the CPU, started by `build --nproc`,
on real digits; schedules, precision and top-5 in one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from shapecheck.cli import main
from shapecheck.core.trainspec import TrainSpec

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "lecture_cnn.yaml"
MNIST_5K = ROOT / "examples" / "data" / "mnist-5k"
needs_mnist = pytest.mark.skipif(not (MNIST_5K / "train-images-idx3-ubyte.gz").exists(),
                                 reason="examples/data/mnist-5k is missing")
needs_two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                     reason="two processes need two cores")

# Adam counts its own steps, so the optimizer state says how many were taken.
COMMON = ["--data", str(MNIST_5K), "--optimizer", "adam", "--lr", "0.002", "--batch-size", "64",
          "--threads", "1", "--seed", "1"]


def build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shapecheck", "build", str(SPEC), "--train",
                           *args], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def adam_steps(run: Path) -> int:
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    return int(ckpt["optimizer"]["state"][0]["step"])


def weights(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One uninterrupted 2-process run, 2 epochs of 4,000 digits: the reference."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    r = build(*COMMON, "--epochs", "2", "--nproc", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out, r


@needs_mnist
@needs_two_cores
def test_ddp_reaches_the_single_process_accuracy_in_as_many_steps(ddp_run, tmp_path, capsys):
    out, r = ddp_run
    assert "2 processes (gloo)" in r.stdout
    # Rank 0 alone prints and writes.
    assert r.stdout.count("epoch 2/2") == 1
    assert sorted(p.name for p in out.iterdir() if p.name != ".shapecheck.lock") == [
        "checkpoint.pt", "curves.png", "metrics.csv", "model.pt", "model.py", "run.json"]
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2

    single = tmp_path / "single"
    assert main(["build", str(SPEC), "--train", *COMMON, "--epochs", "2",
                 "--out", str(single)]) == 0
    capsys.readouterr()
    assert json.loads((single / "run.json").read_text())["world_size"] == 1
    assert adam_steps(out) == adam_steps(single) == 2 * 63  # ceil(4000 / 64) a epoch

    def acc(run: Path) -> float:
        return float((run / "metrics.csv").read_text().splitlines()[-1].split(",")[6])

    assert acc(single) > 0.85
    assert abs(acc(out) - acc(single)) <= 0.01


@needs_mnist
@needs_two_cores
def test_ddp_interrupted_mid_epoch_resumes_to_the_same_weights(ddp_run, tmp_path):
    reference, _ = ddp_run
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "shapecheck", "build", str(SPEC), "--train", *COMMON,
           "--epochs", "2", "--nproc", "2", "--out", str(out)]
    # Its own session, so the signal goes to the launcher and every rank, as Ctrl-C does.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("epoch 1/"):  # the second epoch has begun: stop it in its middle
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at epoch" in rest or "interrupted after epoch" in rest, rest + err
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) != (2, 0) and ckpt["world_size"] == 2
    assert len(ckpt["rng_ranks"]) == 2

    r = build(*COMMON, "--epochs", "2", "--nproc", "2", "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    a, b = weights(reference), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "run.json").read_text())["resumes"][0]["world_size"] == 2


def worker_pids(launcher: int) -> dict[int, int]:
    """The launcher's worker processes by rank: its children in /proc, each with the RANK
    torch's launcher gave it."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
        rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = int(stat.parent.name)
    return ranks


@needs_mnist
@needs_two_cores
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers in /proc")
def test_a_rank_killed_mid_run_stops_it_and_the_checkpoint_resumes(tmp_path):
    out = tmp_path / "run"
    args = [*COMMON, "--epochs", "3", "--nproc", "2", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "shapecheck", "build", str(SPEC), "--train",
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    checkpoint = out / "checkpoint.pt"
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists():  # the first epoch is done; the second has begun
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.02)
        before = checkpoint.read_bytes()
        os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
        stdout, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stdout + err
    assert "epoch 3/3" not in stdout
    # One message, from the launcher: who died, what is kept, how to go on.
    said = ("shapecheck build: error: rank 1 was killed by SIGKILL; the run stopped on every "
            f"rank. The last good checkpoint (after epoch 1) is kept in {out}: continue with "
            "--resume and the same --nproc.")
    assert [line for line in err.splitlines() if "error" in line.lower()] == [said]
    assert "Traceback" not in err
    assert checkpoint.read_bytes() == before
    ckpt = torch.load(checkpoint, weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 0)
    assert not list(out.glob(".*.tmp"))

    r = build(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"resuming {out} after epoch 1" in r.stdout and "epoch 3/3" in r.stdout
    assert adam_steps(out) == 3 * 63


def test_bad_distributed_setups_are_refused_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["build", str(SPEC), "--train", "--data", "synthetic", "--out", str(out)]
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main([*base, "--nproc", "2", "--master-port", str(port)]) == 1
    assert f"port {port} is already in use" in capsys.readouterr().err

    cores = len(os.sched_getaffinity(0))
    assert main([*base, "--nproc", str(cores + 1), "--device", "cpu"]) == 1
    assert f"--nproc {cores + 1} is more than the {cores} CPU core" in capsys.readouterr().err

    if not torch.cuda.is_available():
        assert main([*base, "--nproc", "2", "--backend", "nccl", "--device", "cpu"]) == 1
        assert "nccl backend needs CUDA" in capsys.readouterr().err
        assert main([*base, "--nproc", "2", "--device", "cuda"]) == 1
        assert "no CUDA device" in capsys.readouterr().err
    assert not out.exists()  # nothing was started, nothing written

    # --nproc and its like belong to training.
    assert main(["build", str(SPEC), "--nproc", "2", "-o", str(tmp_path / "m.py")]) == 2
    assert "only apply with --train" in capsys.readouterr().err


def test_nccl_under_a_cpu_launcher_is_a_clear_error(tmp_path):
    # What a worker started by torchrun says when nccl is asked for without CUDA.
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from shapecheck.training import TrainError
    from shapecheck.training.distributed import backend_for

    with pytest.raises(TrainError, match="nccl backend needs CUDA"):
        backend_for(torch.device("cpu"), "nccl")


def test_a_global_batch_too_small_to_share_is_refused(tmp_path):
    from shapecheck.training import TrainError
    from shapecheck.training.data import check_batches

    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.zeros(65, 1, 2, 2)
    with pytest.raises(TrainError, match="last batch of each epoch.*drop_last"):
        check_batches(module, x, 65, 32, False, torch.device("cpu"), world_size=2)
    with pytest.raises(TrainError, match="at least the number of processes"):
        check_batches(module, x, 65, 1, False, torch.device("cpu"), world_size=2)
    check_batches(module, x, 65, 32, True, torch.device("cpu"), world_size=2)


# ---------------------------------------------------------------- one process


def test_schedules_shape_the_rate():
    s = TrainSpec.model_validate({"scheduler": {"type": "cosine", "warmup_epochs": 1,
                                                "min_lr": 0.001}})
    rates = [s.scheduler.lr_at(i, 10, 3, 0.1) for i in range(30)]
    assert rates[0] == pytest.approx(0.01) and rates[9] == pytest.approx(0.1)
    assert rates[-1] == pytest.approx(0.001) and rates == sorted(rates[:10]) + rates[10:]
    step = TrainSpec.model_validate({"scheduler": {"type": "step", "step_size": 2,
                                                   "gamma": 0.5}}).scheduler
    assert [step.lr_at(e * 10, 10, 6, 1.0) for e in range(6)] == [1, 1, .5, .5, .25, .25]
    assert TrainSpec.model_validate({"scheduler": "cosine"}).scheduler.type == "cosine"
    with pytest.raises(ValueError):
        TrainSpec.model_validate({"scheduler": {"type": "wobbly"}})


def test_augment_flips_and_crops_as_drawn_from_the_seed():
    from shapecheck.core.trainspec import AugmentSpec
    from shapecheck.training.data import augment

    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4) + 1
    flipped = augment(x, AugmentSpec(flip=True), seed=5)
    for a, b in zip(x, flipped):
        assert torch.equal(b, a) or torch.equal(b, a.flip(2))
    assert torch.equal(flipped, augment(x, AugmentSpec(flip=True), seed=5))
    cropped = augment(x, AugmentSpec(crop_padding=1), seed=7)
    assert cropped.shape == x.shape
    for a, b in zip(x, cropped):  # a shifted window: what is left of the image, or padding
        assert set(b.unique().tolist()) <= set(a.unique().tolist()) | {0.0}


def test_augment_draws_follow_the_sample_not_the_rank():
    from shapecheck.core.trainspec import AugmentSpec
    from shapecheck.training.data import augment

    spec = AugmentSpec(flip=True, crop_padding=2)
    x = torch.randn(7, 1, 6, 6)
    whole = augment(x, spec, seed=11)
    # Each rank's share (every 3rd sample from its rank) is changed as in one process.
    for rank in range(3):
        share = augment(x[rank::3], spec, seed=11, share=(torch.arange(rank, 7, 3), 7))
        assert torch.equal(share, whole[rank::3])


def test_a_schedule_resumes_exactly_and_reaches_metrics_csv(tmp_path):
    import test_train as tt

    s = tt.spec(epochs=2, scheduler={"type": "cosine", "warmup_epochs": 0.5},
                augment={"crop_padding": 2, "flip": True})
    whole, _ = tt.run(tt.LectureCNN(), s, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        tt.run(tt._CtrlCAt(8 + 3), s, tmp_path / "cut")  # 8 steps an epoch
    resumed, _ = tt.run(tt.LectureCNN(), s, tmp_path / "cut", resume=True)
    assert tt.states_equal(weights(tmp_path / "whole"), weights(tmp_path / "cut"))
    lrs = [m.lr for m in whole.history]
    assert lrs == [m.lr for m in resumed.history]
    assert lrs[0] < 0.05 and lrs[-1] == pytest.approx(0.0, abs=1e-12)  # cosine's end


def test_precision_bf16_trains_and_top5_is_reported(tmp_path):
    import test_train as tt

    result, lines = tt.run(tt.LectureCNN(), tt.spec(epochs=1, precision="bf16"), tmp_path / "r")
    m = result.history[-1]
    assert m.test_top5 is not None and m.test_top5 >= m.test_acc
    assert "top-5" in next(s for s in lines if s.startswith("epoch "))
    header = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["val_top5", "test_top5"]
    fp16, _ = tt.run(tt.LectureCNN(), tt.spec(epochs=1, precision="fp16"), tmp_path / "h")
    ckpt = torch.load(tmp_path / "h" / "checkpoint.pt", weights_only=True)
    assert ckpt["scaler"] is not None and fp16.history[-1].test_loss > 0


def _digit_folder(root: Path, per_class: int = 12) -> Path:
    """An image folder of real digits: per_class PNGs of each class of mnist-5k."""
    from PIL import Image

    from shapecheck.core.trainspec import DatasetSpec
    from shapecheck.training.datasets import load_split

    x, y, _ = load_split(DatasetSpec(path=str(MNIST_5K)), input_shape=(1, 28, 28),
                         num_classes=10, mean=[0.0], std=[1.0], split="test")
    for c in range(10):
        d = root / f"digit{c}"
        d.mkdir(parents=True)
        for k, i in enumerate((y == c).nonzero().flatten()[:per_class].tolist()):
            Image.fromarray((x[i, 0] * 255).round().byte().numpy()).save(d / f"{k}.png")
    return root


@needs_mnist
def test_an_image_folder_streams_with_workers_as_it_trains_in_memory(tmp_path):
    import test_train as tt

    folder = _digit_folder(tmp_path / "digits")
    dataset = {"path": str(folder), "test_fraction": 0.25, "val_fraction": 0.2,
               "mean": 0.13, "std": 0.3}
    s = tt.spec(epochs=2, batch_size=16, dataset=dataset)
    memory, _ = tt.run(tt.LectureCNN(), s, tmp_path / "memory")
    streamed, lines = tt.run(tt.LectureCNN(), s.model_copy(update={"workers": 2}),
                             tmp_path / "streamed")
    assert "(streamed)" in next(x for x in lines if x.startswith("training "))
    # The same batches in the same order, read by two worker processes: the same weights.
    assert tt.states_equal(weights(tmp_path / "memory"), weights(tmp_path / "streamed"))
    assert [m.val_acc for m in memory.history] == [m.val_acc for m in streamed.history]
    assert streamed.history[-1].test_top5 is not None


def test_streaming_is_for_image_folders(tmp_path):
    import test_train as tt

    from shapecheck.training.datasets import DataError

    with pytest.raises(DataError, match="streaming .* reads image folders"):
        tt.run(tt.LectureCNN(), tt.spec(workers=1), tmp_path / "r")


@needs_mnist
@needs_two_cores
def test_ddp_segments_mnist_seg_and_sums_the_confusion_over_ranks(tmp_path):
    """The U-Net of test_dense under two processes: each scores half the test split, and the
    summed confusion matrix gives the whole split's mIoU, exactly as eval (one process)
    counts it from the same weights."""
    from test_dense import metrics, small_unet

    from shapecheck.cli import main

    spec = small_unet(tmp_path)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "shapecheck", "build", str(spec), "--train",
                        "--nproc", "2", "--threads", "1", "--out", str(out)], check=False,
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "2 processes (gloo)" in r.stdout and "test mIoU" in r.stdout
    rows = metrics(out)
    miou = [float(row["test_miou"]) for row in rows]
    assert miou[0] < miou[1] < miou[2], miou
    assert (out / "predictions.png").is_file()
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["eval", str(out)]) == 0
    assert f"mean IoU {miou[-1]:.2%}" in printed.getvalue()
    assert f"pixel accuracy {float(rows[-1]['test_pixel_acc']):.2%}" in printed.getvalue()


# ---------------------------------------------------------------- one process = N processes

BN_SPEC = f"""\
name: bn_cnn
input: {{shape: [1, 28, 28]}}
layers:
  - {{type: conv2d, out_channels: 8, kernel_size: 5, bias: false}}
  - batchnorm2d
  - relu
  - {{type: maxpool2d, kernel_size: 2}}
  - flatten
  - {{type: linear, out_features: 10}}
train:
  dataset: {{path: {MNIST_5K}, train_size: 128, test_size: 64}}
  optimizer: {{type: sgd, lr: 0.02, momentum: 0.5}}
  epochs: 1
  batch_size: 64
  seed: 2
  device: cpu
  augment: {{crop_padding: 3, flip: true}}
"""


def largest_gap(a: Path, b: Path) -> float:
    x, y = weights(a), weights(b)
    assert x.keys() == y.keys()
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x
               if x[k].is_floating_point())


@needs_mnist
@needs_two_cores
def test_two_processes_take_the_one_process_steps_with_batchnorm_and_augmentation(tmp_path,
                                                                                   capsys):
    spec = tmp_path / "bn.yaml"
    spec.write_text(BN_SPEC)

    def two(out: Path, *extra: str) -> Path:
        r = subprocess.run([sys.executable, "-m", "shapecheck", "build", str(spec), "--train",
                            "--threads", "1", "--nproc", "2", "--out", str(out), "-o",
                            str(tmp_path / "m.py"), "--force", *extra], check=False,
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr
        return out, r.stdout

    one = tmp_path / "one"
    assert main(["build", str(spec), "--train", "--threads", "1", "--out", str(one), "-q",
                 "-o", str(tmp_path / "m.py"), "--force"]) == 0
    capsys.readouterr()
    synced, said = two(tmp_path / "synced")
    assert "1 BatchNorm layer normalised over the global batch" in said
    plain, said = two(tmp_path / "plain", "--no-sync-bn")
    assert "BatchNorm layer" not in said
    # Two steps of SGD with momentum: the same steps, up to sums in another order ...
    # (measured: 7.7e-6, the running variance's last bits) ...
    assert largest_gap(one, synced) < 3e-5
    # ... where each process's own statistics (rank 0's kept) take other steps (1.8e-3).
    assert largest_gap(one, plain) > 3e-4


@needs_mnist
@needs_two_cores
def test_ranks_share_the_test_batches_and_give_the_one_process_scores_bit_for_bit(tmp_path):
    from shapecheck.training import load_run_module
    from shapecheck.training.datasets import load_dataset
    from shapecheck.training.distributed import World
    from shapecheck.training.scoring import score_split

    # 300 test digits: two scoring batches of 256 and 44, one per rank.
    spec = tmp_path / "s.yaml"
    spec.write_text(BN_SPEC.replace("test_size: 64", "test_size: 300")
                    .replace("  augment: {crop_padding: 3, flip: true}\n", ""))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "shapecheck", "build", str(spec), "--train",
                        "--threads", "1", "--nproc", "2", "--out", str(out), "-o",
                        str(tmp_path / "m.py")], check=False, capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    said = torch.load(out / "checkpoint.pt", weights_only=True)["metrics"][-1]

    module = load_run_module(out)
    data = load_dataset(TrainSpec.model_validate(
        {"dataset": {"path": str(MNIST_5K), "train_size": 128, "test_size": 300}}).dataset,
        input_shape=(1, 28, 28), num_classes=10)
    loss, acc, top5 = score_split(module, data.x_test, data.y_test, "cross_entropy", 256, 10,
                                  World())
    assert (said["test_loss"], said["test_acc"], said["test_top5"]) == (loss, acc, top5)


def test_each_rank_scores_its_share_of_the_batches():
    from shapecheck.training.distributed import World
    from shapecheck.training.scoring import share

    shares = [share(1000, 256, World(size=3, rank=r)) for r in range(3)]
    assert shares == [[0, 3], [1], [2]]  # 4 batches, none twice, none left out
    assert share(1000, 256, World()) == [0, 1, 2, 3]


@needs_mnist
@needs_two_cores
def test_two_processes_accumulating_take_the_one_process_large_batch_steps(tmp_path, capsys):
    # No BatchNorm: sharing and accumulating change only the order of the sums.
    plain = BN_SPEC.replace("  - batchnorm2d\n", "").replace("bias: false", "bias: true")
    big, parts = tmp_path / "big.yaml", tmp_path / "parts.yaml"
    big.write_text(plain)
    parts.write_text(plain.replace("batch_size: 64", "batch_size: 16\n  accumulate: 4"))
    one = tmp_path / "one"
    assert main(["build", str(big), "--train", "--threads", "1", "--out", str(one), "-q",
                 "-o", str(tmp_path / "m.py"), "--epochs", "2"]) == 0
    capsys.readouterr()
    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "shapecheck", "build", str(parts), "--train",
                        "--threads", "1", "--nproc", "2", "--out", str(two), "-o",
                        str(tmp_path / "m2.py"), "--epochs", "2"],
                       check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "batch 16 × 4 accumulated" in r.stdout
    # 2 epochs of 2 steps, each over the same 64 digits, flipped and cropped alike.
    assert largest_gap(one, two) < 1e-5
