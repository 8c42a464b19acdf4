"""Training throughput: shapecheck's train() against a minimal hand-written PyTorch loop.

Both train the lecture CNN on the same normalised tensors with the same batch
size, optimizer, initial weights and data order. Epochs alternate (one epoch of
train(), resumed from its checkpoint, then one of the hand loop, ...) so that
load from other processes falls on both alike. Samples/s counts the training
phase of an epoch only (forward, backward, optimizer step), as train() reports
it; the hand loop does nothing else.

    python benchmarks/train_throughput.py                       # mnist-5k, 3 epochs, 5 reps
    python benchmarks/train_throughput.py --epochs 10 --reps 3 --threads 1

It also checks that both end with the same weights (they run the same
arithmetic in the same order) and prints the final test accuracy of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F
from torch import nn

from shapecheck.data import load_dataset
from shapecheck.train import _epoch_seed, train
from shapecheck.trainspec import TrainSpec


def lecture_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(320, 10),
    )


class HandLoop:
    """The loop a PyTorch user writes for in-memory data, one epoch per call."""

    def __init__(self, x, y, *, batch_size, lr, momentum, seed):
        torch.manual_seed(seed)
        self.model = lecture_cnn()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed

    def epoch(self, epoch: int) -> float:
        """Train one epoch; its samples/s."""
        model, opt, x, y, bs = self.model, self.opt, self.x, self.y, self.batch_size
        n = x.shape[0]
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(
            _epoch_seed(self.seed, epoch)))
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            xb, yb = x[idx], y[idx]
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
        loss.item()  # what a loop that prints the epoch's last loss would pay
        return n / (time.perf_counter() - t0)

    def accuracy(self, x, y) -> float:
        self.model.eval()
        with torch.no_grad():
            return (self.model(x).argmax(1) == y).float().mean().item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = ROOT / "examples" / "data" / "mnist-5k"
    if not default_data.exists():
        default_data = Path("/work/shared/data/mnist-5k")
    ap.add_argument("--data", default=str(default_data), help="MNIST IDX folder")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = TrainSpec.model_validate({
        "dataset": {"format": "idx", "path": args.data},
        "optimizer": {"type": "sgd", "lr": args.lr, "momentum": args.momentum},
        "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
        "device": "cpu",
    })
    data = load_dataset(spec.dataset, input_shape=(1, 28, 28), num_classes=10)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{data.num_train} training images, {args.epochs} epochs x {args.reps} reps, "
          f"batch {args.batch_size}")

    # Epochs alternate (one of train(), one of the hand loop, ...): train() continues
    # its run with resume=True, so each pair of measurements is close in time.
    ours, hand = [], []
    same_weights = True
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        for rep in range(args.reps):
            loop = HandLoop(data.x_train, data.y_train, batch_size=args.batch_size, lr=args.lr,
                            momentum=args.momentum, seed=args.seed)
            for epoch in range(args.epochs):
                upto = spec.model_copy(update={"epochs": epoch + 1})
                result = train(lecture_cnn(), upto, name="lecture_cnn", input_shape=(1, 28, 28),
                               num_classes=10, base_dir=Path.cwd(), out_dir=out,
                               model_source="", resume=epoch > 0, log=lambda _: None,
                               progress=False)
                ours.append(result.history[-1].samples_per_s)
                hand.append(loop.epoch(epoch))
                print(f"rep {rep + 1} epoch {epoch + 1}: train() {ours[-1]:8,.0f} samples/s   "
                      f"hand loop {hand[-1]:8,.0f} samples/s   ratio {ours[-1] / hand[-1]:.3f}",
                      flush=True)
            ours_state = torch.load(out / "model.pt", weights_only=True)
            same_weights &= all(torch.equal(ours_state[k], v)
                                for k, v in loop.model.state_dict().items())
    hand_acc = loop.accuracy(data.x_test, data.y_test)

    mo, mh = statistics.median(ours), statistics.median(hand)
    paired = statistics.median(o / h for o, h in zip(ours, hand))
    print(f"median: train() {mo:,.0f} samples/s, hand loop {mh:,.0f} samples/s, "
          f"ratio of medians {mo / mh:.3f}, median of paired ratios {paired:.3f}")
    print(f"final test accuracy: train() {result.test_acc:.2%}, hand loop {hand_acc:.2%}; "
          f"identical final weights: {same_weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
