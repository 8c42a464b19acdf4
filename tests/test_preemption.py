"""Preemption: SIGTERM and SIGUSR1 sent to a real training process mid-epoch save an exact
checkpoint, and --resume ends with the weights of a run that was never stopped; the same
under DDP; and checkpoint_every's mid-epoch checkpoints resume exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
MNIST_5K = ROOT / "examples" / "data" / "mnist-5k"
pytestmark = pytest.mark.skipif(not (MNIST_5K / "train-images-idx3-ubyte.gz").exists(),
                                reason="examples/data/mnist-5k is missing")
needs_two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                     reason="two processes need two cores")

# The lecture CNN on 480 digits: 30 steps of 16 an epoch, a checkpoint every 4 steps.
SPEC = f"""\
name: tiny_cnn
input: {{shape: [1, 28, 28]}}
layers:
  - {{type: conv2d, out_channels: 6, kernel_size: 5}}
  - {{type: maxpool2d, kernel_size: 2}}
  - relu
  - flatten
  - {{type: linear, out_features: 10}}
train:
  dataset: {{path: {MNIST_5K}, train_size: 480, test_size: 96}}
  optimizer: {{type: adam, lr: 0.002}}
  epochs: 2
  batch_size: 16
  seed: 1
  device: cpu
  checkpoint_every: 4
"""


def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return path


def cmd(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shapecheck", "build", str(spec), "--train", "--threads", "1",
            "--out", str(out), "-o", str(out.parent / f"{out.name}_model.py"), *extra]


def finish(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


def weights(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def stop_when_checkpointed(argv: list[str], out: Path, sig: int, to_group: bool = False):
    """Start the command, send ``sig`` once the first mid-epoch checkpoint is written (so
    the run is inside its first epoch), and wait for it to exit."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=to_group)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.005)
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        stdout, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_mid_epoch_saves_an_exact_checkpoint(tmp_path, sig):
    spec = spec_file(tmp_path)
    whole = tmp_path / "whole"
    r = finish(cmd(spec, whole))
    assert r.returncode == 0, r.stderr

    out = tmp_path / "cut"
    code, stdout, err = stop_when_checkpointed(cmd(spec, out), out, sig)
    name = signal.Signals(sig).name
    assert code == 128 + sig, stdout + err
    assert "Traceback" not in err
    assert f"stopped by {name} at epoch 1, step " in stdout, stdout
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and 4 <= ckpt["step"] < 30  # inside the first epoch

    r = finish(cmd(spec, out, "--resume"))
    assert r.returncode == 0, r.stderr
    assert f"resuming {out} at epoch 1, step {ckpt['step']}/30" in r.stdout
    assert same(weights(whole), weights(out))
    assert (whole / "metrics.csv").read_text().splitlines()[-1].split(",")[:3] == \
        (out / "metrics.csv").read_text().splitlines()[-1].split(",")[:3]


class _CrashAt(torch.nn.Sequential):
    """A small CNN whose n-th training forward pass fails, as a process that dies does."""

    def __init__(self, at: int | None = None):
        super().__init__(torch.nn.Conv2d(1, 6, 5), torch.nn.MaxPool2d(2), torch.nn.ReLU(),
                         torch.nn.Flatten(), torch.nn.Linear(6 * 12 * 12, 10))
        self.at, self.calls = at, 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                raise RuntimeError("the machine went away")
        return super().forward(x)


def test_checkpoint_every_leaves_an_exact_mid_epoch_checkpoint(tmp_path, one_torch_thread):
    from shapecheck.core.trainspec import TrainSpec
    from shapecheck.training import train

    s = TrainSpec.model_validate({
        "dataset": {"path": str(MNIST_5K), "train_size": 480, "test_size": 96},
        "optimizer": {"type": "adam", "lr": 0.002}, "epochs": 2, "batch_size": 16, "seed": 1,
        "device": "cpu", "checkpoint_every": 4})

    def run(module, out, **kw):
        return train(module, s, name="tiny", input_shape=(1, 28, 28), num_classes=10,
                     base_dir=ROOT, out_dir=out, model_source="", log=lambda line: None, **kw)

    run(_CrashAt(), tmp_path / "whole")
    with pytest.raises(RuntimeError, match="went away"):
        run(_CrashAt(30 + 11), tmp_path / "cut")  # step 11 of the second epoch
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    # Steps are counted over the run: 32, 36 and 40 of them are done at steps 2, 6 and 10.
    assert (ckpt["epoch"], ckpt["step"]) == (1, 10)
    assert ckpt["partial"]["seen"] == 160
    run(_CrashAt(), tmp_path / "cut", resume=True)
    assert same(weights(tmp_path / "whole"), weights(tmp_path / "cut"))


@needs_two_cores
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_to_the_launcher_stops_every_rank_at_an_exact_checkpoint(tmp_path, sig):
    spec = spec_file(tmp_path)
    whole = tmp_path / "whole"
    r = finish(cmd(spec, whole, "--nproc", "2"))
    assert r.returncode == 0, r.stderr

    out = tmp_path / "cut"
    # To the launcher alone, as a scheduler signals the job's main process.
    code, stdout, err = stop_when_checkpointed(cmd(spec, out, "--nproc", "2"), out, sig)
    assert code == 128 + sig, stdout + err
    assert "Traceback" not in err
    assert f"stopped by {signal.Signals(sig).name} at epoch " in stdout, stdout + err
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] > 0 and ckpt["world_size"] == 2

    r = finish(cmd(spec, out, "--nproc", "2", "--resume"))
    assert r.returncode == 0, r.stderr
    assert same(weights(whole), weights(out))
