"""The golden specs under specs/, checked against torch.

Each spec is run through the torch oracle and must give the published parameter
count and GMACs. AlexNet, VGG-16, ResNet-18 and the inception block are also
built by hand below, mirroring torchvision's model source (torchvision itself is
not a dependency), and the oracle's module must match them parameter for
parameter (state_dict shapes, in order) and in output shape, on the meta device.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_nets import alexnet
from torch import nn
from torch_oracle import run_oracle

SPECS = Path(__file__).resolve().parent.parent / "specs"

# name: (params, GMACs, output shape of one sample)
GOLDEN = {
    "lecture_cnn": (8_490, 0.000467, (10,)),
    "lenet5": (61_706, 0.000417, (10,)),
    "alexnet": (61_100_840, 0.714, (1000,)),
    "vgg16": (138_357_544, 15.47, (1000,)),
    "resnet18": (11_689_512, 1.81, (1000,)),
    "inception_block": (158_442, 0.122, (10,)),
}


def load(name: str) -> dict:
    return yaml.safe_load((SPECS / f"{name}.yaml").read_text())


# -- hand-written references, after torchvision/models/*.py ---------------------




def vgg16(num_classes: int = 1000) -> nn.Module:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096),
        nn.ReLU(True),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(True),
        nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes),
    )
    return nn.Sequential(
        nn.Sequential(*layers), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), classifier
    )


class BasicBlock(nn.Module):
    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 2)
        self.layer2 = self._make_layer(128, 2, stride=2)
        self.layer3 = self._make_layer(256, 2, stride=2)
        self.layer4 = self._make_layer(512, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(  # torchvision's 3x3 where the paper has 5x5
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x):
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([b(x) for b in branches], 1)


def inception_net() -> nn.Module:
    return nn.Sequential(
        Inception(192, 64, 96, 128, 16, 32, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


REFERENCES = {
    "alexnet": alexnet,
    "vgg16": vgg16,
    "resnet18": ResNet18,
    "inception_block": inception_net,
}


def reference_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Per-sample MACs of conv2d and linear layers, counted with forward hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        per_sample = output.numel() // output.shape[0]
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += per_sample * module.in_channels // module.groups * kh * kw
        else:
            total += per_sample * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


# -- tests ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_spec_numbers(name):
    params, gmacs, out = GOLDEN[name]
    s = load(name)
    assert s["name"] == name and s.get("description")
    r = run_oracle(s)
    assert r.valid, r.error
    assert not r.disagreements
    assert r.total_params == params
    assert sum(p.numel() for p in r.module.parameters()) == params
    assert r.total_macs / 1e9 == pytest.approx(gmacs, rel=5e-3)
    assert r.output_shape == (2, *out)


def test_golden_exact_macs():
    assert run_oracle(load("alexnet")).total_macs == 714_188_480
    assert run_oracle(load("vgg16")).total_macs == 15_470_264_320
    assert run_oracle(load("resnet18")).total_macs == 1_814_073_344
    assert run_oracle(load("inception_block")).total_macs == 121_629_184


def test_lecture_train_section():
    train = load("lecture_cnn")["train"]
    assert train == {
        "dataset": {"format": "idx", "path": "../examples/data/mnist-5k"},
        "loss": "cross_entropy",
        "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.5},
        "epochs": 10,
        "batch_size": 64,
        "seed": 0,
    }
    data = (SPECS / train["dataset"]["path"]).resolve()
    assert (data / "train-images-idx3-ubyte.gz").is_file()


@pytest.mark.parametrize("name", list(REFERENCES))
def test_oracle_module_matches_torchvision_style_reference(name):
    s = load(name)
    r = run_oracle(s)
    with torch.device("meta"):
        ref = REFERENCES[name]().eval()
    x = torch.empty(2, *s["input"]["shape"], device="meta")
    assert sum(p.numel() for p in ref.parameters()) == GOLDEN[name][0]
    # Same parameters and buffers, one by one, in registration order.
    ours = [tuple(t.shape) for t in r.module.state_dict().values()]
    theirs = [tuple(t.shape) for t in ref.state_dict().values()]
    assert ours == theirs
    # And the same hyperparameters (kernel, stride, padding, bias, eps, ...).
    weighted = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
    assert [m.extra_repr() for m in r.module.modules() if isinstance(m, weighted)] == [
        m.extra_repr() for m in ref.modules() if isinstance(m, weighted)
    ]
    with torch.no_grad():
        assert tuple(ref(x).shape) == r.output_shape
        assert tuple(r.module(x).shape) == r.output_shape
    assert reference_macs(ref, x) == r.total_macs
