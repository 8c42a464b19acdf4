"""Hand-written torch.nn reference networks for the specs that use the newer spec vocabulary.

Each module is written the way torchvision's model code writes it (MobileNetV3, ShuffleNetV2,
ConvNeXt), or, for the U-Net and the super-resolution net, the way the common reference
implementations do; torchvision itself is not imported. tests/test_reference_nets.py checks
that the torch oracle, run on the matching spec under specs/, gives the same parameters,
output shape and MACs as these modules.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

# -- shared pieces, after torchvision/ops/misc.py and ops/stochastic_depth.py ------------------


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision.models._utils._make_divisible: round to a multiple of divisor, never more
    than 10% down."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


# -- AlexNet, as torchvision.models.alexnet builds it (the golden spec and the zoo) --


def alexnet(num_classes: int = 1000) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    classifier = nn.Sequential(
        nn.Dropout(p=0.5),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )
    return nn.Sequential(features, nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(), classifier)


class Conv2dNormActivation(nn.Sequential):
    """Conv (no bias when a norm follows), norm, activation; padding keeps the size at
    stride 1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer=nn.BatchNorm2d,
        activation_layer=nn.ReLU,
        bias: bool | None = None,
    ) -> None:
        padding = (kernel_size - 1) // 2
        if bias is None:
            bias = norm_layer is None
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                      groups=groups, bias=bias)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: scale = sigmoid(fc2(relu(fc1(avgpool(x))))),
    returns scale * x."""

    def __init__(self, input_channels: int, squeeze_channels: int,
                 activation=nn.ReLU, scale_activation=nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class StochasticDepth(nn.Module):
    """Drops whole rows of the batch in training; the identity in eval mode."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise


# -- (a) MobileNetV3-Small, stem and first five blocks, after torchvision/models/mobilenetv3.py --


class InvertedResidualConfig:
    def __init__(self, input_channels, kernel, expanded_channels, out_channels, use_se,
                 activation, stride) -> None:
        self.input_channels = input_channels
        self.kernel = kernel
        self.expanded_channels = expanded_channels
        self.out_channels = out_channels
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride


class InvertedResidual(nn.Module):
    """Expand (1×1), depthwise (k×k), squeeze-and-excitation, project (1×1); added to the input
    where stride 1 keeps the shape."""

    def __init__(self, cnf: InvertedResidualConfig, norm_layer, se_layer=None) -> None:
        super().__init__()
        if se_layer is None:
            se_layer = partial(SqueezeExcitation, scale_activation=nn.Hardsigmoid)
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        activation_layer = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, cnf.expanded_channels, 1,
                                               norm_layer=norm_layer,
                                               activation_layer=activation_layer))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.expanded_channels,
                                           cnf.kernel, cnf.stride,
                                           groups=cnf.expanded_channels, norm_layer=norm_layer,
                                           activation_layer=activation_layer))
        if cnf.use_se:
            squeeze_channels = _make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(se_layer(cnf.expanded_channels, squeeze_channels))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.out_channels, 1,
                                           norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3Blocks(nn.Module):
    """MobileNetV3-Small's stem and first five bneck blocks (two of them with SE, two with a
    residual connection), a 1×1 conv to 6× the channels and the MobileNetV3 classifier."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        settings = [
            InvertedResidualConfig(16, 3, 16, 16, True, "RE", 2),
            InvertedResidualConfig(16, 3, 72, 24, False, "RE", 2),
            InvertedResidualConfig(24, 3, 88, 24, False, "RE", 1),
            InvertedResidualConfig(24, 5, 96, 40, True, "HS", 2),
            InvertedResidualConfig(40, 5, 240, 40, True, "HS", 1),
        ]
        layers: list[nn.Module] = [
            Conv2dNormActivation(3, 16, 3, 2, norm_layer=norm_layer,
                                 activation_layer=nn.Hardswish)
        ]
        layers += [InvertedResidual(cnf, norm_layer) for cnf in settings]
        lastconv_output_channels = 6 * settings[-1].out_channels
        layers.append(Conv2dNormActivation(settings[-1].out_channels, lastconv_output_channels,
                                           1, norm_layer=norm_layer,
                                           activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(lastconv_output_channels, 1024),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=0.2, inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


# -- (b) ShuffleNetV2 x1.0, stem and stage 2, after torchvision/models/shufflenetv2.py --------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleUnit(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual. Stride 1: half the channels pass through,
    the other half goes through branch2. Stride 2: both branches see the whole input."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                self.depthwise_conv(inp, inp, kernel_size=3, stride=stride, padding=1),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, kernel_size=1,
                      stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            self.depthwise_conv(branch_features, branch_features, kernel_size=3, stride=stride,
                                padding=1),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, stride=1, padding=0,
                      bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    @staticmethod
    def depthwise_conv(i: int, o: int, kernel_size: int, stride: int = 1, padding: int = 0,
                       bias: bool = False) -> nn.Conv2d:
        return nn.Conv2d(i, o, kernel_size, stride, padding, bias=bias, groups=i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Stage2(nn.Module):
    """ShuffleNetV2 x1.0 up to stage 2 (one stride-2 unit, three stride-1 units), then conv5
    and the classifier as the full network has them."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 24, 3, 2, 1, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stage2 = nn.Sequential(ShuffleUnit(24, 116, 2),
                                    *[ShuffleUnit(116, 116, 1) for _ in range(3)])
        self.conv5 = nn.Sequential(
            nn.Conv2d(116, 1024, 1, 1, 0, bias=False),
            nn.BatchNorm2d(1024),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage2(self.maxpool(self.conv1(x))))
        return self.fc(x.mean([2, 3]))  # globalpool


