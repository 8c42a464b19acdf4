"""The training recipes people expect, each against the same thing written by hand in PyTorch
(tests/hand_training.py) or against torch's own implementation: optimizers and their
settings, learning-rate schedules, early stopping, weight EMA, gradient accumulation."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hand_training import MNIST_5K, lecture_cnn, seeded, train_epochs

from shapecheck.data import load_dataset
from shapecheck.training import train
from shapecheck.trainspec import TrainSpec

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not (MNIST_5K / "train-images-idx3-ubyte.gz").exists(),
                                 reason="examples/data/mnist-5k is missing")]

DATASET = {"path": str(MNIST_5K), "train_size": 192, "test_size": 64}


def spec(**kw) -> TrainSpec:
    d = {"dataset": DATASET, "epochs": 2, "batch_size": 32, "seed": 5, "device": "cpu"}
    d.update(kw)
    return TrainSpec.model_validate(d)


def shapecheck_run(s: TrainSpec, out: Path, module=None):
    module = module or lecture_cnn()
    result = train(module, s, name="recipe", input_shape=(1, 28, 28), num_classes=10,
                   base_dir=Path("."), out_dir=out, model_source="", log=lambda line: None)
    return result, torch.load(out / "model.pt", weights_only=True)


def digits():
    data = load_dataset(TrainSpec.model_validate({"dataset": DATASET}).dataset,
                        input_shape=(1, 28, 28), num_classes=10)
    return data.x_train, data.y_train


def equal(model: torch.nn.Module, state: dict) -> bool:
    return all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state.values()))


@pytest.mark.parametrize("optimizer,make", [
    ({"type": "rmsprop", "lr": 0.002, "momentum": 0.5, "alpha": 0.95, "eps": 1e-6},
     lambda p: torch.optim.RMSprop(p, lr=0.002, momentum=0.5, alpha=0.95, eps=1e-6)),
    ({"type": "adam", "lr": 0.003, "betas": [0.8, 0.99], "eps": 1e-7},
     lambda p: torch.optim.Adam(p, lr=0.003, betas=(0.8, 0.99), eps=1e-7)),
    ({"type": "adamw", "lr": 0.003, "betas": [0.85, 0.98], "weight_decay": 0.05},
     lambda p: torch.optim.AdamW(p, lr=0.003, betas=(0.85, 0.98), weight_decay=0.05)),
])
def test_optimizers_and_their_settings_are_torch_s(tmp_path, optimizer, make):
    _, got = shapecheck_run(spec(optimizer=optimizer), tmp_path / "run")
    model = seeded(lecture_cnn(), 5)
    x, y = digits()
    train_epochs(model, make(model.parameters()), x, y, epochs=2, batch=32, seed=5)
    assert equal(model, got)


def test_optimizer_settings_that_do_not_apply_are_refused():
    from pydantic import ValidationError

    for bad, says in [({"type": "sgd", "betas": [0.9, 0.99]}, "betas apply to adam"),
                      ({"type": "sgd", "eps": 1e-8}, "eps applies to adam"),
                      ({"type": "adam", "alpha": 0.9}, "alpha is rmsprop's"),
                      ({"type": "adam", "momentum": 0.9}, "momentum applies to sgd and rmsprop"),
                      ({"type": "adam", "betas": [0.9, 1.0]}, "below 1")]:
        with pytest.raises(ValidationError, match=says):
            spec(optimizer=bad)
