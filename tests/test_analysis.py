"""Receptive fields and accepted input sizes (shapecheck/core/analysis.py, shapecheck/core/inputsizes.py),
checked against the published values, against torch's own gradients, and against brute force
with the planner and with torch."""

from __future__ import annotations

import json
import random

import pytest
from conftest import SPECS

import shapecheck
from shapecheck.cli import main
from shapecheck.core.analysis import Field
from shapecheck.core.inputsizes import solve
from shapecheck.core.layers import KINDS, Block, LayerSpec
from shapecheck.core.spec import Spec

torch = pytest.importorskip("torch")


def row(plan, name):
    return next(r for r in plan.walk() if r.name == name)


@pytest.mark.parametrize("spec, layer, rf", [
    ("alexnet", "pool5", 195),  # Araujo et al., Distill 2019, table of published values
    ("vgg16", "pool5", 212),
    ("lecture_cnn", "pool2", 16),
])
def test_published_receptive_fields(spec, layer, rf):
    d = row(shapecheck.plan(SPECS / f"{spec}.yaml"), layer).to_dict()
    assert d["receptive_field"] == [rf, rf]
    assert d["jump"] == [32, 32] if spec != "lecture_cnn" else [4, 4]


def test_explain_shows_the_arithmetic(capsys):
    assert main(["plan", str(SPECS / "lecture_cnn.yaml"), "--explain", "--rf"]) == 0
    out = capsys.readouterr().out
    assert "rf = 6 + (5 − 1) · 2 = 14, jump = 2 · 1 = 2" in out
    header = next(line for line in out.splitlines() if line.startswith("#"))
    assert header.split()[-1] == "RF"


def test_every_kind_states_its_axis_map():
    for name, kind in KINDS.items():
        if issubclass(kind, Block):
            assert kind.spatial_merge in ("equal", "broadcast"), name
        else:
            assert kind.axis_map is not LayerSpec.axis_map, f"{name} has no axis_map"


def test_upsampling_and_global_layers_say_why():
    spec = Spec(input={"shape": [4, 16, 16]}, layers=[
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3},
        {"type": "upsample", "scale_factor": 2},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3},
        {"type": "adaptiveavgpool2d", "output_size": 1}])
    plan = shapecheck.plan(spec)
    kinds = [r.receptive_field[0] for r in plan.layers]
    assert isinstance(kinds[0], Field)
    assert [getattr(f, "kind", None) for f in kinds[1:]] == ["n/a", "n/a", "n/a"]
    assert "upsamples" in plan.layers[1].field_explain[0]
    assert plan.layers[1].to_dict()["receptive_field"] is None


