"""Measuring a torch module the way shapecheck's plan counts: on the meta device, with
forward hooks. Shared by tests/test_zoo.py and tests/test_seg_zoo.py."""

from __future__ import annotations

import torch
from torch import nn

WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)
# shapecheck's type name for each weighted torch class
KIND = {nn.Conv2d: "conv2d", nn.ConvTranspose2d: "convtranspose2d", nn.Linear: "linear",
        nn.BatchNorm2d: "batchnorm2d", nn.LayerNorm: "layernorm"}
# torchvision's FrozenBatchNorm2d (its buffers hold the terms) has no class in torch.nn: known by
# its name, whether torchvision's, a reference's copy or the module `build` writes
FROZEN = "FrozenBatchNorm2d"


def is_leaf(module: nn.Module) -> bool:
    """Whether a module is one of the weighted leaves compared: conv, linear, norm layers."""
    return isinstance(module, WEIGHTED) or type(module).__name__ == FROZEN


def kind(module: nn.Module) -> str:
    if type(module).__name__ == FROZEN:
        return "frozenbatchnorm2d"
    return KIND.get(type(module)) or KIND[next(c for c in KIND if isinstance(module, c))]


def leaf_macs(module: nn.Module, inputs, output) -> int:
    """Per-sample MACs of one conv2d / convtranspose2d / linear call, as the contract counts:
    conv: output elements × in/groups × kh × kw; transposed conv: input elements ×
    out/groups × kh × kw; linear: in × out × positions."""
    x = inputs[0]
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return x[0].numel() * module.out_channels // module.groups * kh * kw
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output[0].numel() * module.in_channels // module.groups * kh * kw
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    return 0


def measure(model: nn.Module, input_shape: tuple[int, ...], batch: int = 2):
    """(output shape, MACs per sample, [(kind, per-sample output shape) per weighted call]).
    A model that returns a dict of tensors (an FPN's levels) gives {name: shape}."""
    macs = 0
    leaves: list[tuple[str, tuple[int, ...]]] = []

    def hook(module, inputs, output):
        nonlocal macs
        macs += leaf_macs(module, inputs, output)
        leaves.append((kind(module), tuple(output.shape[1:])))

    handles = [m.register_forward_hook(hook) for m in model.modules() if is_leaf(m)]
    try:
        with torch.no_grad():
            out = model(torch.empty(batch, *input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    shape = ({k: tuple(v.shape) for k, v in out.items()} if isinstance(out, dict)
             else tuple(out.shape))
    return shape, macs, leaves


def build_meta(builder, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return builder(**kwargs).eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hyperparameters(model: nn.Module) -> list[tuple]:
    """Every weighted module's constructor arguments (floats to 12 places), sorted: the same
    network has the same multiset whatever order its modules are registered in."""
    out = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            out.append((type(m).__name__, m.in_channels, m.out_channels, m.kernel_size,
                        m.stride, m.padding, m.dilation, m.groups, m.bias is not None,
                        m.padding_mode, getattr(m, "output_padding", None)))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("BatchNorm2d", m.num_features, round(m.eps, 12),
                        round(m.momentum, 12), m.affine, m.track_running_stats))
        elif isinstance(m, nn.Linear):
            out.append(("Linear", m.in_features, m.out_features, m.bias is not None))
        elif type(m).__name__ == FROZEN:
            out.append((FROZEN, m.weight.numel(), round(m.eps, 12)))
        elif isinstance(m, nn.LayerNorm):
            out.append(("LayerNorm", tuple(m.normalized_shape), round(m.eps, 12),
                        m.elementwise_affine, m.bias is not None))
    return sorted(out, key=repr)
