"""The segmentation zoo (specs/zoo/fcn_resnet50.yaml, deeplabv3_*.yaml, lraspp_*.yaml,
resnet50_fpn.yaml) against the torch references in tests/seg_reference.py, written after
torchvision's own code.

Each reference's parameter count equals torchvision's published one (built as torchvision
counts it: with the auxiliary classifier). Each spec plans valid, without warnings, at
torchvision's 520×520 and at the odd 513×513, and its outputs, parameters, MACs and weighted
leaves (in order, with their output shapes; the FPN's frozen batchnorms too) equal the
reference's, measured on the meta device with forward hooks. The module `build` emits has the
reference's parameter shapes and module arguments, and, given the reference's weights, computes
its output (every level of the FPN). The U-Net is flat: no block in a block.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import shapecheck

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from seg_reference import PUBLISHED, SEG_ZOO
from zoo_measure import build_meta, count_params, hyperparameters, is_leaf, measure
from zoo_reference import unet

ZOO_DIR = Path(__file__).resolve().parent.parent / "specs" / "zoo"
SIZES = (520, 513)
WEIGHTED = ("conv2d", "convtranspose2d", "linear", "batchnorm2d", "frozenbatchnorm2d",
            "layernorm")
CASES = [(name, hw) for name in SEG_ZOO for hw in SIZES]


@pytest.fixture(scope="module")
def references():
    cache: dict = {}

    def get(name, hw):
        if (name, hw) not in cache:
            model = build_meta(SEG_ZOO[name][0])
            cache[name, hw] = (model, *measure(model, (3, hw, hw)))
        return cache[name, hw]

    return get


def planned_outputs(plan) -> dict | tuple:
    """The plan's output shape, or {name: shape} for a spec that lists its `outputs:`."""
    if plan.outputs:
        return {name: plan.layers[i].output_shape for name, i in plan.outputs}
    return plan.output_shape


@pytest.mark.parametrize("name", list(SEG_ZOO))
def test_reference_has_torchvisions_published_count(name):
    assert count_params(build_meta(SEG_ZOO[name][1])) == PUBLISHED[name]


@pytest.mark.parametrize(("name", "hw"), CASES, ids=[f"{n}-{hw}" for n, hw in CASES])
def test_seg_spec_equals_reference(name, hw, references):
    plan = shapecheck.plan(ZOO_DIR / f"{name}.yaml", batch=2, input_shape=(3, hw, hw))
    assert plan.valid, [str(d) for d in plan.errors]
    assert not plan.warnings, [str(d) for d in plan.warnings]
    model, out, macs, leaves = references(name, hw)

    if name == "resnet50_fpn":  # P2 at 1/4 of the input … P5 at 1/32, pool at 1/64
        sizes = [-(-hw // s) for s in (4, 8, 16, 32, 64)]
        assert out == {k: (2, 256, s, s) for k, s in zip(("p2", "p3", "p4", "p5", "pool"), sizes)}
    else:  # the classes at the input's size
        assert out == (2, 21, hw, hw)
    assert planned_outputs(plan) == out
    assert plan.params == count_params(model)
    assert plan.macs == macs
    ours = [(layer.type, tuple(layer.output_dims[1:])) for layer in plan.walk()
            if layer.type in WEIGHTED]
    assert ours == leaves


@pytest.mark.parametrize("name", list(SEG_ZOO))
def test_seg_build_has_the_reference_modules(name, references):
    """As test_zoo's: the same parameter shapes and the same conv and norm arguments
    (kernel, stride, padding, dilation, groups, bias, eps, momentum …)."""
    spec = shapecheck.load_spec(ZOO_DIR / f"{name}.yaml")
    built = shapecheck.build_module(spec, device="meta")
    model = references(name, SIZES[0])[0]

    def shapes(m):
        return sorted(tuple(p.shape) for p in m.parameters())

    assert shapes(built) == shapes(model)
    assert hyperparameters(built) == hyperparameters(model)


def weighted_calls(model, x) -> list:
    """The weighted modules (conv, norm) in the order the forward pass calls them."""
    calls: list = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(m))
             for m in model.modules() if is_leaf(m)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


# name: (reference builder, input size): a small odd size, and the flat U-Net at a multiple of 16
COMPUTED = {**{name: (builder, 75) for name, (builder, _) in SEG_ZOO.items()}, "unet": (unet, 64)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMPUTED))
def test_seg_build_computes_the_reference(name):
    """The reference, with random weights and batchnorm statistics, and the built module, with
    the same weights copied leaf by leaf in call order, give the same output, in float64, on a
    small input (the same graph: branch order, merge order, upsampling modes)."""
    torch.manual_seed(0)
    builder, hw = COMPUTED[name]
    reference = builder().double().eval()
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d":
            for t in (m.weight, m.bias, m.running_mean):  # so that no batchnorm is the identity
                t.data.uniform_(-0.5, 0.5)
            m.running_var.data.uniform_(0.5, 1.5)
    built = shapecheck.build_module(ZOO_DIR / f"{name}.yaml").double().eval()
    x = torch.randn(1, 3, hw, hw, dtype=torch.float64)
    pairs = list(zip(weighted_calls(built, x), weighted_calls(reference, x), strict=True))
    for ours, theirs in pairs:
        ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        want, got = reference(x), built(x)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k])
    else:
        assert got.shape == (1, 2 if name == "unet" else 21, hw, hw)
        torch.testing.assert_close(got, want)


def block_depth(layers) -> int:
    """How deep blocks sit in blocks: 0 for plain layers, 1 for a block of plain layers."""
    return max((1 + max((block_depth(b) for b in layer.branches), default=0)
                for layer in layers if layer.is_block), default=0)


def test_unet_is_flat():
    plan = shapecheck.plan(ZOO_DIR / "unet.yaml")
    assert plan.valid
    assert block_depth(plan.layers) <= 1
    # the skips are merges of named layers
    assert [layer.type for layer in plan.layers].count("cat") == 4
