"""`shapecheck import`: PyTorch modules traced with torch.fx back into specs.

Real files, real torch. The lecture's network as the lecture writes it; every spec of specs/
and specs/zoo/ built and imported back (the same layers with the same shapes, parameters and
MACs); a hand-written ResNet-style module with functional calls checked against the module
itself run on a real input; and every way an import is refused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import shapecheck
from shapecheck.cli import main

torch = pytest.importorskip("torch")

from shapecheck.emit.build import build_module
from shapecheck.emit.codegen import generate
from shapecheck.importer import MARKER, import_file
from shapecheck.importer.structure import identifier

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).resolve().parent / "import_models"
SPECS = sorted([*(ROOT / "specs").glob("*.yaml"), *(ROOT / "specs" / "zoo").glob("*.yaml"),
                *(ROOT / "tests" / "graphs").glob("*.yaml")])


def leaves(plan) -> list[tuple]:
    """The plan's layers in order, blocks opened: (type, output dims, params, MACs). A
    residual's activation is a layer after its branches, as the module computes it."""
    out = []

    def walk(layers):
        for layer in layers:
            if not layer.is_block:
                out.append((layer.type, layer.output_dims, layer.params, layer.macs))
                continue
            for branch in layer.branches:
                walk(branch)
            activation = getattr(layer.spec, "activation", None)
            if activation:
                out.append((activation, layer.output_dims, 0, 0))

    walk(plan.layers)
    return out


# ---------------------------------------------------------------- the lecture's network