# -- (c) a small U-Net, after the common PyTorch U-Net implementations ------------------------


class DoubleConv(nn.Module):
    """(conv 3×3 → groupnorm → mish) × 2."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(8, mid_channels),
            nn.Mish(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(8, out_channels),
            nn.Mish(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upscale x1 by 2, join it after the skip x2 on channels, then a DoubleConv. bilinear:
    nn.Upsample (no weights, channels kept); else a ConvTranspose2d halving the channels."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool) -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x2, self.up(x1)], dim=1))


class UNetSmall(nn.Module):
    """Two downs and two ups: 16@64² → 32@32² → 64@16², back up with a transposed conv and
    then a bilinear upsample, skips joined by concatenation."""

    def __init__(self, n_channels: int = 3, n_classes: int = 2) -> None:
        super().__init__()
        self.inc = DoubleConv(n_channels, 16)
        self.down1 = Down(16, 32)
        self.down2 = Down(32, 64)
        self.up1 = Up(64, 32, bilinear=False)  # 64 → 32 channels, then cat with 32
        self.up2 = Up(48, 16, bilinear=True)  # 32 channels upsampled, cat with 16
        self.outc = nn.Conv2d(16, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x = self.up1(x3, x2)
        x = self.up2(x, x1)
        return self.outc(x)


# -- (d) ConvNeXt-T stem, stage 1 and head, after torchvision/models/convnext.py ---------------


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float, stochastic_depth_prob: float,
                 norm_layer=None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            norm_layer(dim),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        # torchvision keeps (dim, 1, 1); shapecheck's LayerScale keeps (dim,) and views it so:
        # the same values, the same count.
        self.layer_scale = nn.Parameter(torch.ones(dim) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.layer_scale.view(-1, 1, 1) * self.block(x)
        result = self.stochastic_depth(result)
        result += x
        return result


class ConvNeXtStage1(nn.Module):
    """ConvNeXt-T's patchify stem (4×4 conv, stride 4, LayerNorm2d), its first stage (three
    CNBlocks at 96 channels, stochastic depth rising 0 → 0.1 as torchvision spreads it) and the
    ConvNeXt head (LayerNorm2d, flatten, linear)."""

    def __init__(self, num_classes: int = 1000, stochastic_depth_prob: float = 0.1,
                 layer_scale: float = 1e-6, dim: int = 96, blocks: int = 3) -> None:
        super().__init__()
        norm_layer = partial(LayerNorm2d, eps=1e-6)
        stem = nn.Sequential(nn.Conv2d(3, dim, kernel_size=4, stride=4, padding=0, bias=True),
                             norm_layer(dim))
        stage = [CNBlock(dim, layer_scale, stochastic_depth_prob * i / (blocks - 1.0))
                 for i in range(blocks)]
        self.features = nn.Sequential(stem, nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(norm_layer(dim), nn.Flatten(1),
                                        nn.Linear(dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


# -- (e) a tiny ×2 super-resolution net: ESPCN's sub-pixel convolution ------------------------


class TinySR(nn.Module):
    """ESPCN (Shi et al., 2016) with the ×2 input folding of Real-ESRGAN: pixel-unshuffle by 2,
    three convs, pixel-shuffle by 4, so the output is twice the input's size. Padding layers
    instead of conv padding, PReLU as in the paper's follow-ups, a local response norm and a
    softplus to keep intensities positive."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.pad1 = nn.ReflectionPad2d(2)
        self.conv1 = nn.Conv2d(channels * 4, 64, kernel_size=5)
        self.act1 = nn.PReLU(64)
        self.pad2 = nn.ZeroPad2d(1)
        self.conv2 = nn.Conv2d(64, 32, kernel_size=3)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
        self.act2 = nn.PReLU()
        self.pad3 = nn.ReplicationPad2d(1)
        self.conv3 = nn.Conv2d(32, channels * 4 * 4, kernel_size=3)
        self.shuffle = nn.PixelShuffle(4)
        self.out = nn.Softplus(beta=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(self.pad1(self.unshuffle(x))))
        x = self.act2(self.norm2(self.conv2(self.pad2(x))))
        return self.out(self.shuffle(self.conv3(self.pad3(x))))
