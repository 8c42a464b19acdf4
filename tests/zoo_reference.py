"""Torch references for the model zoo (specs/zoo/), one builder per network.

Each builder follows torchvision's models/*.py (torchvision itself is not a dependency): the
same modules, in the same registration order, with the same hyperparameters, so the parameter
count equals torchvision's published ``num_params``. Auxiliary heads (GoogLeNet, Inception-v3)
are left out, as in the published counts. The U-Net is the usual one (Ronneberger et al.,
2015) with padded 3×3 convs and batchnorm.

Where torchvision calls a function rather than a module (``F.relu`` in BasicConv2d,
``F.avg_pool2d`` in Inception-v3, ``x.mean([2, 3])``), so does the reference: the tests compare
the weighted leaves (conv, linear, norm layers) one by one, and every total.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from reference_nets import SqueezeExcitation, alexnet
from reference_nets import _make_divisible as make_divisible
from torch import Tensor, nn


def conv_norm_act(
    cin: int,
    cout: int,
    k: int = 3,
    stride: int = 1,
    groups: int = 1,
    norm: Callable[..., nn.Module] | None = nn.BatchNorm2d,
    act: Callable[..., nn.Module] | None = nn.ReLU,
    padding: int | None = None,
    bias: bool | None = None,
) -> nn.Sequential:
    """torchvision.ops.misc.Conv2dNormActivation."""
    if padding is None:
        padding = (k - 1) // 2
    if bias is None:
        bias = norm is None
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)
    ]
    if norm is not None:
        layers.append(norm(cout))
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth (identity in eval mode)."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: Tensor) -> Tensor:
        return x


# -- AlexNet, VGG ----------------------------------------------------------------


def vgg16_bn(num_classes: int = 1000) -> nn.Module:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.BatchNorm2d(v),
                       nn.ReLU(inplace=True)]
            cin = v
    classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes),
    )
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
                         classifier)


# -- ResNet family -----------------------------------------------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers, groups=1, width_per_group=64, num_classes=1000):
        super().__init__()
        self.inplanes, self.groups, self.base_width = 64, groups, width_per_group
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * 4, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.groups,
                             self.base_width)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, groups=self.groups,
                              base_width=self.base_width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50() -> nn.Module:
    return ResNet([3, 4, 6, 3])


def resnext50_32x4d() -> nn.Module:
    return ResNet([3, 4, 6, 3], groups=32, width_per_group=4)


def wide_resnet50_2() -> nn.Module:
    return ResNet([3, 4, 6, 3], width_per_group=128)


# -- DenseNet -----------------------------------------------------------------------


class DenseLayer(nn.Module):
    def __init__(self, cin, growth_rate, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers, cin, bn_size, growth_rate):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            DenseLayer(cin + i * growth_rate, growth_rate, bn_size))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64,
                 bn_size=4, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, 7, 2, 3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        c = num_init_features
        for i, n in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, bn_size, growth_rate))
            c += n * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x))
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


def densenet121() -> nn.Module:
    return DenseNet()


# -- SqueezeNet, GoogLeNet, Inception-v3 -----------------------------------------------


class Fire(nn.Module):
    def __init__(self, cin, squeeze, e1, e3):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


def squeezenet1_1(num_classes: int = 1000) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
        Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
    )
    classifier = nn.Sequential(
        nn.Dropout(p=0.5), nn.Conv2d(512, num_classes, kernel_size=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d((1, 1)),
    )
    return nn.Sequential(features, classifier, nn.Flatten())


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(cin, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        # torchvision keeps a 3x3 conv here where the paper has 5x5 (pytorch/vision#906)
        self.branch3 = nn.Sequential(BasicConv2d(cin, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(cin, pool_proj, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    """aux_logits=False, transform_input=False."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for m in list(self.children())[:-3]:
            x = m(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def googlenet() -> nn.Module:
    return GoogLeNet()


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = m(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for m in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = m(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class Inception3(nn.Module):
    """aux_logits=False, transform_input=False; input 3×299×299."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for m in list(self.children())[:-3]:
            x = m(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def inception_v3() -> nn.Module:
    return Inception3()


# -- MobileNetV2, MobileNetV3, MnasNet ---------------------------------------------------


class InvertedResidualV2(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_norm_act(inp, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_norm_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, round_nearest: int = 8):
        super().__init__()
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                   [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
        cin = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [conv_norm_act(3, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in setting:
            cout = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidualV2(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(conv_norm_act(cin, self.last_channel, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2),
                                        nn.Linear(self.last_channel, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(width_mult: float = 1.0) -> nn.Module:
    return MobileNetV2(width_mult)


class InvertedResidualV3(nn.Module):
    def __init__(self, cin, k, expanded, cout, use_se, act, stride):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        act_layer = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, norm=norm, act=act_layer))
        layers.append(conv_norm_act(expanded, expanded, k, stride, groups=expanded, norm=norm,
                                    act=act_layer))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8),
                                            scale_activation=nn.Hardsigmoid))
        layers.append(conv_norm_act(expanded, cout, 1, norm=norm, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        r = self.block(x)
        return r + x if self.use_res_connect else r


MOBILENET_V3 = {
    "large": ([
        (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
        (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
        (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
        (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
        (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
        (160, 5, 960, 160, True, "HS", 1),
    ], 1280),
    "small": ([
        (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
        (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
        (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
        (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
        (96, 5, 576, 96, True, "HS", 1),
    ], 1024),
}


class MobileNetV3(nn.Module):
    def __init__(self, arch: str, num_classes: int = 1000):
        super().__init__()
        setting, last_channel = MOBILENET_V3[arch]
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        layers: list[nn.Module] = [conv_norm_act(3, setting[0][0], 3, 2, norm=norm,
                                                 act=nn.Hardswish)]
        layers += [InvertedResidualV3(*cnf) for cnf in setting]
        last_in = setting[-1][3]
        layers.append(conv_norm_act(last_in, 6 * last_in, 1, norm=norm, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, last_channel), nn.Hardswish(inplace=True),
            nn.Dropout(p=0.2, inplace=True), nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenet_v3_large() -> nn.Module:
    return MobileNetV3("large")


def mobilenet_v3_small() -> nn.Module:
    return MobileNetV3("small")


_BN_MOMENTUM = 1 - 0.9997


class MnasInvertedResidual(nn.Module):
    def __init__(self, cin, cout, k, stride, expansion):
        super().__init__()
        mid = cin * expansion
        self.apply_residual = cin == cout and stride == 1
        self.layers = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, k, padding=k // 2, stride=stride, groups=mid, bias=False),
            nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout, momentum=_BN_MOMENTUM),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x) + x if self.apply_residual else self.layers(x)


def _mnas_stack(cin, cout, k, stride, exp, repeats) -> nn.Sequential:
    return nn.Sequential(MnasInvertedResidual(cin, cout, k, stride, exp),
                         *[MnasInvertedResidual(cout, cout, k, 1, exp)
                           for _ in range(1, repeats)])


class MNASNet(nn.Module):
    def __init__(self, alpha: float = 1.0, num_classes: int = 1000):
        super().__init__()
        d = [_round_to_multiple_of(x * alpha, 8) for x in [32, 16, 24, 40, 80, 96, 192, 320]]
        bn = partial(nn.BatchNorm2d, momentum=_BN_MOMENTUM)
        self.layers = nn.Sequential(
            nn.Conv2d(3, d[0], 3, padding=1, stride=2, bias=False), bn(d[0]), nn.ReLU(inplace=True),
            nn.Conv2d(d[0], d[0], 3, padding=1, stride=1, groups=d[0], bias=False), bn(d[0]),
            nn.ReLU(inplace=True),
            nn.Conv2d(d[0], d[1], 1, padding=0, stride=1, bias=False), bn(d[1]),
            _mnas_stack(d[1], d[2], 3, 2, 3, 3),
            _mnas_stack(d[2], d[3], 5, 2, 3, 3),
            _mnas_stack(d[3], d[4], 5, 2, 6, 3),
            _mnas_stack(d[4], d[5], 3, 1, 6, 2),
            _mnas_stack(d[5], d[6], 5, 2, 6, 4),
            _mnas_stack(d[6], d[7], 3, 1, 6, 1),
            nn.Conv2d(d[7], 1280, 1, padding=0, stride=1, bias=False), bn(1280),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True),
                                        nn.Linear(1280, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.layers(x).mean([2, 3]))


def _round_to_multiple_of(val: float, divisor: int, round_up_bias: float = 0.9) -> int:
    new_val = max(divisor, int(val + divisor / 2) // divisor * divisor)
    return new_val if new_val >= round_up_bias * val else new_val + divisor


def mnasnet1_0() -> nn.Module:
    return MNASNet(1.0)


# -- EfficientNet -------------------------------------------------------------------------

EFFICIENTNET_SCALES = {  # width_mult, depth_mult, dropout
    "b0": (1.0, 1.0, 0.2), "b1": (1.0, 1.1, 0.2), "b2": (1.1, 1.2, 0.3), "b3": (1.2, 1.4, 0.3),
}


class MBConv(nn.Module):
    def __init__(self, expand_ratio, k, stride, cin, cout, sd_prob):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = make_divisible(cin * expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, act=nn.SiLU))
        layers.append(conv_norm_act(expanded, expanded, k, stride, groups=expanded, act=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4),
                                        activation=partial(nn.SiLU, inplace=True)))
        layers.append(conv_norm_act(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")

    def forward(self, x: Tensor) -> Tensor:
        r = self.block(x)
        if self.use_res_connect:
            r = self.stochastic_depth(r) + x
        return r


class EfficientNet(nn.Module):
    def __init__(self, scale: str, stochastic_depth_prob: float = 0.2, num_classes: int = 1000):
        super().__init__()
        wm, dm, dropout = EFFICIENTNET_SCALES[scale]
        base = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
                (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
                (6, 3, 1, 192, 320, 1)]
        setting = [(e, k, s, make_divisible(i * wm, 8), make_divisible(o * wm, 8),
                    math.ceil(n * dm)) for e, k, s, i, o, n in base]
        layers: list[nn.Module] = [conv_norm_act(3, setting[0][3], 3, 2, act=nn.SiLU)]
        total = sum(c[5] for c in setting)
        block_id = 0
        for e, k, s, cin, cout, n in setting:
            stage = []
            for i in range(n):
                sd = stochastic_depth_prob * float(block_id) / total
                stage.append(MBConv(e, k, s if i == 0 else 1, cin if i == 0 else cout, cout, sd))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        last_in = setting[-1][4]
        layers.append(conv_norm_act(last_in, 4 * last_in, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(4 * last_in, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet(scale: str = "b0") -> nn.Module:
    return EfficientNet(scale)


# -- ShuffleNetV2 ---------------------------------------------------------------------------


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        bf = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, bf, 1, 1, 0, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else bf, bf, 1, 1, 0, bias=False), nn.BatchNorm2d(bf),
            nn.ReLU(inplace=True),
            nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False), nn.BatchNorm2d(bf),
            nn.Conv2d(bf, bf, 1, 1, 0, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


SHUFFLENET_V2 = {"x0_5": [24, 48, 96, 192, 1024], "x1_0": [24, 116, 232, 464, 1024]}


class ShuffleNetV2(nn.Module):
    def __init__(self, scale: str = "x1_0", num_classes: int = 1000):
        super().__init__()
        out = SHUFFLENET_V2[scale]
        self.conv1 = nn.Sequential(nn.Conv2d(3, out[0], 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(out[0]), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = out[0]
        for name, repeats, cout in zip(("stage2", "stage3", "stage4"), (4, 8, 4), out[1:4]):
            seq = [ShuffleInvertedResidual(cin, cout, 2)]
            seq += [ShuffleInvertedResidual(cout, cout, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*seq))
            cin = cout
        self.conv5 = nn.Sequential(nn.Conv2d(cin, out[-1], 1, 1, 0, bias=False),
                                   nn.BatchNorm2d(out[-1]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(out[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2(scale: str = "x1_0") -> nn.Module:
    return ShuffleNetV2(scale)


# -- RegNetY-400MF -----------------------------------------------------------------------------


def regnet_block_params(depth, w_0, w_a, w_m, group_width, bottleneck_multiplier=1.0):
    """torchvision's BlockParams.from_init_params: (widths, depths, group_widths) per stage."""
    with torch.device("cpu"):  # a few numbers, computed even while modules go to meta
        return _regnet_block_params(depth, w_0, w_a, w_m, group_width, bottleneck_multiplier)


def _regnet_block_params(depth, w_0, w_a, w_m, group_width, bottleneck_multiplier):
    widths_cont = torch.arange(depth) * w_a + w_0
    block_capacity = torch.round(torch.log(widths_cont / w_0) / math.log(w_m))
    block_widths = (torch.round(torch.divide(w_0 * torch.pow(w_m, block_capacity), 8)) * 8
                    ).int().tolist()
    splits = [w != wp or r != rp for w, wp, r, rp in
              zip(block_widths + [0], [0] + block_widths, block_widths + [0], [0] + block_widths)]
    stage_widths = [w for w, t in zip(block_widths, splits[:-1]) if t]
    stage_depths = torch.diff(torch.tensor([d for d, t in enumerate(splits) if t])).int().tolist()
    widths = [int(w * bottleneck_multiplier) for w in stage_widths]
    gws = [min(group_width, w) for w in widths]
    ws_bot = [make_divisible(w, g) for w, g in zip(widths, gws)]
    stage_widths = [int(w / bottleneck_multiplier) for w in ws_bot]
    return stage_widths, stage_depths, gws


class ResBottleneckBlock(nn.Module):
    def __init__(self, w_in, w_out, stride, group_width, se_ratio):
        super().__init__()
        self.proj = None
        if w_in != w_out or stride != 1:
            self.proj = conv_norm_act(w_in, w_out, 1, stride, act=None)
        w_b = w_out
        g = w_b // group_width
        self.f = nn.Sequential(OrderedDict([
            ("a", conv_norm_act(w_in, w_b, 1)),
            ("b", conv_norm_act(w_b, w_b, 3, stride, groups=g)),
            ("se", SqueezeExcitation(w_b, round(se_ratio * w_in))),
            ("c", conv_norm_act(w_b, w_out, 1, act=None)),
        ]))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        # torchvision writes proj(x) + f(x); f runs first here so that the hooks see the
        # layers in the order the spec lists them (body, then shortcut). The sum is the same.
        fx = self.f(x)
        return self.activation((self.proj(x) if self.proj is not None else x) + fx)


class RegNet(nn.Module):
    def __init__(self, depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8, se_ratio=0.25,
                 num_classes=1000):
        super().__init__()
        self.stem = conv_norm_act(3, 32, 3, 2)
        widths, depths, gws = regnet_block_params(depth, w_0, w_a, w_m, group_width)
        blocks, cur = [], 32
        for i, (w, d, g) in enumerate(zip(widths, depths, gws)):
            stage = nn.Sequential()
            for j in range(d):
                stage.add_module(f"block{i + 1}-{j}", ResBottleneckBlock(
                    cur if j == 0 else w, w, 2 if j == 0 else 1, g, se_ratio))
            blocks.append((f"block{i + 1}", stage))
            cur = w
        self.trunk_output = nn.Sequential(OrderedDict(blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cur, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.trunk_output(self.stem(x)))
        return self.fc(x.flatten(start_dim=1))


def regnet_y_400mf() -> nn.Module:
    return RegNet()


# -- ConvNeXt-Tiny ---------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    def __init__(self, dim, layer_scale, sd_prob):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(4 * dim, dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")

    def forward(self, x: Tensor) -> Tensor:
        return self.stochastic_depth(self.layer_scale * self.block(x)) + x


class ConvNeXt(nn.Module):
    def __init__(self, dims=(96, 192, 384, 768), depths=(3, 3, 9, 3),
                 stochastic_depth_prob=0.1, layer_scale=1e-6, num_classes=1000):
        super().__init__()
        norm = partial(LayerNorm2d, eps=1e-6)
        layers: list[nn.Module] = [conv_norm_act(3, dims[0], 4, 4, padding=0, norm=norm, act=None,
                                                 bias=True)]
        total, block_id = sum(depths), 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stage = []
            for _ in range(depth):
                sd = stochastic_depth_prob * block_id / (total - 1.0)
                stage.append(CNBlock(dim, layer_scale, sd))
                block_id += 1
            layers.append(nn.Sequential(*stage))
            if i + 1 < len(dims):
                layers.append(nn.Sequential(norm(dim), nn.Conv2d(dim, dims[i + 1], 2, 2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(norm(dims[-1]), nn.Flatten(1),
                                        nn.Linear(dims[-1], num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def convnext_tiny() -> nn.Module:
    return ConvNeXt()


# -- U-Net -------------------------------------------------------------------------------------


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 2, widths=(64, 128, 256, 512, 1024)):
        super().__init__()
        self.inc = double_conv(in_channels, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), double_conv(a, b)) for a, b in itertools.pairwise(widths))
        rev = widths[::-1]
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in itertools.pairwise(rev))
        self.up_convs = nn.ModuleList(double_conv(2 * b, b) for b in rev[1:])
        self.outc = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up, conv in zip(self.ups, self.up_convs):
            x = conv(torch.cat([skips.pop(), up(x)], 1))
        return self.outc(x)


def unet() -> nn.Module:
    return UNet()


# name: (builder, {scale: kwargs}, published params per scale, input shape)
ZOO: dict[str, tuple[Callable[..., nn.Module], dict[str | None, dict], dict, tuple]] = {
    "alexnet": (alexnet, {None: {}}, {None: 61_100_840}, (3, 224, 224)),
    "vgg16_bn": (vgg16_bn, {None: {}}, {None: 138_365_992}, (3, 224, 224)),
    "resnet50": (resnet50, {None: {}}, {None: 25_557_032}, (3, 224, 224)),
    "resnext50_32x4d": (resnext50_32x4d, {None: {}}, {None: 25_028_904}, (3, 224, 224)),
    "wide_resnet50_2": (wide_resnet50_2, {None: {}}, {None: 68_883_240}, (3, 224, 224)),
    "densenet121": (densenet121, {None: {}}, {None: 7_978_856}, (3, 224, 224)),
    "squeezenet1_1": (squeezenet1_1, {None: {}}, {None: 1_235_496}, (3, 224, 224)),
    "googlenet": (googlenet, {None: {}}, {None: 6_624_904}, (3, 224, 224)),
    "inception_v3": (inception_v3, {None: {}}, {None: 23_834_568}, (3, 299, 299)),
    "mobilenet_v2": (mobilenet_v2,
                     {"x0_5": {"width_mult": 0.5}, "x0_75": {"width_mult": 0.75},
                      "x1_0": {"width_mult": 1.0}, "x1_4": {"width_mult": 1.4}},
                     {"x1_0": 3_504_872}, (3, 224, 224)),
    "mobilenet_v3_large": (mobilenet_v3_large, {None: {}}, {None: 5_483_032}, (3, 224, 224)),
    "mobilenet_v3_small": (mobilenet_v3_small, {None: {}}, {None: 2_542_856}, (3, 224, 224)),
    "mnasnet1_0": (mnasnet1_0, {None: {}}, {None: 4_383_312}, (3, 224, 224)),
    "efficientnet": (efficientnet, {s: {"scale": s} for s in EFFICIENTNET_SCALES},
                     {"b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232},
                     (3, 224, 224)),
    "shufflenet_v2": (shufflenet_v2, {s: {"scale": s} for s in SHUFFLENET_V2},
                      {"x0_5": 1_366_792, "x1_0": 2_278_604}, (3, 224, 224)),
    "regnet_y_400mf": (regnet_y_400mf, {None: {}}, {None: 4_344_144}, (3, 224, 224)),
    "convnext_tiny": (convnext_tiny, {None: {}}, {None: 28_589_128}, (3, 224, 224)),
    "unet": (unet, {None: {}}, {}, (3, 256, 256)),
}