def test_the_lecture_network_imports_to_8490_parameters(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = MODELS / "lecture.py"
    assert main(["import", f"{model}:Net", "--input", "1x28x28", "-o", "net.yaml"]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("wrote net.yaml: 8,490 parameters")
    assert "output N×10" in summary
    text = (tmp_path / "net.yaml").read_text(encoding="utf-8")
    assert text.startswith(MARKER)
    plan = shapecheck.plan(tmp_path / "net.yaml")
    assert plan.valid and plan.params == 8490 and plan.output_shape == ("N", 10)
    lecture = shapecheck.plan(ROOT / "specs" / "lecture_cnn.yaml")
    assert leaves(plan) == leaves(lecture)
    # Attribute names name the layers; the pool used twice is two layers.
    assert [layer.name for layer in plan.layers if layer.type in ("conv2d", "maxpool2d",
                                                                   "linear")] == [
        "conv1", "pooling", "conv2", "pooling_1", "fc"]
    # The source lines, as comments; the view is a flatten.
    source = model.read_text(encoding="utf-8").splitlines()
    line = next(i for i, s in enumerate(source, 1) if "x.view(batch_size, -1)" in s)
    assert f"# lecture.py:{line}: x = x.view(batch_size, -1)\n  - flatten\n" in text
    data = yaml.safe_load(text)
    assert data["input"] == {"shape": [1, 28, 28], "batch": "N"}
    # One flow mapping (or a bare type) per line of the layer list.
    layer_lines = [s for s in text.splitlines() if s.startswith("  - ")]
    assert len(layer_lines) == len(data["layers"]) == 8


def test_dash_prints_the_spec_and_the_summary_goes_to_stderr(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["import", f"{MODELS / 'lecture.py'}:Net", "--input", "1x28x28",
                 "-o", "-"]) == 0
    out, err = capsys.readouterr()
    assert shapecheck.plan(out).params == 8490
    assert "8,490 parameters" in err
    assert list(tmp_path.iterdir()) == []


def test_the_default_output_is_the_name_and_only_our_files_are_replaced(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = f"{MODELS / 'lecture.py'}:Net"
    assert main(["import", target, "--input", "1x28x28"]) == 0
    assert (tmp_path / "net.yaml").is_file()
    assert main(["import", target, "--input", "1x28x28"]) == 0  # ours: replaced
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["import", target, "--input", "1x28x28", "-o", str(mine)]) == 2
    assert "was not written by shapecheck" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == "name: mine\n"
    assert main(["import", target, "--input", "1x28x28", "-o", str(mine), "--force"]) == 0
    assert mine.read_text(encoding="utf-8").startswith(MARKER)


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_build_then_import_gives_the_same_plan(spec, tmp_path):
    original = shapecheck.plan(spec)
    assert original.valid
    generated = generate(original)
    module = tmp_path / f"{original.name}_model.py"
    module.write_text(generated.source, encoding="utf-8")
    imported = import_file(f"{module}:{generated.class_name}", original.input_dims[1:])
    assert leaves(imported.plan) == leaves(original)
    assert imported.plan.params == original.params == imported.module_params
    assert imported.plan.macs == original.macs
    assert imported.plan.output_dims == original.output_dims
    # a graph comes back a graph: the same layers read by name, the same outputs
    merges = [(layer.type, len(layer.inputs or ())) for layer in original.layers
              if layer.inputs]
    assert [(layer.type, len(layer.inputs or ())) for layer in imported.plan.layers
            if layer.inputs and layer.type in ("add", "mul", "cat")] == [
        m for m in merges if m[0] in ("add", "mul", "cat")]
    assert len(imported.plan.to_dict().get("outputs", ())) == \
        len(original.to_dict().get("outputs", ()))


def test_a_stage_built_in_a_loop_of_block_classes_imports_as_the_same_blocks(tmp_path):
    # The form build gives templated specs: one class per template, stages built in loops.
    resnet = shapecheck.plan(ROOT / "specs" / "zoo" / "resnet50.yaml")
    source = '''
import torch
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride, project):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4))
        self.shortcut = nn.Sequential(
            nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4)
        ) if project else nn.Identity()
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(self.body(x) + self.shortcut(x))


class Stage(nn.Module):
    def __init__(self, cin, width, blocks, stride):
        super().__init__()
        self.blocks = nn.Sequential(*[
            Bottleneck(cin if i == 0 else width * 4, width, stride if i == 0 else 1, i == 0)
            for i in range(blocks)])

    def forward(self, x):
        return self.blocks(x)


class Resnet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.stages = nn.ModuleList(
            Stage(cin, width, blocks, stride) for cin, width, blocks, stride in
            [(64, 64, 3, 1), (256, 128, 4, 2), (512, 256, 6, 2), (1024, 512, 3, 2)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
'''
    path = tmp_path / "looped.py"
    path.write_text(source, encoding="utf-8")
    imported = import_file(f"{path}:Resnet50", (3, 224, 224))
    assert imported.plan.params == resnet.params == 25_557_032
    assert leaves(imported.plan) == leaves(resnet)
    blocks = [layer for layer in imported.plan.layers if layer.is_block]
    assert len(blocks) == 16 and {layer.type for layer in blocks} == {"residual"}
    assert blocks[0].name == "stages_0_blocks_0"


# ---------------------------------------------------------------- a hand-written network


def test_a_hand_written_resnet_imports_to_the_module_s_parameters_and_output(tmp_path):
    path = MODELS / "resnet_style.py"
    imported = import_file(f"{path}:SmallResNet", (3, 32, 32))
    plan = imported.plan
    # The module itself, built for real and run on a real input.
    sys.path.insert(0, str(MODELS))
    try:
        import resnet_style
    finally:
        sys.path.remove(str(MODELS))
    torch.manual_seed(0)
    model = resnet_style.SmallResNet().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert plan.valid
    assert plan.params == sum(p.numel() for p in model.parameters())
    assert shapecheck.plan(imported.text, batch=2).output_shape == tuple(out.shape)
    kinds = {layer.name: layer for layer in plan.walk()}
    residual = kinds["layer2_0"]
    assert residual.type == "residual" and residual.spec.activation == "relu"
    assert [layer.name for layer in residual.branches[1]] == [
        "layer2_0_downsample_0", "layer2_0_downsample_1"]
    assert kinds["layer1_0"].branches[1] == []  # `out += identity`: the identity shortcut
    assert kinds["se"].type == "gate" and kinds["se"].branches[0][-1].type == "sigmoid"
    assert kinds["mixed"].type == "concat" and len(kinds["mixed"].branches) == 3
    assert kinds["split"].type == "split" and kinds["split"].branches[0] == []
    assert [layer.type for layer in plan.layers[-3:]] == ["adaptiveavgpool2d", "flatten",
                                                           "linear"]


def test_repeated_blocks_become_a_template_that_expands_to_the_same_layers():
    path = MODELS / "resnet_style.py"
    templated = import_file(f"{path}:SmallResNet", (3, 32, 32))
    plain = import_file(f"{path}:SmallResNet", (3, 32, 32), use_templates=False)
    data = yaml.safe_load(templated.text)
    assert list(data["templates"]) == ["basic_block"]
    assert {"use": "basic_block", "name": "layer1", "repeat": 2} in data["layers"]
    assert "templates" not in yaml.safe_load(plain.text)
    assert [(layer.name, layer.type) for layer in templated.plan.walk()] == [
        (layer.name, layer.type) for layer in plain.plan.walk()]
    assert leaves(templated.plan) == leaves(plain.plan)


def test_a_dense_block_joining_all_features_so_far_nests_as_concats():
    # torchvision's DenseNet concatenates the list of every feature before each layer.
    imported = import_file(f"{MODELS / 'resnet_style.py'}:DenseNet", (3, 16, 16))
    sys.path.insert(0, str(MODELS))
    try:
        import resnet_style
    finally:
        sys.path.remove(str(MODELS))
    model = resnet_style.DenseNet()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16))
    plan = imported.plan
    assert plan.params == sum(p.numel() for p in model.parameters())
    assert shapecheck.plan(imported.text, batch=2).output_shape == tuple(out.shape)
    concats = [layer for layer in plan.layers if layer.type == "concat"]
    assert [c.output_dims[1] for c in concats] == [24, 32, 40]
    assert all(c.branches[0] == [] for c in concats)  # each keeps the features so far
    assert [c.name for c in concats[:2]] == ["block_0", "block_1"]


