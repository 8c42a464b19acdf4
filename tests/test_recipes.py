"""The training recipes people expect, each against the same thing written by hand in PyTorch
(tests/hand_training.py) or against torch's own implementation: optimizers and their
settings, learning-rate schedules, early stopping, weight EMA, gradient accumulation, and the
augmentations (resized crops, erasing, TrivialAugment against Pillow, mixup and cutmix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hand_training import MNIST_5K, lecture_cnn, seeded, train_epochs

from shapecheck.core.trainspec import TrainSpec
from shapecheck.training import train
from shapecheck.training.datasets import load_dataset

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


# ---------------------------------------------------------------- schedules


def torch_rates(make, epochs: int, steps: int, per_step: bool) -> list[float]:
    """The rate of every step as torch's scheduler gives it, stepped as its docs say."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make(opt)
    rates = []
    for _ in range(epochs):
        for _ in range(steps):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_step:
                sched.step()
        if not per_step:
            sched.step()
    return rates


@pytest.mark.parametrize("ours,make,per_step", [
    ({"type": "multistep", "milestones": [2, 5], "gamma": 0.5},
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5], gamma=0.5), False),
    ({"type": "exponential", "gamma": 0.8},
     lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8), False),
    ({"type": "step", "step_size": 3, "gamma": 0.3},
     lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.3), False),
    ({"type": "onecycle"},
     lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=7 * 9,
                                                   cycle_momentum=False), True),
    ({"type": "onecycle", "pct_start": 0.2, "div_factor": 10, "final_div_factor": 100},
     lambda o: torch.optim.lr_scheduler.OneCycleLR(
         o, max_lr=0.1, total_steps=7 * 9, pct_start=0.2, div_factor=10,
         final_div_factor=100, cycle_momentum=False), True),
])
def test_schedules_are_torch_s(ours, make, per_step):
    from shapecheck.core.trainspec import SchedulerSpec

    s = SchedulerSpec.model_validate(ours)
    mine = [s.lr_at(i, 9, 7, 0.1) for i in range(7 * 9)]
    assert mine == pytest.approx(torch_rates(make, 7, 9, per_step), rel=1e-12, abs=1e-15)


def test_plateau_is_torch_s_reduce_on_plateau():
    from shapecheck.core.trainspec import SchedulerSpec

    losses = [1.0, 0.8, 0.79995, 0.81, 0.7, 0.71, 0.72, 0.73, 0.74, 0.6, 0.61, 0.62, 0.63]
    s = SchedulerSpec(type="plateau", gamma=0.5, patience=2, min_lr=0.02)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2,
                                                       min_lr=0.02)
    for done in range(len(losses) + 1):
        assert s.lr_at(done * 4, 4, 20, 0.1, losses[:done]) == \
            pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        if done < len(losses):
            sched.step(losses[done])
    assert opt.param_groups[0]["lr"] == 0.025  # it did drop, twice


def test_plateau_trains_on_the_validation_loss_and_needs_one(tmp_path):
    from shapecheck.training import TrainError

    s = spec(epochs=3, optimizer={"type": "sgd", "lr": 0.05},
             scheduler={"type": "plateau", "patience": 0, "gamma": 0.5, "threshold": 10},
             dataset={**DATASET, "val_fraction": 0.25})
    result, _ = shapecheck_run(s, tmp_path / "run")
    # A threshold of 10 (1000%) is never met: the rate halves after every epoch.
    assert [m.lr for m in result.history] == [0.05, 0.025, 0.0125]
    with pytest.raises(TrainError, match="plateau watches the validation loss"):
        shapecheck_run(spec(scheduler={"type": "plateau"}), tmp_path / "no_val")


# ---------------------------------------------------------------- early stopping


def lightning_stop(values: list[float], patience: int, min_delta: float,
                   lower: bool) -> int | None:
    """Lightning's EarlyStopping, by hand: the epoch (1-based) it stops after, if any."""
    best, wait = (float("inf") if lower else -float("inf")), 0
    for epoch, v in enumerate(values, 1):
        if (v < best - min_delta) if lower else (v > best + min_delta):
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return None


