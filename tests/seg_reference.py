"""Torch references for the segmentation zoo (specs/zoo/fcn_resnet50.yaml and the others), one
builder per network.

Each builder follows torchvision's models/segmentation/*.py, models/resnet.py,
models/mobilenetv3.py and ops/feature_pyramid_network.py (torchvision itself is not a
dependency): the same modules in the same registration order, with the same hyperparameters,
so that with the auxiliary classifier on, the parameter count equals torchvision's published
``num_params``. The zoo compares the networks with the auxiliary classifier off, 21 classes.

torchvision's models return ``{"out": tensor}``; these return the tensor (the resnet50_fpn
backbone returns its dict of levels). Where torchvision calls a function rather than a module
(``F.interpolate``, ``F.max_pool2d``), so does the reference: the tests compare the weighted
leaves (conv, norm layers) one by one, and every total.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from reference_nets import SqueezeExcitation
from reference_nets import _make_divisible as make_divisible
from torch import Tensor, nn
from zoo_reference import MOBILENET_V3

NUM_CLASSES = 21


def conv_norm_act(cin, cout, k=3, stride=1, groups=1, norm=nn.BatchNorm2d, act=nn.ReLU,
                  dilation=1) -> nn.Sequential:
    """torchvision.ops.misc.Conv2dNormActivation with its dilation: padding (k - 1) // 2 ×
    dilation keeps the size."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 * dilation,
                                         dilation=dilation, groups=groups, bias=norm is None)]
    if norm is not None:
        layers.append(norm(cout))
    if act is not None:
        layers.append(act(inplace=True))
    seq = nn.Sequential(*layers)
    seq.out_channels = cout
    return seq