def test_paths_that_disagree_in_alignment_are_named():
    spec = Spec(input={"shape": [2, 32, 32]}, layers=[{"type": "concat", "branches": [
        [{"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1}],
        [{"type": "zeropad2d", "padding": [0, 2, 0, 2]},
         {"type": "conv2d", "out_channels": 2, "kernel_size": 3}]]}])
    block = shapecheck.plan(spec).layers[0]
    assert block.to_dict()["receptive_field"] == [3, 3]
    assert "disagree in alignment (start: branch 0 1, branch 1 1)" not in block.field_explain[0]
    assert "rf = max(branch 0 3, branch 1 3) = 3" in block.field_explain[0]


def test_receptive_field_warning():
    block = (SPECS / "inception_block.yaml").read_text(encoding="utf-8")
    assert "ignore: [SC306]" in block  # the spec accepts it; planned without, it warns
    small = shapecheck.plan(block.replace("ignore: [SC306]", ""))  # 3×3 convs on 28×28
    assert [d.code for d in small.warnings] == ["SC306"]
    assert not shapecheck.plan(SPECS / "lenet5.yaml").warnings  # 14 of 32
    big = shapecheck.plan(Spec(input={"shape": [1, 8, 8]}, layers=[
        {"type": "conv2d", "out_channels": 1, "kernel_size": 3, "padding": 1,
         "dilation": 1} for _ in range(70)]))
    assert [d.code for d in big.warnings] == ["SC306"]
    assert "more than 16 times" in big.warnings[0].message



def test_starts_are_ints_but_for_a_true_half():
    """A window of even span moves the field's centre by half a pixel; two bring it back to a
    whole one, which stays an int (JSON and explain show 1, not 1.0)."""
    even = {"type": "conv2d", "out_channels": 1, "kernel_size": 2}
    plan = shapecheck.plan(Spec(input={"shape": [1, 16, 16]}, layers=[even, even]))
    half, whole = (r.receptive_field[0].start for r in plan.layers)
    assert half == 0.5 and whole == 1 and type(whole) is int
    assert plan.layers[1].to_dict()["start"] == [1, 1]
    assert "start = 0.5 + (0.5 − 0) · 1 = 1" in plan.layers[1].field_explain[0]


def test_lint_and_field_warning_read_blocks_in_walk_order():
    """SC303 lists a layer list's own pairs before those inside its blocks; SC306 names the
    last conv in walk order (blocks before their contents), inside a block where it is last."""
    from shapecheck.core.analysis import field_warning
    from shapecheck.core.lint import lint

    conv = {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1}
    block = {"type": "residual", "body": [conv, "batchnorm2d"]}
    plan = shapecheck.plan(Spec(input={"shape": [2, 64, 64]}, layers=[
        block, conv, "batchnorm2d", block]))
    assert [(w[0], w[1]) for w in lint(plan, has_train=False)] == [
        ((1,), "SC303"), ((0, "body", 0), "SC303"), ((3, "body", 0), "SC303")]
    assert field_warning(plan)[:2] == ((3, "body", 0), "SC306")
    plan = shapecheck.plan(Spec(input={"shape": [2, 64, 64]}, layers=[block, conv, "relu"]))
    assert field_warning(plan)[:2] == ((1,), "SC306")

# --- the receptive field against torch's gradients -----------------------------------------

def _random_layer(rng: random.Random) -> dict:
    kind = rng.choice(["conv", "conv", "dilated", "avgpool", "pad", "unshuffle"])
    if kind == "conv":
        return {"type": "conv2d", "out_channels": 2, "kernel_size": rng.randint(1, 5),
                "stride": rng.randint(1, 2), "padding": rng.randint(0, 2)}
    if kind == "dilated":
        return {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "dilation": rng.randint(2, 3),
                "padding": rng.randint(0, 3)}
    if kind == "avgpool":
        k = rng.randint(2, 3)
        return {"type": "avgpool2d", "kernel_size": k, "stride": rng.randint(1, k),
                "padding": rng.randint(0, k // 2)}
    if kind == "pad":
        return {"type": "zeropad2d", "padding": [rng.randint(0, 2) for _ in range(4)]}
    return {"type": "pixelunshuffle", "downscale_factor": 2}


def _random_stack(rng: random.Random) -> list:
    layers = [_random_layer(rng) for _ in range(rng.randint(2, 5))]
    if rng.random() < 0.5:  # a residual block whose paths see different fields
        layers.insert(rng.randint(0, len(layers)), {"type": "residual", "body": [
            {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
            {"type": "conv2d", "out_channels": 2, "kernel_size": 5, "padding": 2}]})
    return layers


def _gradient_extent(model, size: int, unit: tuple[int, int]) -> tuple[range, range]:
    """The rows and columns of the input whose gradient for the output units at one position
    is non-zero (all channels: after a pixelunshuffle each channel holds one offset)."""
    x = torch.zeros(1, 2, size, size, requires_grad=True)
    y = model(x)
    y[0, :, unit[0], unit[1]].sum().backward()
    nz = x.grad[0].abs().sum(0).nonzero()
    rows, cols = nz[:, 0], nz[:, 1]
    return (range(int(rows.min()), int(rows.max()) + 1),
            range(int(cols.min()), int(cols.max()) + 1))


@pytest.mark.parametrize("seed", range(12))
def test_receptive_field_equals_torch_gradients(seed):
    """Araujo et al.'s method: the field of one output unit is where the gradient of that unit
    with respect to the input is non-zero. Positive weights, no activations: nothing cancels."""
    rng = random.Random(seed)
    layers = _random_stack(rng)

    def fitting(least: int) -> tuple[Spec, object]:
        """The stack on the first square input of at least ``least`` that it accepts (a
        pixelunshuffle wants even sizes)."""
        for size in range(least, least + 64):
            spec = Spec(input={"shape": [2, size, size]}, layers=layers)
            plan = shapecheck.plan(spec)
            if plan.valid:
                return spec, plan
        raise AssertionError(f"no input from {least} fits {layers}")

    _, probe = fitting(128)
    last = probe.layers[-1].to_dict()
    fields = list(zip(last["receptive_field"], last["jump"], last["start"]))  # per axis
    spec, plan = fitting(max(64, *(r + 4 * j + 2 * abs(int(s)) + 8 for r, j, s in fields)))
    size = spec.input.shape[1]
    torch.manual_seed(seed)
    model = shapecheck.build_module(spec).eval()
    for p in model.parameters():
        torch.nn.init.uniform_(p, 0.1, 1.0)
    # per axis, an interior unit: its whole field lies inside the input
    units, expected = [], []
    for (r, j, s), out in zip(fields, plan.output_dims[2:]):
        unit = next(u for u in range(out) if s + u * j - (r - 1) / 2 >= 0)
        low = s + unit * j - (r - 1) / 2
        assert low + r - 1 < size
        units.append(unit)
        expected.append((low, low + r - 1))
    extents = _gradient_extent(model, size, tuple(units))
    assert [(e.start, e.stop - 1) for e in extents] == expected, layers


# --- accepted input sizes ------------------------------------------------------------------

def pinned(path) -> Spec:
    """The spec with every argument the planner inferred at its own input written in, as the
    built module has them (in_features stays 320 when the input grows)."""
    spec = shapecheck.load_spec(path)
    plan = shapecheck.plan(spec)
    assert plan.valid

    def pin(layers, rows):
        out = []
        for layer, r in zip(layers, rows):
            if layer.is_block:
                layer = layer.with_branches([pin(b, rb) for (_, b), rb in
                                             zip(layer.branch_lists(), r.branches)])
            else:
                layer = layer.model_copy(update=r.inferred_args)
            out.append(layer)
        return out

    # a copy keeps what the layers alone do not say: outputs:, and the template uses' names
    # that from: may read (the flat U-Net's `from: [enc4, up4]`)
    return spec.model_copy(update={"layers": pin(spec.layers, plan.layers)})


# every spec of specs/, and the zoo's U-Net and ResNet-50 (the rest of the zoo would take minutes)
SOLVE_SPECS = [*sorted(p.stem for p in SPECS.glob("*.yaml")), "zoo/unet", "zoo/resnet50"]


@pytest.mark.parametrize("name", SOLVE_SPECS)
def test_solve_equals_the_planner_on_every_size(name):
    if name.startswith("zoo/") and not (SPECS / f"{name}.yaml").exists():
        pytest.skip("no zoo here")
    spec = pinned(SPECS / f"{name}.yaml")
    plan = shapecheck.plan(spec)
    h_axis, w_axis = solve(plan)
    c, h, w = plan.input_dims[1:]
    for n in range(1, 301):
        assert h_axis.accepts(n) == shapecheck.plan(spec, input_shape=(c, n, w)).valid, n
    if h != w or name == "lecture_cnn":
        for n in range(1, 301):
            assert w_axis.accepts(n) == shapecheck.plan(spec, input_shape=(c, h, n)).valid, n


def _torch_accepts(model, c: int, h: int, w: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, c, h, w))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("name, sizes", [("lecture_cnn", range(1, 50)),
                                         ("unet", range(1, 70)),
                                         ("tiny_sr", range(1, 40))])
def test_solve_equals_torch(name, sizes):
    plan = shapecheck.plan(SPECS / f"{name}.yaml")
    model = shapecheck.build_module(SPECS / f"{name}.yaml").eval()
    h_axis, _ = solve(plan)
    c, _, w = plan.input_dims[1:]
    for n in sizes:
        assert h_axis.accepts(n) == _torch_accepts(model, c, n, w), n


def test_solve_the_unet_and_a_strided_resnet(capsys):
    assert main(["solve", str(SPECS / "unet.yaml")]) == 0
    out = capsys.readouterr().out
    assert "accepts: every H ≥ 16 with H ≡ 0 (mod 16)" in out
    assert main(["solve", str(SPECS / "resnet18.yaml")]) == 0
    out = capsys.readouterr().out
    assert "every strided layer gives exactly size/stride when H ≡ 0 (mod 32)" in out
    assert main(["solve", str(SPECS / "lecture_cnn.yaml"), "--format", "json",
                 "--upto", "40"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["axes"][0]["accepted"] == [28, 29, 30, 31]
    assert data["axes"][0]["bounded"] is True


def test_solve_random_stacks_against_the_planner():
    rng = random.Random(7)
    for _ in range(15):
        layers = _random_stack(rng)
        layers += [{"type": "maxpool2d", "kernel_size": 2, "ceil_mode": rng.random() < 0.5},
                   {"type": "concat", "branches": [[], [
                       {"type": "avgpool2d", "kernel_size": 2},
                       {"type": "upsample", "scale_factor": 2}]]}]
        spec = Spec(input={"shape": [2, 96, 96]}, layers=layers)
        plan = shapecheck.plan(spec)
        if not plan.valid:
            continue
        h_axis, _ = solve(plan)
        for n in range(1, 120):
            assert h_axis.accepts(n) == shapecheck.plan(spec, input_shape=(2, n, 96)).valid, \
                (n, layers)


@pytest.mark.parametrize("argv", [["solve", "specs/unet.yaml"], ["schema"],
                                  ["plan", "specs/resnet18.yaml", "--rf", "--depth", "1"]])
def test_the_light_commands_never_import_torch_or_graphviz(argv):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys; from shapecheck.cli import main; code = main(sys.argv[1:]); "
            "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'graphviz'))); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "HEAVY []"


def test_the_readme_shows_what_solve_prints(capsys, monkeypatch):
    import re

    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```console\n\$ shapecheck solve specs/unet.yaml \| head -5\n(.*?)```",
                      readme, re.DOTALL)
    assert block
    assert main(["solve", "specs/unet.yaml"]) == 0
    assert "".join(capsys.readouterr().out.splitlines(True)[:5]) == block.group(1)


def test_solve_refuses_what_it_cannot_do_exactly(capsys):
    many = Spec(input={"shape": [1, 64, 64]}, layers=[
        {"type": "conv2d", "out_channels": 1, "kernel_size": 1, "stride": 1000}] * 3)
    with pytest.raises(Exception, match="strides multiply to 1,000,000,000"):
        solve(shapecheck.plan(many))
    third = Spec(input={"shape": [1, 64, 64]}, layers=[
        {"type": "upsample", "scale_factor": 1 / 3}])
    with pytest.raises(Exception, match="not a fraction with a small power-of-two"):
        solve(shapecheck.plan(third))


# A small U-Net: two poolings down, two transposed convs up, the skips as concats. At 30×30
# the inner skip meets 14×14 against 15×15 (15 was floored on the way down).
ODD_UNET = """
input: {shape: [1, 30, 30]}
layers:
  - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
  - type: concat
    branches:
      - []
      - - {type: maxpool2d, kernel_size: 2}
        - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
        - type: concat
          branches:
            - []
            - - {type: maxpool2d, kernel_size: 2}
              - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
              - {type: convtranspose2d, out_channels: 8, kernel_size: 2, stride: 2}
        - {type: convtranspose2d, out_channels: 8, kernel_size: 2, stride: 2}
  - {type: conv2d, out_channels: 2, kernel_size: 1}
"""


def test_a_skip_that_fails_on_a_floored_size_names_the_sizes_that_work():
    p = shapecheck.plan(ODD_UNET)
    (error,) = p.errors
    assert error.code == "SC212"
    assert error.hint == "this network needs H and W ≡ 0 (mod 4): 28 or 32"
    # what the hint says holds: the spec plans at 28 and 32, not at 29 to 31
    for n in range(28, 33):
        planned = shapecheck.plan(ODD_UNET, input_shape=(1, n, n))
        assert planned.valid == (n in (28, 32)), n
    # ceil_mode would not make the skip's sizes agree: the pool's warning says the same
    (warning,) = p.warnings
    assert warning.code == "SC301" and "ceil_mode" not in warning.hint
    assert warning.hint == error.hint


def test_solve_answers_for_a_spec_whose_only_errors_are_its_size(tmp_path, capsys):
    spec = tmp_path / "unet.yaml"
    spec.write_text(ODD_UNET, encoding="utf-8")
    assert main(["solve", str(spec)]) == 1  # the spec as written is invalid
    out = capsys.readouterr().out
    assert "error[SC212]" in out
    assert "input 1×30×30, which fails; solved from 32×32, which plans" in out
    assert "H (with W = 32; the spec has H = 30):" in out
    assert "accepts: every H ≥ 4 with H ≡ 0 (mod 4)" in out
    assert main(["solve", str(spec), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["planned_at"] == [32, 32] and doc["axes"][0]["smallest"] == 4
    # an error a size cannot fix (the channels) is still one to fix first
    spec.write_text(ODD_UNET.replace("out_channels: 2, kernel_size: 1}",
                                     "in_channels: 3, out_channels: 2, kernel_size: 1}"))
    assert main(["solve", str(spec)]) == 1
    assert "not solved: solve needs a spec that plans" in capsys.readouterr().out


def test_the_sizes_hint_of_a_long_network_costs_a_few_plans():
    """The search for a size that works plans the spec again at each size it tries: a long
    network gets few tries, so the hint costs about what its plan does."""
    from shapecheck.core.inputsizes import NEAR_LAYER_PLANS, plan_near

    convs = "".join("  - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n"
                    for _ in range(1000))
    long_unet = ODD_UNET.replace("layers:\n", "layers:\n" + convs, 1)
    p = shapecheck.plan(long_unet)
    assert [d.code for d in p.errors] == ["SC212"]
    tried = []

    def replan(h, w):
        tried.append((h, w))
        return p  # still failing: the search goes on as long as it may

    assert plan_near(p, replan) is None
    rows = sum(1 for _ in p.walk())
    assert 1 <= len(tried) <= NEAR_LAYER_PLANS // rows
    assert len(set(tried)) == len(tried)
