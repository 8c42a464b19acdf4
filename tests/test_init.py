"""--init PATH, --init-skip-head and train.freeze: a fine-tuning run equals the same run
written by hand in PyTorch, and weights that do not fit are named layer by layer."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from hand_training import MNIST_5K, digits_npz, lecture_cnn, seeded, sgd_epochs

from shapecheck.cli import main
from shapecheck.core.trainspec import DatasetSpec
from shapecheck.training.datasets import load_dataset

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not (MNIST_5K / "train-images-idx3-ubyte.gz").exists(),
                                 reason="examples/data/mnist-5k is missing")]


def spec(classes: int, dataset: str, extra: str = "", conv2: int = 20) -> str:
    return f"""\
name: lecture_cnn
input: {{shape: [1, 28, 28]}}
layers:
  - {{type: conv2d, name: conv1, out_channels: 10, kernel_size: 5}}
  - {{type: maxpool2d, kernel_size: 2}}
  - relu
  - {{type: conv2d, name: conv2, out_channels: {conv2}, kernel_size: 5}}
  - {{type: maxpool2d, kernel_size: 2}}
  - relu
  - flatten
  - {{type: linear, name: fc, out_features: {classes}}}
train:
  dataset: {dataset}
  optimizer: {{type: sgd, lr: 0.05, momentum: 0.5}}
  epochs: 1
  batch_size: 32
  seed: 4
  device: cpu
{extra}"""


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The lecture CNN trained one epoch on 320 digits of ten classes."""
    d = tmp_path_factory.mktemp("pre")
    (d / "ten.yaml").write_text(spec(10, f"{{path: {MNIST_5K}, train_size: 320, test_size: 64}}"))
    torch.set_num_threads(1)
    assert main(["build", str(d / "ten.yaml"), "--train", "--threads", "1", "-q",
                 "--out", str(d / "run"), "-o", str(d / "ten.py")]) == 0
    return d / "run"


def test_fine_tuning_with_a_new_head_and_a_frozen_layer_is_the_hand_written_run(
        pretrained, tmp_path, capsys):
    npz = digits_npz(tmp_path / "five.npz", 5, 160)
    path = tmp_path / "five.yaml"
    path.write_text(spec(5, f"{{path: {npz}}}", "  freeze: [conv1]\n"))
    out = tmp_path / "tuned"
    assert main(["build", str(path), "--train", "--threads", "1", "--out", str(out),
                 "-o", str(tmp_path / "five.py"), "--init", str(pretrained),
                 "--init-skip-head"]) == 0
    said = capsys.readouterr().out
    assert f"starting from the weights of {pretrained}; fc.weight, fc.bias left at their " \
           "fresh initialisation" in said
    assert "conv1 frozen: 260 of" in said
    assert json.loads((out / "run.json").read_text())["init"] == str(pretrained)

    # By hand: the seed's initialisation, the pretrained weights but the head's, conv1
    # frozen, plain SGD over the same batches.
    data = load_dataset(DatasetSpec(path=str(npz)), input_shape=(1, 28, 28), num_classes=5)
    model = seeded(lecture_cnn(5), 4)
    before = torch.load(pretrained / "model.pt", weights_only=True)
    with torch.no_grad():
        for (key, mine), theirs in zip(model.state_dict().items(), before.values()):
            if not key.startswith("7."):  # the head
                mine.copy_(theirs)
    for p in model[0].parameters():
        p.requires_grad_(False)
    sgd_epochs(model, data.x_train, data.y_train, epochs=1, batch=32, seed=4, lr=0.05,
               momentum=0.5)

    after = torch.load(out / "model.pt", weights_only=True)
    assert list(after) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                           "fc.weight", "fc.bias"]
    for mine, theirs in zip(model.state_dict().values(), after.values()):
        assert torch.equal(mine, theirs)
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])  # frozen
    assert not torch.equal(after["conv2.weight"], before["conv2.weight"])


def test_weights_that_do_not_fit_are_named_per_layer_with_both_shapes(pretrained, tmp_path,
                                                                       capsys):
    npz = digits_npz(tmp_path / "five.npz", 5, 64)
    path = tmp_path / "five.yaml"
    path.write_text(spec(5, f"{{path: {npz}}}"))
    out = tmp_path / "run"
    args = ["build", str(path), "--train", "--out", str(out), "-o", str(tmp_path / "m.py"),
            "--init", str(pretrained / "model.pt")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert ("--init " + str(pretrained / "model.pt") + ": the weights do not fit this network "
            "(2 mismatches in 1 layer); the classifier head alone differs (another number of "
            "classes?): --init-skip-head keeps it freshly initialised") in err
    assert "  layer fc (linear, five.yaml line 11):\n" \
           "    fc.weight: expected (5, 320), found (10, 320)\n" \
           "    fc.bias: expected (5,), found (10,)" in err
    assert not out.exists() and "Traceback" not in err

    # Two layers off, one of them inside: each named, and no hint about the head.
    path.write_text(spec(5, f"{{path: {npz}}}", conv2=16))
    assert main([*args, "--init-skip-head"]) == 1
    err = capsys.readouterr().err
    assert "(2 mismatches in 1 layer)" in err and "--init-skip-head keeps" not in err
    assert "layer conv2 (conv2d, five.yaml line 7):\n" \
           "    conv2.weight: expected (16, 10, 5, 5), found (20, 10, 5, 5)\n" \
           "    conv2.bias: expected (16,), found (20,)" in err


def test_init_refuses_what_it_cannot_start_from(pretrained, tmp_path, capsys):
    path = tmp_path / "ten.yaml"
    path.write_text(spec(10, f"{{path: {MNIST_5K}, train_size: 64, test_size: 32}}"))
    base = ["build", str(path), "--train", "--out", str(tmp_path / "run"),
            "-o", str(tmp_path / "m.py")]
    assert main([*base, "--init", str(tmp_path / "nothing.pt")]) == 2
    assert "--init " + str(tmp_path / "nothing.pt") + ": no such file" in capsys.readouterr().err
    assert main([*base, "--init", str(tmp_path)]) == 2
    assert "has no model.pt (is it a run folder?)" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    assert main([*base, "--init", str(tmp_path / "junk.pt")]) == 2
    assert "not a PyTorch weights file that loads safely" in capsys.readouterr().err
    assert main([*base, "--init", str(pretrained), "--resume"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main([*base, "--init-skip-head"]) == 2
    assert "--init-skip-head only applies with --init PATH" in capsys.readouterr().err
    # The checkpoint, and a DDP-style state dict, load as well as model.pt.
    ddp = {f"module.{k}": v for k, v in
           torch.load(pretrained / "model.pt", weights_only=True).items()}
    torch.save(ddp, tmp_path / "ddp.pt")
    for source in (pretrained / "checkpoint.pt", tmp_path / "ddp.pt"):
        assert main([*base, "--init", str(source), "--fresh", "-q"]) == 0
    capsys.readouterr()
    # A layer to freeze that the network has not.
    path.write_text(spec(10, f"{{path: {MNIST_5K}, train_size: 64, test_size: 32}}",
                         "  freeze: [conv9]\n"))
    assert main([*base, "--fresh"]) == 1
    assert ("freeze: this network has no layer 'conv9'; the layers with parameters are "
            "conv1, conv2, fc") in capsys.readouterr().err
