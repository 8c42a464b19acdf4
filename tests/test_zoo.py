"""The model zoo (specs/zoo/) against torch references and torchvision's published counts.

For every zoo spec, at every scale it has: shapecheck plans it (valid, no warnings but the
deliberate ones below), and its output shape, parameters and MACs equal those of the torch
reference in tests/zoo_reference.py, measured on the meta device with forward hooks; the
weighted leaves (conv, transposed conv, linear, batchnorm, layernorm) come in the same order
with the same output shapes; the parameter count equals torchvision's published one. The
module `build` emits has the reference's parameter shapes and module arguments. Spec lengths are
held to budgets.
"""

from __future__ import annotations

import sys
from math import prod
from pathlib import Path

import pytest

import shapecheck

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from seg_reference import SEG_ZOO
from zoo_measure import build_meta, count_params, hyperparameters, measure
from zoo_reference import ZOO, StochasticDepth

ROOT = Path(__file__).resolve().parent.parent
ZOO_DIR = ROOT / "specs" / "zoo"

# Lines per spec file (comments included); 150 for any spec not listed.
BUDGETS = {"resnet50": 40, "densenet121": 40, "mobilenet_v2": 45, "efficientnet": 60}


CASES = [(name, scale) for name, (_, scales, _, _) in ZOO.items() for scale in scales]
WEIGHTED = ("conv2d", "convtranspose2d", "linear", "batchnorm2d", "layernorm")


def case_id(case) -> str:
    name, scale = case
    return name if scale is None else f"{name}-{scale}"


def leaf_key(kind: str, shape: tuple) -> tuple:
    # torchvision's LayerNorm2d normalises N×C×H×W in place, where the spec permutes to
    # channels-last around a layernorm: the same values, so compare their number.
    return (kind, prod(shape)) if kind == "layernorm" else (kind, tuple(shape))


@pytest.fixture(scope="module")
def references():
    cache: dict = {}

    def get(name, scale):
        if (name, scale) not in cache:
            builder, scales, _, shape = ZOO[name]
            model = build_meta(builder, **scales[scale])
            sd: list[float] = []
            hooks = [m.register_forward_hook(lambda m, i, o: sd.append(m.p))
                     for m in model.modules() if isinstance(m, StochasticDepth)]
            out, macs, leaves = measure(model, shape)
            for h in hooks:
                h.remove()
            cache[name, scale] = (model, out, macs, leaves, sd)
        return cache[name, scale]

    return get


def test_every_zoo_spec_has_a_reference():
    # the segmentation networks' references and tests: seg_reference.py, test_seg_zoo.py
    assert sorted(p.stem for p in ZOO_DIR.glob("*.yaml")) == sorted([*ZOO, *SEG_ZOO])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_zoo_spec_equals_reference(case, references):
    name, scale = case
    plan = shapecheck.plan(ZOO_DIR / f"{name}.yaml", batch=2, scale=scale)
    assert plan.valid, [str(d) for d in plan.errors]
    # a warning kept on purpose, because torchvision's network has it, is in the spec's ignore:
    assert not plan.warnings, [str(d) for d in plan.warnings]
    model, out, macs, leaves, sd = references(name, scale)

    assert plan.output_shape == out
    assert plan.params == count_params(model)
    assert plan.macs == macs
    published = ZOO[name][2].get(scale)
    if published is not None:  # the reference, and so the spec, is torchvision's network
        assert count_params(model) == published
        assert plan.params == published

    ours = [leaf_key(layer.type, layer.output_dims[1:]) for layer in plan.walk()
            if layer.type in WEIGHTED]
    assert ours == [leaf_key(kind, shape) for kind, shape in leaves]
    # Stochastic depth: the same drop probability in every residual branch that has one.
    assert [layer.spec.p for layer in plan.walk() if layer.type == "stochasticdepth"] == sd


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_build_has_the_reference_modules(name, references):
    """The module `build` emits has the reference's parameters, shape for shape, and its conv,
    linear and norm modules have the same arguments (kernel, stride, padding, groups, bias,
    eps, momentum …). Compared as sorted lists: torchvision registers some modules in another
    order (RegNet's proj before f, ConvNeXt's layer_scale before its block), and keeps
    layer_scale as (C, 1, 1)."""
    scale = next(iter(ZOO[name][1]))
    spec = shapecheck.load_spec(ZOO_DIR / f"{name}.yaml", scale=scale)
    built = shapecheck.build_module(spec, device="meta")
    model = references(name, scale)[0]

    def shapes(m):
        return sorted(tuple(s for s in p.shape if s != 1) or (1,) for p in m.parameters())

    assert shapes(built) == shapes(model)
    assert hyperparameters(built) == hyperparameters(model)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_spec_length(name):
    lines = len((ZOO_DIR / f"{name}.yaml").read_text().splitlines())
    assert lines <= BUDGETS.get(name, 150)


def test_zoo_scales_are_the_listed_ones():
    for name, (_, scales, _, _) in ZOO.items():
        spec_scales = shapecheck.load_spec(ZOO_DIR / f"{name}.yaml").scales
        assert sorted(spec_scales or [None]) == sorted(scales, key=str), name


def test_readme_zoo_table_is_measured():
    from benchmarks.zoo_table import table

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table() in readme