@pytest.mark.parametrize("monitor", ["loss", "score"])
@pytest.mark.parametrize("min_delta", [0.0, 0.01, 0.05])
def test_early_stopping_with_min_delta_is_lightning_s(monitor, min_delta):
    from shapecheck.training.loop import _best_epoch, _patience_ran_out
    from shapecheck.training.runfolder import EpochMetrics

    losses = [1.0, 0.9, 0.895, 0.89, 0.7, 0.699, 0.698, 0.69, 0.689, 0.688, 0.687, 0.5]
    accs = [0.5, 0.6, 0.605, 0.61, 0.7, 0.701, 0.703, 0.71, 0.711, 0.712, 0.713, 0.8]
    s = spec(patience=3, monitor=monitor, min_delta=min_delta,
             dataset={**DATASET, "val_fraction": 0.2})
    history, stopped = [], None
    for e, (loss, acc) in enumerate(zip(losses, accs), 1):
        history.append(EpochMetrics(epoch=e, train_loss=1.0, train_acc=0.5, test_loss=1.0,
                                    test_acc=0.5, lr=0.1, samples_per_s=1.0, seconds=1.0,
                                    val_loss=loss, val_acc=acc))
        if _patience_ran_out(s, history, _best_epoch(history, "classify", monitor)):
            stopped = e
            break
    values = losses if monitor == "loss" else accs
    if min_delta == 0 and monitor == "score":
        # The score alone has no ties here, so the classic rule and Lightning's agree.
        assert stopped == lightning_stop(values, 3, 0.0, lower=False)
    assert stopped == lightning_stop(values, 3, min_delta, lower=monitor == "loss")
    assert stopped is not None or min_delta == 0


# ---------------------------------------------------------------- weight EMA


def test_ema_is_torch_s_averaged_model_and_is_saved_and_scored(tmp_path):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    s = spec(optimizer={"type": "sgd", "lr": 0.05, "momentum": 0.5}, ema={"decay": 0.9})
    result, got = shapecheck_run(s, tmp_path / "run")
    ema = torch.load(tmp_path / "run" / "model_ema.pt", weights_only=True)

    model = seeded(lecture_cnn(), 5)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    x, y = digits()
    train_epochs(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5), x, y,
                 epochs=2, batch=32, seed=5, after_step=lambda: averaged.update_parameters(model))
    assert equal(model, got)
    assert equal(averaged.module, ema)
    assert not equal(model, ema)
    last = result.history[-1]
    assert last.ema_test_acc is not None and 0.1 < last.ema_test_acc <= 1
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ckpt["ema"][k], ema[k]) for k in ema)