def upsample_to(x: Tensor, like: Tensor, mode: str = "bilinear") -> Tensor:
    """F.interpolate to another tensor's H×W, as torchvision's heads do."""
    if mode == "nearest":
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")
    return F.interpolate(x, size=like.shape[-2:], mode=mode, align_corners=False)


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d: batchnorm with fixed statistics and affine
    terms, all buffers (resnet_fpn_backbone's default norm layer)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                            ("running_var", 1.0)):
            self.register_buffer(name, torch.full((num_features,), value))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


# -- ResNet-50 backbone (models/resnet.py with replace_stride_with_dilation) -----------------


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1,
                 norm: Callable[..., nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50Body(nn.Module):
    """resnet50(replace_stride_with_dilation=…, norm_layer=…) up to layer4, as
    IntermediateLayerGetter keeps it (no avgpool, no fc); forward gives layer1..layer4."""

    def __init__(self, replace_stride_with_dilation=(False, False, False),
                 norm: Callable[..., nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.inplanes, self.dilation, self.norm = 64, 1, norm
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(256, 6, 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(512, 3, 2, replace_stride_with_dilation[2])

    def _make_layer(self, planes, blocks, stride=1, dilate=False):
        # torchvision: a dilated stage keeps stride 1 and doubles the dilation; its first block
        # still has the stage's previous dilation.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       self.norm(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation,
                             self.norm)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation, norm=self.norm)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = out[name] = getattr(self, name)(x)
        return out


# -- MobileNetV3-Large backbone (models/mobilenetv3.py with dilated=True) ---------------------


class InvertedResidual(nn.Module):
    """torchvision's InvertedResidual with its dilation: a dilated block keeps stride 1."""

    def __init__(self, cin, k, expanded, cout, use_se, act, stride, dilation):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        act_layer = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, norm=norm, act=act_layer))
        layers.append(conv_norm_act(expanded, expanded, k, 1 if dilation > 1 else stride,
                                    groups=expanded, norm=norm, act=act_layer,
                                    dilation=dilation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8),
                                            scale_activation=nn.Hardsigmoid))
        layers.append(conv_norm_act(expanded, cout, 1, norm=norm, act=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cout
        self._is_cn = stride > 1  # the first block of a stage (C1 … C4)

    def forward(self, x: Tensor) -> Tensor:
        r = self.block(x)
        return r + x if self.use_res_connect else r


def mobilenet_v3_large_features(dilated: bool = True) -> nn.Sequential:
    """mobilenet_v3_large(dilated=…).features: the last stage (C4, three blocks) dilated 2."""
    setting, _ = MOBILENET_V3["large"]
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    layers: list[nn.Module] = [conv_norm_act(3, 16, 3, 2, norm=norm, act=nn.Hardswish)]
    for i, cnf in enumerate(setting):
        layers.append(InvertedResidual(*cnf, dilation=2 if dilated and i >= 12 else 1))
    layers.append(conv_norm_act(160, 960, 1, norm=norm, act=nn.Hardswish))
    return nn.Sequential(*layers)


def stage_indices(features: nn.Sequential) -> list[int]:
    """torchvision's taps: the stem, the first block of each strided stage, the last conv."""
    return ([0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
            + [len(features) - 1])


class MobileNetBody(nn.Module):
    """IntermediateLayerGetter over the features: runs them up to the last tap, gives the taps
    by name ({index: name})."""

    def __init__(self, features: nn.Sequential, taps: dict[int, str]):
        super().__init__()
        self.features, self.taps = features, taps

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return out


# -- heads (models/segmentation/fcn.py, deeplabv3.py, lraspp.py) -----------------------------


def fcn_head(cin: int, channels: int) -> nn.Sequential:
    inter = cin // 4
    return nn.Sequential(nn.Conv2d(cin, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter),
                         nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(inter, channels, 1))


class ASPPPooling(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return upsample_to(super().forward(x), x)


class ASPP(nn.Module):
    def __init__(self, cin: int, rates=(12, 24, 36), cout: int = 256):
        super().__init__()
        convs: list[nn.Module] = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                                nn.BatchNorm2d(cout), nn.ReLU())]
        for rate in rates:  # ASPPConv
            convs.append(nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=rate, dilation=rate, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU()))
        convs.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(convs)
        self.project = nn.Sequential(nn.Conv2d(len(convs) * cout, cout, 1, bias=False),
                                     nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


def deeplab_head(cin: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(ASPP(cin), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                         nn.BatchNorm2d(256), nn.ReLU(), nn.Conv2d(256, num_classes, 1))


class SimpleSegmentationModel(nn.Module):
    """torchvision's _SimpleSegmentationModel: the classifier on the backbone's "out", upsampled
    (bilinear) to the input's size; the auxiliary classifier on "aux" where there is one."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module,
                 aux_classifier: nn.Module | None = None):
        super().__init__()
        self.backbone, self.classifier, self.aux_classifier = backbone, classifier, aux_classifier

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        out = upsample_to(self.classifier(features["out"]), x)
        if self.aux_classifier is not None:  # torchvision returns it as "aux"; measured here
            upsample_to(self.aux_classifier(features["aux"]), x)
        return out


class RenameTaps(nn.Module):
    """A ResNet50Body whose layer outputs are renamed ({"layer4": "out", …})."""

    def __init__(self, body: nn.Module, names: dict[str, str]):
        super().__init__()
        self.body, self.names = body, names

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = self.body(x)
        return {new: out[old] for old, new in self.names.items()}


def _resnet_backbone(aux: bool) -> nn.Module:
    body = ResNet50Body(replace_stride_with_dilation=(False, True, True))
    return RenameTaps(body, {"layer4": "out", **({"layer3": "aux"} if aux else {})})


def fcn_resnet50(num_classes: int = NUM_CLASSES, aux: bool = False) -> nn.Module:
    return SimpleSegmentationModel(_resnet_backbone(aux), fcn_head(2048, num_classes),
                                   fcn_head(1024, num_classes) if aux else None)


def deeplabv3_resnet50(num_classes: int = NUM_CLASSES, aux: bool = False) -> nn.Module:
    return SimpleSegmentationModel(_resnet_backbone(aux), deeplab_head(2048, num_classes),
                                   fcn_head(1024, num_classes) if aux else None)


def deeplabv3_mobilenet_v3_large(num_classes: int = NUM_CLASSES, aux: bool = False) -> nn.Module:
    features = mobilenet_v3_large_features(dilated=True)
    taps = stage_indices(features)
    out_pos, aux_pos = taps[-1], taps[-4]  # C5 (output stride 16), C2 (output stride 8)
    names = {out_pos: "out", **({aux_pos: "aux"} if aux else {})}
    return SimpleSegmentationModel(
        MobileNetBody(features, names), deeplab_head(features[out_pos].out_channels, num_classes),
        fcn_head(features[aux_pos].out_channels, num_classes) if aux else None)


class LRASPPHead(nn.Module):
    def __init__(self, low_channels, high_channels, num_classes, inter_channels=128):
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                 nn.BatchNorm2d(inter_channels), nn.ReLU(inplace=True))
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                   nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                   nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        low, high = features["low"], features["high"]
        x = upsample_to(self.cbr(high) * self.scale(high), low)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        features = mobilenet_v3_large_features(dilated=True)
        taps = stage_indices(features)
        low_pos, high_pos = taps[-4], taps[-1]  # C2 (output stride 8), C5 (output stride 16)
        self.backbone = MobileNetBody(features, {low_pos: "low", high_pos: "high"})
        self.classifier = LRASPPHead(features[low_pos].out_channels,
                                     features[high_pos].out_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return upsample_to(self.classifier(self.backbone(x)), x)


def lraspp_mobilenet_v3_large(num_classes: int = NUM_CLASSES) -> nn.Module:
    return LRASPP(num_classes)


# -- ResNet-50 FPN backbone (detection/backbone_utils.py, ops/feature_pyramid_network.py) -----


class ResNet50FPN(nn.Module):
    """resnet_fpn_backbone(backbone_name="resnet50"): ResNet-50 with torchvision's default
    FrozenBatchNorm2d (its terms are buffers) and a FeaturePyramidNetwork (256 channels) over
    layer1..layer4, with LastLevelMaxPool. Its levels "0" … "3" and "pool" are named p2 … p5
    and pool here."""

    def __init__(self, norm: Callable[..., nn.Module] = FrozenBatchNorm2d, out_channels: int = 256):
        super().__init__()
        self.body = ResNet50Body(norm=norm)
        in_channels_list = [256, 512, 1024, 2048]
        # Conv2dNormActivation(…, norm_layer=None, activation_layer=None): a conv with a bias
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                          for _ in in_channels_list)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        xs = list(self.body(x).values())
        last_inner = self.inner_blocks[-1](xs[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(xs) - 2, -1, -1):
            inner_lateral = self.inner_blocks[idx](xs[idx])
            last_inner = inner_lateral + upsample_to(last_inner, inner_lateral, "nearest")
            results.insert(0, self.layer_blocks[idx](last_inner))
        results.append(F.max_pool2d(results[-1], 1, 2, 0))  # LastLevelMaxPool
        return OrderedDict(zip(("p2", "p3", "p4", "p5", "pool"), results))


def resnet50_fpn(norm: Callable[..., nn.Module] = FrozenBatchNorm2d) -> nn.Module:
    return ResNet50FPN(norm)


# torchvision's published num_params: fcn and deeplabv3 with their auxiliary classifier
# (the zoo's networks leave it out). resnet_fpn_backbone has no published count of its own:
# fasterrcnn_resnet50_fpn's 41,755,286 less its RPN head (593,935) and box head (14,362,055).
PUBLISHED = {
    "fcn_resnet50": 35_322_218,
    "deeplabv3_resnet50": 42_004_074,
    "deeplabv3_mobilenet_v3_large": 11_029_328,
    "lraspp_mobilenet_v3_large": 3_221_538,
    "resnet50_fpn": 41_755_286 - 593_935 - 14_362_055,
}

# name: (builder, the build torchvision's count is of: with the auxiliary classifier)
SEG_ZOO: dict[str, tuple[Callable[..., nn.Module], Callable[[], nn.Module]]] = {
    "fcn_resnet50": (fcn_resnet50, partial(fcn_resnet50, aux=True)),
    "deeplabv3_resnet50": (deeplabv3_resnet50, partial(deeplabv3_resnet50, aux=True)),
    "deeplabv3_mobilenet_v3_large": (deeplabv3_mobilenet_v3_large,
                                     partial(deeplabv3_mobilenet_v3_large, aux=True)),
    "lraspp_mobilenet_v3_large": (lraspp_mobilenet_v3_large, lraspp_mobilenet_v3_large),
    "resnet50_fpn": (resnet50_fpn, resnet50_fpn),
}