def test_a_function_returning_the_module_imports_as_its_class_does():
    path = MODELS / "resnet_style.py"
    by_class = import_file(f"{path}:SmallResNet", (3, 32, 32))
    by_function = import_file(f"{path}:small_resnet", (3, 32, 32))
    assert leaves(by_function.plan) == leaves(by_class.plan)


# ---------------------------------------------------------------- torchvision's code, exactly


def _model(file: str, name: str):
    """A model of tests/import_models, built for real (CPU), in eval mode."""
    sys.path.insert(0, str(MODELS))
    try:
        module = __import__(file)
    finally:
        sys.path.remove(str(MODELS))
    torch.manual_seed(0)
    return getattr(module, name)().eval()


def _randomise(model) -> None:
    """Every parameter and buffer random (variances positive), so that no value passes a
    test by being 0 or 1 in both modules."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator) + 0.5 \
                    if key.endswith("running_var") else \
                    torch.randn(tensor.shape, generator=generator) * 0.2
                tensor.copy_(values)


def _tensors(model) -> list[tuple[str, object]]:
    """The state_dict's entries, each module's own after its children's: CNBlock's own
    layer_scale follows its block, as the spec's layerscale layer follows the block's layers."""
    state = model.state_dict()

    def visit(module, prefix):
        for name, child in module.named_children():
            yield from visit(child, f"{prefix}{name}.")
        for key in [*module._parameters, *module._buffers]:
            if f"{prefix}{key}" in state:
                yield f"{prefix}{key}", state[f"{prefix}{key}"]

    return list(visit(model, ""))


def _in_spec_order(model, plan, unused: bool = False) -> list[tuple[str, object]]:
    """The module's tensors in the order of the spec's layers that hold them: a layer is named
    after the module holding its weights (`layer1.0.conv1` -> `layer1_0_conv1`), or after the
    parameter itself (a layer scale). A graph's layers come in the forward's order, which need
    not be the order the module registers them in (an FPN's inner and layer blocks)."""
    position = {layer.name: i for i, layer in enumerate(plan.walk())}

    def where(key: str) -> int | None:
        for name in (identifier(key), identifier(key.rpartition(".")[0])):
            if name in position:
                return position[name]
        assert unused, f"{key}: no layer of the spec holds it"
        return None

    held = [(where(key), key, value) for key, value in _tensors(model)]
    return [(key, value) for at, key, value in sorted((h for h in held if h[0] is not None),
                                                      key=lambda h: h[0])]


def _rebuilds_exactly(file: str, name: str, shape: tuple[int, int, int], *,
                      also: tuple[int, int, int] | None = None, unused: bool = False):
    """Import ``file:name``, build the spec, give the built module the original's weights
    (the tensors in the same order, each the same numbers; a layer scale kept as (C, 1, 1) by
    torchvision is (C,) in the spec) and compare the outputs on a real input, bit for bit (and
    at the input size ``also``, where given). ``unused``: the module holds layers its forward
    never calls, which the spec leaves out. Returns the import."""
    original = _model(file, name)
    _randomise(original)
    imported = import_file(f"{MODELS / file}.py:{name}", shape)
    built = build_module(imported.text).eval()
    theirs, ours = _in_spec_order(original, imported.plan, unused), _tensors(built)
    assert len(theirs) == len(ours), ([k for k, _ in theirs], [k for k, _ in ours])
    moved = {}
    for (key, mine), (their_key, value) in zip(ours, theirs):
        assert mine.numel() == value.numel(), (key, mine.shape, their_key, value.shape)
        moved[key] = value.reshape(mine.shape)
    built.load_state_dict(moved)
    for size in (shape, also) if also else (shape,):
        x = torch.randn(2, *size, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            want, got = original(x), built(x)
        if isinstance(want, dict) and len(want) == 1:
            (want,) = want.values()
        if isinstance(want, (dict, tuple)):  # several outputs: the spec's, in the same order
            assert list(got) == yaml.safe_load(imported.text)["outputs"]
            want = list(want.values()) if isinstance(want, dict) else list(want)
            got = list(got.values())
        else:
            want, got = [want], [got]
        for mine, theirs_value in zip(got, want, strict=True):
            assert mine.shape == theirs_value.shape
            torch.testing.assert_close(mine, theirs_value, rtol=0, atol=0)
    assert imported.plan.params == sum(p.numel() for p in built.parameters())
    if not unused:
        assert imported.plan.params == sum(p.numel() for p in original.parameters())
    return imported


def test_shufflenet_v2_imports_its_channel_shuffle_and_rebuilds_to_the_same_outputs():
    imported = _rebuilds_exactly("shufflenet", "shufflenet_v2_x0_5", (3, 32, 32))
    assert imported.plan.params == 1_366_792  # torchvision's shufflenet_v2_x0_5
    kinds = [layer.type for layer in imported.plan.walk()]
    assert kinds.count("channelshuffle") == 16 and "permute" not in kinds
    shuffles = [layer for layer in imported.plan.walk() if layer.type == "channelshuffle"]
    assert {layer.spec.groups for layer in shuffles} == {2}
    text = imported.text
    line = _line_of(MODELS / "shufflenet.py", "x = x.view(batchsize, -1, height, width)")
    assert f"# shufflenet.py:{line}: x = x.view(batchsize, -1, height, width)\n" in text


def test_convnext_imports_its_layer_norm_2d_and_layer_scale_and_rebuilds_to_the_same_outputs():
    imported = _rebuilds_exactly("convnext", "small_convnext", (3, 32, 32))
    data = yaml.safe_load(imported.text)
    # LayerNorm2d: channels last, F.layer_norm with its own weight and bias, channels first,
    # the layernorm named after the module holding them (as the zoo's convnext_tiny writes it)
    assert data["layers"][1:4] == [
        {"type": "permute", "dims": [0, 2, 3, 1]},
        {"type": "layernorm", "name": "features_0_1", "normalized_shape": 32, "eps": 1e-6},
        {"type": "permute", "dims": [0, 3, 1, 2]}]
    block = data["layers"][4]
    assert block["type"] == "residual" and block["name"] == "features_1_0"
    # self.layer_scale * self.block(input): a (dim, 1, 1) parameter times the block
    assert block["body"][-2] == {"type": "layerscale", "name": "features_1_0_layer_scale"}
    assert block["body"][-1]["type"] == "stochasticdepth"


def test_a_resnet_with_frozen_batchnorm_imports_it_frozen_and_rebuilds_to_the_same_outputs():
    imported = _rebuilds_exactly("detection", "frozen_resnet", (3, 32, 32))
    norms = [layer for layer in imported.plan.walk() if layer.type.endswith("batchnorm2d")]
    assert len(norms) == 1 + 4 * 4 and {layer.type for layer in norms} == {"frozenbatchnorm2d"}
    assert all(layer.params == 0 for layer in norms)  # buffers, as torch counts them
    assert imported.plan.params == 8_017_098  # the convolutions and fc only
    assert yaml.safe_load(imported.text)["layers"][1] == {"type": "frozenbatchnorm2d",
                                                          "name": "bn1"}


def test_a_forward_returning_a_dict_of_one_tensor_imports_that_tensor():
    imported = _rebuilds_exactly("detection", "FeatureHead", (3, 32, 32))
    assert "# The forward returns {'out': tensor}; the spec's output is that tensor.\n" \
        in imported.text
    assert imported.plan.output_shape == ("N", 5, 1, 1)


# ---------------------------------------------------------------- graphs


def test_fcn_upsamples_like_its_input_and_is_exact_at_other_sizes():
    imported = _rebuilds_exactly("segmentation", "fcn_resnet", (3, 64, 64), also=(3, 52, 52))
    data = yaml.safe_load(imported.text)
    # input_shape = x.shape[-2:] ... F.interpolate(x, size=input_shape, ...)
    assert data["layers"][-1] == {"type": "upsample", "size": {"like": "input"},
                                  "mode": "bilinear", "align_corners": False}
    # the backbone's blocks stay blocks; nothing else reads by name
    assert [layer["type"] for layer in data["layers"][4:8]] == ["residual"] * 4
    assert not any("from" in layer for layer in data["layers"])


def test_deeplabv3_reads_its_aspp_branches_by_name_and_is_exact_at_other_sizes():
    imported = _rebuilds_exactly("segmentation", "deeplabv3_resnet", (3, 64, 64),
                                 also=(3, 50, 70))
    layers = {layer.get("name", i): layer
              for i, layer in enumerate(yaml.safe_load(imported.text)["layers"])}
    # ASPPPooling: size = x.shape[-2:] of its input, the backbone's output
    assert layers["classifier_0_convs_4"]["size"] == {"like": "backbone_layer4_0"}
    # ASPP: torch.cat of its five branches, each reading the backbone's output
    assert layers["classifier_0"] == {"type": "cat", "name": "classifier_0", "from": [
        "classifier_0_convs_0_2", "classifier_0_convs_1_2", "classifier_0_convs_2_2",
        "classifier_0_convs_3_2", "classifier_0_convs_4"]}
    assert [layers[f"classifier_0_convs_{i}_0"].get("from") for i in range(5)] == [
        None, *["backbone_layer4_0"] * 4]


def test_lraspp_multiplies_two_branches_and_upsamples_like_a_low_level_tap():
    imported = _rebuilds_exactly("segmentation", "lraspp_small", (3, 64, 64), also=(3, 72, 40))
    layers = {layer.get("name", i): layer
              for i, layer in enumerate(yaml.safe_load(imported.text)["layers"])}
    # x = self.cbr(high); s = self.scale(high); x = x * s
    assert layers["classifier_scale_0"]["from"] == "backbone_5_2"
    assert {"type": "mul", "from": ["classifier_cbr_2", "classifier_scale_2"]} in layers.values()
    # F.interpolate(x, size=low.shape[-2:]), then low_classifier(low) + high_classifier(x)
    assert layers["classifier_upsample"]["size"] == {"like": "backbone_3_2"}
    assert layers["classifier_low_classifier"]["from"] == "backbone_3_2"
    assert {"type": "add", "from": ["classifier_low_classifier",
                                    "classifier_high_classifier"]} in layers.values()


def test_a_feature_pyramid_imports_its_levels_as_outputs():
    imported = _rebuilds_exactly("segmentation", "resnet_fpn", (3, 64, 64), also=(3, 96, 80))
    data = yaml.safe_load(imported.text)
    assert data["outputs"] == ["fpn_layer_blocks_0_0", "fpn_layer_blocks_1_0",
                               "fpn_layer_blocks_2_0", "fpn_layer_blocks_3_0",
                               "fpn_extra_blocks"]
    assert ("# The forward returns {'0': fpn_layer_blocks_0_0, '1': fpn_layer_blocks_1_0, "
            "'2': fpn_layer_blocks_2_0, '3': fpn_layer_blocks_3_0, 'pool': "
            "fpn_extra_blocks}: `outputs:` lists them in that order.") in imported.text
    layers = {layer.get("name"): layer for layer in data["layers"]}
    # inner_top_down = F.interpolate(last_inner, size=inner_lateral.shape[-2:])
    assert {"type": "upsample", "from": "fpn_inner_blocks_3_0",
            "size": {"like": "fpn_inner_blocks_2_0"}} in data["layers"]
    assert layers["fpn_add"]["from"] == ["fpn_inner_blocks_2_0", "prev"]
    assert imported.plan.output_shape == ("N", 32, 16, 16)  # the first of the outputs


def test_fcn_with_its_aux_classifier_returns_both_as_outputs():
    imported = _rebuilds_exactly("segmentation", "fcn_resnet_with_aux", (3, 64, 64))
    data = yaml.safe_load(imported.text)
    # result["out"] (the classifier's, upsampled), result["aux"] (layer3's through its head)
    assert data["outputs"] == ["upsample", "upsample_1"]
    assert data["layers"][-1] == {"type": "upsample", "name": "upsample_1",
                                  "size": {"like": "input"}, "mode": "bilinear",
                                  "align_corners": False}
    assert data["layers"][-6]["from"] == "backbone_layer3_0"  # the aux head reads layer3


def test_the_summary_names_every_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["import", f"{MODELS / 'segmentation.py'}:resnet_fpn", "--input", "3x64x64",
                 "-o", "fpn.yaml"]) == 0
    assert capsys.readouterr().out == (
        "wrote fpn.yaml: 354,256 parameters, 9,719,808 MACs per sample, outputs N×32×16×16, "
        "N×32×8×8, N×32×4×4, N×32×2×2, N×32×1×1, 45 layers\n")


def test_one_level_of_a_feature_pyramid_imports_what_its_forward_computes():
    imported = _rebuilds_exactly("segmentation", "FinestLevel", (3, 64, 64), unused=True)
    assert imported.plan.output_shape == ("N", 32, 16, 16)
    assert imported.plan.params == imported.module_params - 3 * (32 * 32 * 9 + 32)


def test_a_unet_imports_flat_with_its_skips_named():
    imported = _rebuilds_exactly("segmentation", "UNet", (3, 32, 32), also=(3, 48, 64))
    data = yaml.safe_load(imported.text)
    # x = torch.cat([x2, x1], dim=1) in each Up: the encoder's output read by name
    cats = [layer for layer in data["layers"] if layer["type"] == "cat"]
    assert [c["from"] for c in cats] == [
        ["down2_maxpool_conv_1_double_conv_5", "up1_up"],
        ["down1_maxpool_conv_1_double_conv_5", "up2_up"],
        ["inc_double_conv_5", "up3_up"]]
    assert not any(layer.is_block for layer in imported.plan.walk())  # no nesting at all


GRAPH_SPEC = """\
name: graphy
input: {shape: [3, 32, 32]}
layers:
  - {type: conv2d, name: stem, out_channels: 8, kernel_size: 3, padding: 1}
  - relu
  - {type: conv2d, name: a, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}
  - {type: conv2d, name: b, from: stem, out_channels: 8, kernel_size: 1}
  - {type: maxpool2d, name: pooled, kernel_size: 2}
  - {type: add, name: sum3, from: [a, pooled, a]}
  - type: residual
    name: res
    body: [{type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}]
  - {type: conv2d, name: gate, out_channels: 8, kernel_size: 1}
  - sigmoid
  - {type: mul, name: gated, from: [res, prev]}
  - {type: upsample, name: up, size: {like: stem}, mode: bilinear, align_corners: false}
  - {type: cat, name: joined, from: [stem, up, b]}
  - {type: conv2d, name: head, out_channels: 4, kernel_size: 1}
outputs: [gated, head]
"""


def test_a_graph_spec_built_then_imported_gives_the_same_graph(tmp_path):
    original = shapecheck.plan(GRAPH_SPEC)
    assert original.valid and not original.warnings
    generated = generate(original)
    module = tmp_path / "graphy_model.py"
    module.write_text(generated.source, encoding="utf-8")
    imported = import_file(f"{module}:{generated.class_name}", (3, 32, 32))
    ours, theirs = imported.plan.to_dict(), original.to_dict()
    assert ours["outputs"] == theirs["outputs"]

    def rows(d):
        return [(e["name"], e["type"], e.get("inputs"), e["output_shape"], e["params"])
                for e in d["layers"]]

    assert rows(ours) == rows(theirs)
    data = yaml.safe_load(imported.text)
    assert data["layers"][5] == {"type": "add", "name": "sum3", "from": ["a", "pooled", "a"]}
    assert data["layers"][10] == {"type": "upsample", "name": "up", "size": {"like": "stem"},
                                  "mode": "bilinear", "align_corners": False}
    assert data["layers"][6]["type"] == "residual"  # a block stays a block


@pytest.mark.parametrize("name, layers, outputs", [
    ("Square", [  # y * y + y
        {"type": "conv2d", "name": "conv", "out_channels": 4, "kernel_size": 1},
        {"type": "mul", "from": ["conv", "conv"]},
        {"type": "add", "from": ["prev", "conv"]}], None),
    ("TupleOut", [  # return a, self.b(a)
        {"type": "conv2d", "name": "a", "out_channels": 4, "kernel_size": 1},
        {"type": "conv2d", "name": "b", "out_channels": 4, "kernel_size": 3, "stride": 2,
         "padding": 1}], ["a", "b"]),
    ("SizePair", [  # F.interpolate(y, size=(x.size(2), x.size(3)))
        {"type": "conv2d", "name": "a", "out_channels": 4, "kernel_size": 3, "stride": 2,
         "padding": 1},
        {"type": "upsample", "size": {"like": "input"}}], None),
])
def test_small_graphs_import_exactly(name, layers, outputs):
    imported = _rebuilds_exactly("graph_edges", name, (3, 8, 8), also=(3, 10, 6))
    data = yaml.safe_load(imported.text)
    assert data["layers"] == layers and data.get("outputs") == outputs


def test_paths_that_cross_import_as_a_graph():
    imported = _rebuilds_exactly("untraceable", "Crossing", (3, 8, 8))
    assert yaml.safe_load(imported.text)["layers"] == [
        {"type": "conv2d", "name": "a", "out_channels": 3, "kernel_size": 1},
        {"type": "conv2d", "name": "b", "from": "input", "out_channels": 3, "kernel_size": 1},
        {"type": "add", "name": "add", "from": ["b", "a"]},  # b = self.b(x) + a
        {"type": "add", "from": ["a", "input"]},  # torch.cat([a + x, b], 1)
        {"type": "cat", "from": ["prev", "add"]}]


# ---------------------------------------------------------------- refusals


def _refused(tmp_path, capsys, monkeypatch, argv) -> str:
    monkeypatch.chdir(tmp_path)
    assert main(["import", *argv, "-o", "out.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written
    return err


def _line_of(path: Path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def test_data_dependent_control_flow_is_refused_with_its_line(tmp_path, capsys, monkeypatch):
    path = MODELS / "untraceable.py"
    err = _refused(tmp_path, capsys, monkeypatch, [f"{path}:DataDependent", "--input", "1x8x8"])
    line = _line_of(path, "if x.sum() > 0:")
    assert f"data-dependent control flow at untraceable.py:{line} (`if x.sum() > 0:`)" in err


def test_an_unsupported_function_is_refused_by_name_and_line(tmp_path, capsys, monkeypatch):
    path = MODELS / "untraceable.py"
    err = _refused(tmp_path, capsys, monkeypatch, [f"{path}:Spectrum", "--input", "1x8x8"])
    line = _line_of(path, "torch.fft.fft2")
    assert f"torch.fft.fft2 at untraceable.py:{line}" in err
    assert "has no layer type" in err


def test_a_custom_autograd_op_is_refused_at_its_line(tmp_path, capsys, monkeypatch):
    path = MODELS / "untraceable.py"
    err = _refused(tmp_path, capsys, monkeypatch, [f"{path}:CustomOp", "--input", "1x8x8"])
    assert f"untraceable.py:{_line_of(path, 'return x * 2')}" in err


@pytest.mark.parametrize("name, line, message", [
    ("ReadsParameter", "return x * self.scale", ("self.scale at untraceable.py:{line}"
     " (`return x * self.scale`) uses a tensor that does not come from the forward's input")),
    ("TwoOutputs", None, ("the forward returns its input: a spec's outputs are tensors its "
                          "layers make")),
    ("PiecesApart", "a, b = x.chunk(2, dim=1)", ("the pieces of .chunk() at untraceable.py:"
     "{line} (`a, b = x.chunk(2, dim=1)`) meet at `+`")),
    ("SameTwice", None, ("the forward returns one tensor twice: a spec's outputs are "
                         "distinct layers")),
    ("BufferNorm", "return F.layer_norm", ("F.layer_norm at untraceable.py:{line} (`return "
     "F.layer_norm(x.permute(0, 2, 3, 1), (3,), self.gain).permute(0, 3, 1, 2)`): its weight is "
     "self.gain, which is no parameter (nn.Parameter) of the module: the layer the spec makes "
     "holds its own weight")),
])
def test_a_forward_with_no_spec_structure_is_refused(tmp_path, capsys, monkeypatch, name, line,
                                                    message):
    path = MODELS / "untraceable.py"
    err = _refused(tmp_path, capsys, monkeypatch, [f"{path}:{name}", "--input", "3x8x8"])
    assert message.format(line=line and _line_of(path, line)) in err


def test_a_view_transpose_view_that_is_no_channel_shuffle_is_refused(tmp_path, capsys,
                                                                     monkeypatch):
    path = MODELS / "shufflenet.py"
    err = _refused(tmp_path, capsys, monkeypatch, [f"{path}:ShuffleBy", "--input", "3x8x8"])
    line = _line_of(path, "x = self.conv(x).view(n, 2, 2, h, w)")
    assert (f".view() at shufflenet.py:{line} (`x = self.conv(x).view(n, 2, 2, h, w)`): a view "
            "that splits the 4 channels into 2 groups is a channel shuffle only when a "
            "transpose(1, 2) and a view back to N×C×H×W follow it") in err


def test_a_frozen_batchnorm_with_parameters_is_not_taken_as_frozen(tmp_path, capsys,
                                                                     monkeypatch):
    # Named as torchvision's class, with its eps and statistics, but learnt weight and bias:
    # traced through like any module (and refused at its arithmetic), never a 0-parameter norm.
    path = MODELS / "untraceable.py"
    err = _refused(tmp_path, capsys, monkeypatch, [f"{path}:FrozenBatchNorm2d", "--input",
                                                   "3x8x8"])
    line = _line_of(path, "scale = self.weight.reshape(1, -1, 1, 1)")
    assert f".reshape(1, -1, 1, 1) at untraceable.py:{line}" in err
    assert "frozenbatchnorm2d" not in err


def test_a_computed_size_that_is_no_tensors_is_refused(tmp_path, capsys, monkeypatch):
    path = MODELS / "untraceable.py"
    err = _refused(tmp_path, capsys, monkeypatch, [f"{path}:ComputedSize", "--input", "3x8x8"])
    line = _line_of(path, "size=(h * 2, w)")
    assert (f"F.interpolate at untraceable.py:{line}") in err
    assert ("an argument is computed in the forward (a spec holds numbers); a size may be "
            "another tensor's H×W, size=other.shape[-2:]") in err


def test_a_missing_file_is_refused(tmp_path, capsys, monkeypatch):
    err = _refused(tmp_path, capsys, monkeypatch, ["nowhere.py:Net", "--input", "1x8x8"])
    assert "nowhere.py: no such file" in err


@pytest.mark.parametrize("target, message", [
    ("{path}", "expected FILE:NAME such as model.py:Net"),
    ("{path}:Nett", "has no Nett; did you mean Net?"),
    ("{path}:1x", "'1x' is not a Python name"),
])
def test_a_bad_target_is_refused(tmp_path, capsys, monkeypatch, target, message):
    path = MODELS / "lecture.py"
    err = _refused(tmp_path, capsys, monkeypatch, [target.format(path=path), "--input",
                                                   "1x28x28"])
    assert message in err


def test_a_class_that_needs_arguments_is_refused(tmp_path, capsys, monkeypatch):
    path = MODELS / "untraceable.py"
    err = _refused(tmp_path, capsys, monkeypatch, [f"{path}:NeedsWidth", "--input", "1x8x8"])
    assert "NeedsWidth needs arguments (width)" in err


@pytest.mark.parametrize("shape", ["1x28", "0x28x28", "axbxc"])
def test_a_bad_input_shape_is_refused(tmp_path, capsys, monkeypatch, shape):
    with pytest.raises(SystemExit) as e:
        _refused(tmp_path, capsys, monkeypatch, [f"{MODELS / 'lecture.py'}:Net", "--input",
                                                 shape])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --input: expected C×H×W" in err
    assert list(tmp_path.iterdir()) == []


def test_an_input_the_module_cannot_take_is_refused_with_the_failing_line(tmp_path, capsys,
                                                                          monkeypatch):
    path = MODELS / "lecture.py"
    err = _refused(tmp_path, capsys, monkeypatch, [f"{path}:Net", "--input", "1x32x32"])
    assert f"the module fails on an input of 2×1×32×32 at lecture.py:{_line_of(path, 'self.fc(x)')}" in err
    # one line, naming the layer and what arrived (torch.fx's graph dump is left out)
    assert err.count("\n") == 1 and "While executing" not in err
    assert "in fc (Linear: in_features 320, but 500 arrive)" in err


def test_a_file_with_a_syntax_error_is_refused_at_its_line(tmp_path, capsys, monkeypatch):
    broken = tmp_path / "syntax.py"
    broken.write_text("import torch\nclass Net(torch.nn.Module)\n    pass\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["import", f"{broken}:Net", "--input", "1x8x8", "-o", "out.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("failed at syntax.py:2 (`class Net(torch.nn.Module)`): SyntaxError: "
                        "expected ':'\n")


def test_a_file_that_fails_when_run_is_refused_with_its_line(tmp_path, capsys, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    broken = models / "broken.py"
    broken.write_text("import torch\nraise ValueError('no weights here')\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["import", f"{broken}:Net", "--input", "1x8x8", "-o", "out.yaml"]) == 2
    err = capsys.readouterr().err
    assert "broken.py:2 (`raise ValueError('no weights here')`): ValueError: no weights here" \
        in err
    assert not (tmp_path / "out.yaml").exists()


def test_plan_and_check_stay_torch_free_while_import_exists():
    code = ("import sys\nfrom shapecheck.cli import build_parser, main\nbuild_parser()\n"
            f"main(['check', {str(ROOT / 'specs' / 'lecture_cnn.yaml')!r}])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