def test_ema_resumes_mid_epoch_exactly(tmp_path):
    from test_train import _CtrlCAt

    s = spec(optimizer={"type": "sgd", "lr": 0.05, "momentum": 0.5}, ema={"decay": 0.9})
    shapecheck_run(s, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        shapecheck_run(s, tmp_path / "cut", module=_CtrlCAt(6 + 2))  # 6 steps an epoch
    train(lecture_cnn(), s, name="recipe", input_shape=(1, 28, 28), num_classes=10,
          base_dir=Path("."), out_dir=tmp_path / "cut", model_source="",
          log=lambda line: None, resume=True)
    a = torch.load(tmp_path / "whole" / "model_ema.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model_ema.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- gradient accumulation


def test_accumulating_four_batches_is_the_four_times_larger_batch(tmp_path):
    common = {"optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.5},
              "augment": {"crop_padding": 2, "flip": True}, "epochs": 2}
    big, big_w = shapecheck_run(spec(batch_size=64, **common), tmp_path / "big")
    acc, acc_w = shapecheck_run(spec(batch_size=16, accumulate=4, **common), tmp_path / "acc")
    # 192 digits: 3 optimizer steps an epoch either way, over the same samples.
    steps = torch.load(tmp_path / "acc" / "checkpoint.pt", weights_only=True)
    assert steps["optimizer"]["state"][0]["momentum_buffer"] is not None
    gap = max(float((big_w[k] - acc_w[k]).abs().max()) for k in big_w)
    assert gap < 1e-6, gap  # the same steps; four partial sums instead of one
    assert acc.history[-1].train_loss == pytest.approx(big.history[-1].train_loss, rel=1e-5)

    # Without augmentation, the large batch is the hand-written loop's, bit for bit.
    _, plain = shapecheck_run(spec(batch_size=64, optimizer=common["optimizer"]),
                              tmp_path / "plain")
    model = seeded(lecture_cnn(), 5)
    x, y = digits()
    train_epochs(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5), x, y,
                 epochs=2, batch=64, seed=5)
    assert equal(model, plain)


def test_accumulation_resumes_mid_epoch_exactly(tmp_path):
    from test_train import _CtrlCAt

    s = spec(batch_size=16, accumulate=3, optimizer={"type": "adam", "lr": 0.002})
    shapecheck_run(s, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):  # 4 steps of 3 parts an epoch: cut in step 2
        shapecheck_run(s, tmp_path / "cut", module=_CtrlCAt(4))
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (0, 2)
    train(lecture_cnn(), s, name="recipe", input_shape=(1, 28, 28), num_classes=10,
          base_dir=Path("."), out_dir=tmp_path / "cut", model_source="",
          log=lambda line: None, resume=True)
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- augmentations


def test_resized_crop_and_erasing_are_torchvision_s_rules():
    from shapecheck.core.trainspec import AugmentSpec
    from shapecheck.training.augment import erasing_boxes, resized_crop_boxes
    from shapecheck.training.data import augment

    x = torch.randn(40, 1, 28, 28)
    # The whole image at ratio 1 is the image itself.
    same = augment(x, AugmentSpec(resized_crop={"scale": [1, 1], "ratio": [1, 1]}), seed=1)
    assert torch.allclose(same, x, atol=1e-6)
    g = torch.Generator().manual_seed(3)
    for t, l, h, w in resized_crop_boxes(g, 200, 28, 28, (0.25, 0.5), (0.5, 2.0)):
        assert 0 <= t <= 28 - h and 0 <= l <= 28 - w
        # Rounded sides: the area and ratio within the bounds, up to a pixel each way.
        assert 0.25 * 784 * 0.8 <= h * w <= 0.5 * 784 * 1.2 and 0.4 <= w / h <= 2.5
    g = torch.Generator().manual_seed(4)
    boxes = erasing_boxes(g, 400, 28, 28, 0.5, (0.02, 0.33), (0.3, 3.3))
    assert 150 < sum(b is not None for b in boxes) < 250  # p = 0.5
    erased = augment(x, AugmentSpec(erasing={"p": 1.0, "value": 7.0}), seed=2)
    for a, b in zip(x, erased):
        changed = a != b
        assert changed.any() and bool((b[changed] == 7.0).all())
        rows, cols = changed[0].nonzero().unbind(1)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(changed.sum()) == int(box) and 0.02 * 784 * 0.8 <= int(box) <= 0.33 * 784 * 1.2
    # A rank's share draws as in one process.
    spec = AugmentSpec(resized_crop={}, erasing={"p": 0.7}, flip=True)
    whole = augment(x, spec, seed=9)
    part = augment(x[1::2], spec, seed=9, share=(torch.arange(1, 40, 2), 40))
    assert torch.equal(part, whole[1::2])


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixup_and_cutmix_train_on_their_soft_target_loss(kind):
    from torch.nn import functional as F

    from shapecheck.training.augment import mix

    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    mixed, soft = mix(x, y, torch.Generator().manual_seed(6), 10,
                      0.4 if kind == "mixup" else None, 1.0 if kind == "cutmix" else None)
    lam = float(soft[0, y[0]])
    assert torch.allclose(soft.sum(1), torch.ones(8))
    if kind == "mixup":
        assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
    else:  # each pixel from its own image or from the one before; lam the share kept
        own = mixed == x
        assert bool((own | (mixed == x.roll(1, 0))).all())
        assert lam == pytest.approx(float(own[0].float().mean()))
    # The soft-target loss is mixup's loss by hand: lam·CE(y) + (1 − lam)·CE(y').
    out = torch.randn(8, 10)
    by_hand = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y.roll(1, 0))
    assert float(F.cross_entropy(out, soft)) == pytest.approx(float(by_hand), rel=1e-6)


def test_the_new_augmentations_train_and_resume_exactly(tmp_path):
    from test_train import _CtrlCAt

    from shapecheck.training import TrainError

    s = spec(optimizer={"type": "adam", "lr": 0.003}, augment={
        "flip": True, "resized_crop": {"scale": [0.5, 1.0]}, "erasing": {"p": 0.3},
        "mixup": 0.2, "cutmix": 1.0})
    result, _ = shapecheck_run(s, tmp_path / "whole")
    assert result.history[-1].test_acc > 0.3  # chance is 0.1
    with pytest.raises(KeyboardInterrupt):
        shapecheck_run(s, tmp_path / "cut", module=_CtrlCAt(6 + 2))
    train(lecture_cnn(), s, name="recipe", input_shape=(1, 28, 28), num_classes=10,
          base_dir=Path("."), out_dir=tmp_path / "cut", model_source="",
          log=lambda line: None, resume=True)
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainError, match="soft targets, which need cross_entropy"):
        shapecheck_run(spec(loss="nll_loss", augment={"mixup": 0.2}), tmp_path / "nll")


def test_trivial_augment_ops_are_pil_s_and_torch_s():
    from PIL import Image, ImageOps

    from shapecheck.training.augment import TRIVIAL_OPS, trivial_draws, trivial_op

    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (1, 28, 28), generator=g, dtype=torch.uint8)
    levels[0, :4] = 40  # a histogram with a peak
    x = levels.float() / 255
    pil = Image.fromarray(levels[0].numpy())

    def same(ours: torch.Tensor, theirs: Image.Image) -> bool:
        return torch.equal((ours[0] * 255).round().to(torch.uint8),
                           torch.from_numpy(np.array(theirs)))

    assert same(trivial_op(x, "equalize", 0.0), ImageOps.equalize(pil))
    assert same(trivial_op(x, "posterize", 3), ImageOps.posterize(pil, 3))
    assert same(trivial_op(x, "autocontrast", 0.0), ImageOps.autocontrast(pil))
    # Solarize at 128/255: PIL inverts levels at or above 128.
    assert same(trivial_op(x, "solarize", 128 / 255), ImageOps.solarize(pil, 128))
    assert torch.equal(trivial_op(x, "rotate", 90.0), torch.rot90(x, 1, (-2, -1)))
    shifted = torch.zeros_like(x)
    shifted[..., 5:] = x[..., :-5]
    assert torch.equal(trivial_op(x, "translate_x", 5.7), shifted)  # whole pixels, as torchvision
    assert torch.allclose(trivial_op(x, "brightness", -0.5), x * 0.5)
    assert torch.equal(trivial_op(x, "identity", 0.0), x)

    draws = trivial_draws(torch.Generator().manual_seed(1), 2000)
    assert {op for op, _ in draws} == set(TRIVIAL_OPS)
    rotations = [m for op, m in draws if op == "rotate"]
    assert min(rotations) < -60 and max(rotations) > 60 and all(abs(m) <= 135 for m in rotations)


def test_trivial_augment_trains(tmp_path):
    result, _ = shapecheck_run(spec(optimizer={"type": "adam", "lr": 0.003},
                                    augment={"trivial": True}), tmp_path / "run")
    assert result.history[-1].test_acc > 0.3
