"""Tests of the torch oracle itself (tests/torch_oracle.py)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch_oracle import run_oracle

SPECS = Path(__file__).resolve().parent.parent / "specs"

LECTURE = {
    "name": "lecture_cnn",
    "input": {"shape": [1, 28, 28], "batch": 64},
    "layers": [
        {"type": "conv2d", "name": "conv1", "out_channels": 10, "kernel_size": 5},
        {"type": "maxpool2d", "kernel_size": 2},
        "relu",
        {"type": "Conv2d", "out_channels": 20, "kernel_size": 5},
        {"type": "maxpool2d", "kernel_size": 2},
        "relu",
        "flatten",
        {"type": "linear", "name": "fc", "out_features": 10},
    ],
}


def spec(layers, shape=(3, 8, 8)):
    return {"input": {"shape": list(shape)}, "layers": layers}


def test_lecture_net_shapes_params_macs():
    r = run_oracle(LECTURE)
    assert r.valid and r.failed_index is None and r.failed_path is None and r.error is None
    assert [layer.output_shape[2:] for layer in r.layers[:5]] == [
        (24, 24),
        (12, 12),
        (12, 12),
        (8, 8),
        (4, 4),
    ]
    assert r.layers[6].output_shape == (2, 320)
    assert r.output_shape == (2, 10)
    assert [layer.params for layer in r.layers] == [260, 0, 0, 5020, 0, 0, 0, 3210]
    assert r.total_params == 8490
    assert sum(p.numel() for p in r.module.parameters()) == 8490
    assert r.layers[0].weight_shape == (10, 1, 5, 5) and r.layers[0].bias_shape == (10,)
    assert r.layers[3].weight_shape == (20, 10, 5, 5)
    assert r.layers[7].weight_shape == (10, 320)
    assert r.layers[1].weight_shape is None and r.layers[1].bias_shape is None
    # 24*24*10 * 1*5*5 + 8*8*20 * 10*5*5 + 320*10
    assert r.layers[0].macs == 144_000
    assert r.total_macs == 144_000 + 320_000 + 3_200
    assert [layer.type for layer in r.layers][:4] == ["conv2d", "maxpool2d", "relu", "conv2d"]
    assert r.layers[0].name == "conv1" and r.layers[1].name is None


def test_lecture_spec_file_matches_the_contract_example():
    on_disk = yaml.safe_load((SPECS / "lecture_cnn.yaml").read_text())
    assert on_disk["layers"] == LECTURE["layers"]
    assert on_disk["input"] == LECTURE["input"]
    assert run_oracle(on_disk, batch=64).output_shape == (64, 10)


def test_batch_and_input_shape_overrides():
    r = run_oracle(LECTURE, batch=5, input_shape=(1, 32, 32))
    assert r.input_shape == (5, 1, 32, 32)
    assert r.layers[4].output_shape == (5, 20, 5, 5)
    assert r.total_params == 20 * 25 * 10 + 10 + 8490 - 3210  # fc now takes 500 features


def test_invalid_net_reports_the_failing_layer():
    bad = copy.deepcopy(LECTURE)
    bad["layers"][3]["kernel_size"] = 13  # 12x12 arrives
    r = run_oracle(bad)
    assert not r.valid
    assert r.failed_index == 3 and r.failed_path == (3,)
    assert "Kernel size can't be greater than actual input size" in r.error
    assert len(r.layers) == 3 and r.output_shape is None
    assert r.total_params == 260


def test_explicit_in_features_mismatch_fails_at_that_layer():
    bad = copy.deepcopy(LECTURE)
    bad["layers"][7]["in_features"] = 300
    r = run_oracle(bad)
    assert (r.valid, r.failed_index) == (False, 7)
    good = copy.deepcopy(LECTURE)
    good["layers"][7]["in_features"] = 320
    good["layers"][0]["in_channels"] = 1
    assert run_oracle(good).total_params == 8490


@pytest.mark.parametrize(
    "layer, msg",
    [
        ({"type": "conv2d", "out_channels": 4, "kernal_size": 3}, "unexpected keyword"),
        ("maxpool", "unknown layer type"),
        ({"type": "maxpool2d", "kernel_size": 2, "padding": 2}, "at most half"),
        (
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": "same"},
            "strided",
        ),
        ({"type": "batchnorm2d", "num_features": 4}, "running_mean"),
        ({"type": "dropout", "p": 1.5}, "probability"),
    ],
)
def test_torch_rejections(layer, msg):
    r = run_oracle(spec(["relu", layer]))
    assert (r.valid, r.failed_index) == (False, 1)
    assert msg in r.error


def test_meta_device_leniency_is_caught_by_the_cpu_rerun():
    # torch 2.13's meta kernels accept these; the CPU kernels raise.
    cases = [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": -1},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "dilation": 0},
        {"type": "conv2d", "out_channels": 0, "kernel_size": 3},
        {"type": "conv2d", "out_channels": 4, "kernel_size": [3, 3, 3]},
        {"type": "softmax", "dim": 5},
    ]
    for layer in cases:
        s = spec([layer])
        assert run_oracle(s, device="meta").valid, layer
        auto = run_oracle(s)
        assert not auto.valid and auto.failed_index == 0, layer
        assert auto.disagreements, layer
        assert not run_oracle(s, device="cpu").valid, layer


def test_ceil_mode_drops_a_last_window_that_starts_in_the_padding():
    # ceil((5 + 2 - 2) / 2) + 1 = 4, but the 4th window would start at 6 >= 5 + 1
    layer = {"type": "maxpool2d", "kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True}
    assert run_oracle(spec([layer], (3, 5, 5))).output_shape == (2, 3, 3, 3)
    layer = {"type": "avgpool2d", "kernel_size": 2, "ceil_mode": True}
    assert run_oracle(spec([layer], (3, 5, 5))).output_shape == (2, 3, 3, 3)


def test_warnings_are_not_failures():
    r = run_oracle(spec(["flatten", "dropout2d", {"type": "softmax"}]))
    assert r.valid
    assert any("dropout2d" in w for w in r.layers[1].warnings)
    assert len(r.layers[1].warnings) == 1


def test_padding_same_and_pairs():
    r = run_oracle(
        spec(
            [
                {"type": "conv2d", "out_channels": 4, "kernel_size": [3, 5], "padding": "same"},
                {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": "valid"},
                {"type": "maxpool2d", "kernel_size": [2, 3], "stride": [2, 1]},
                {"type": "adaptiveavgpool2d", "output_size": [None, 1]},
                {"type": "flatten", "start_dim": 2, "end_dim": -1},
                {"type": "linear", "out_features": 7},
            ],
            (3, 10, 10),
        )
    )
    assert [layer.output_shape for layer in r.layers] == [
        (2, 4, 10, 10),
        (2, 4, 8, 8),
        (2, 4, 4, 6),
        (2, 4, 4, 1),
        (2, 4, 4),
        (2, 4, 7),
    ]
    assert r.layers[0].macs == 4 * 10 * 10 * 3 * 3 * 5
    assert r.layers[5].macs == 4 * 4 * 7  # linear over 4 positions per sample


def test_residual_and_concat_shapes_paths_and_sums():
    conv = {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "bias": False}
    layers = [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 1},
        {"type": "residual", "name": "res", "body": [conv, "batchnorm2d", "relu", conv]},
        {
            "type": "concat",
            "branches": [
                [{"type": "conv2d", "out_channels": 4, "kernel_size": 1}],
                [{"type": "maxpool2d", "kernel_size": 3, "stride": 1, "padding": 1}],
            ],
        },
    ]
    r = run_oracle(spec(layers))
    assert r.valid and r.output_shape == (2, 12, 8, 8)
    res = r.layers[1]
    assert res.type == "residual" and res.name == "res"
    assert [len(b) for b in res.branches] == [4, 0]
    assert res.params == 2 * 8 * 8 * 9 + 16
    assert res.macs == 2 * 64 * 8 * 8 * 9
    assert res.branches[0][3].path == (1, "body", 3)
    cat = r.layers[2]
    assert [b[-1].output_shape[1] for b in cat.branches] == [4, 8]
    assert cat.params == 36 and cat.macs == 64 * 4 * 8
    assert r.total_params == sum(p.numel() for p in r.module.parameters())


def test_block_failure_paths():
    conv4 = {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}
    # the addition itself fails: the residual block is the failing layer
    r = run_oracle(spec(["relu", {"type": "residual", "body": [conv4]}]))
    assert (r.failed_index, r.failed_path) == (1, (1,))
    assert "(2, 4, 8, 8)" in r.error and "(2, 3, 8, 8)" in r.error
    # a layer inside the body fails
    r = run_oracle(
        spec(
            [
                "relu",
                "relu",
                "relu",
                {
                    "type": "residual",
                    "body": ["relu", {"type": "conv2d", "out_channels": 3, "kernel_size": 9}],
                },
            ]
        )
    )
    assert (r.failed_index, r.failed_path) == (3, (3, "body", 1))
    r = run_oracle(
        spec(
            [
                {
                    "type": "residual",
                    "body": [],
                    "shortcut": ["relu", "flatten", "relu", "batchnorm2d"],
                }
            ]
        )
    )
    assert r.failed_path == (0, "shortcut", 3)
    # concat: branch 2, layer 0; then a nested block
    r = run_oracle(
        spec(
            ["relu"] * 5
            + [
                {
                    "type": "concat",
                    "branches": [
                        ["relu"],
                        ["relu"],
                        [{"type": "linear", "in_features": 5, "out_features": 2}],
                    ],
                }
            ]
        )
    )
    assert (r.failed_index, r.failed_path) == (5, (5, 2, 0))
    r = run_oracle(
        spec(
            [
                {
                    "type": "concat",
                    "branches": [["relu"], [{"type": "residual", "body": ["relu", "flatten"]}]],
                }
            ]
        )
    )
    assert r.failed_path == (0, 1, 0)
    # branch outputs disagree on a spatial dim
    r = run_oracle(
        spec(
            [{"type": "concat", "branches": [["relu"], [{"type": "maxpool2d", "kernel_size": 2}]]}]
        )
    )
    assert (r.failed_index, r.failed_path) == (0, (0,))


def test_auto_agrees_with_cpu_on_small_nets():
    for name in ("lecture_cnn", "lenet5", "inception_block"):
        s = yaml.safe_load((SPECS / f"{name}.yaml").read_text())
        auto, cpu = run_oracle(s), run_oracle(s, device="cpu")
        assert auto.valid and cpu.valid and not auto.disagreements
        assert [a.output_shape for a in auto.layers] == [c.output_shape for c in cpu.layers]
        assert (auto.total_params, auto.total_macs) == (cpu.total_params, cpu.total_macs)
        sd_auto = {k: tuple(v.shape) for k, v in auto.module.state_dict().items()}
        sd_cpu = {k: tuple(v.shape) for k, v in cpu.module.state_dict().items()}
        assert sd_auto == sd_cpu
        assert cpu.module(torch.zeros(2, *s["input"]["shape"])).shape == cpu.output_shape


# -- the newer vocabulary ----------------------------------------------------------------------


def only(layer, shape=(4, 8, 8)):
    r = run_oracle(spec([layer], shape))
    return r, (r.layers[0] if r.layers else None)


def test_convtranspose2d_shapes_weights_and_macs():
    # (8 - 1) * 2 - 2 * 1 + (3 - 1) + 1 + 1 = 16; in_channels inferred from dim 1
    layer = {"type": "convtranspose2d", "out_channels": 6, "kernel_size": 3, "stride": 2,
             "padding": 1, "output_padding": 1, "groups": 2}
    r, t = only(layer)
    assert r.valid and t.output_shape == (2, 6, 16, 16)
    assert t.weight_shape == (4, 3, 3, 3) and t.bias_shape == (6,)  # (C_in, C_out/groups, kh, kw)
    assert t.params == 4 * 3 * 9 + 6
    assert t.macs == 4 * 8 * 8 * 3 * 9  # C_in·H_in·W_in · C_out/groups · kh·kw
    r, t = only({"type": "convtranspose2d", "out_channels": 2, "kernel_size": [2, 1],
                 "stride": [2, 1], "dilation": 2, "bias": False})
    assert t.output_shape == (2, 2, 17, 8) and t.bias_shape is None
    assert t.macs == 4 * 8 * 8 * 2 * 2


def test_convtranspose2d_meta_leniency_is_caught_by_the_cpu_rerun():
    cases = [
        {"type": "convtranspose2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3},
        {"type": "convtranspose2d", "out_channels": 4, "kernel_size": 3, "stride": 2,
         "output_padding": 2},
        {"type": "convtranspose2d", "out_channels": 4, "kernel_size": 3, "stride": 0},
        {"type": "convtranspose2d", "out_channels": 4, "kernel_size": 3, "padding": -1},
    ]
    for layer in cases:
        assert run_oracle(spec([layer], (4, 8, 8)), device="meta").valid, layer
        auto = run_oracle(spec([layer], (4, 8, 8)))
        assert (auto.valid, auto.failed_index) == (False, 0) and auto.disagreements, layer
    r, _ = only({"type": "convtranspose2d", "out_channels": 4, "kernel_size": 3, "padding": "same"})
    assert not r.valid and "padding" in r.error  # no 'same' for transposed convs


@pytest.mark.parametrize(
    "layer, out",
    [
        ({"type": "upsample", "scale_factor": 2}, (2, 4, 16, 16)),
        ({"type": "upsample", "scale_factor": [1.5, 0.5], "mode": "bilinear"}, (2, 4, 12, 4)),
        ({"type": "upsample", "size": [3, 11], "mode": "bicubic", "align_corners": True},
         (2, 4, 3, 11)),
        ({"type": "upsample", "size": 5, "mode": "nearest-exact"}, (2, 4, 5, 5)),
        ({"type": "zeropad2d", "padding": [1, 2, 3, 4]}, (2, 4, 15, 11)),
        ({"type": "constantpad2d", "padding": 2, "value": 1.5}, (2, 4, 12, 12)),
        ({"type": "reflectionpad2d", "padding": 7}, (2, 4, 22, 22)),
        ({"type": "replicationpad2d", "padding": [0, 9, 1, 0]}, (2, 4, 9, 17)),
        ({"type": "pixelshuffle", "upscale_factor": 2}, (2, 1, 16, 16)),
        ({"type": "pixelunshuffle", "downscale_factor": 4}, (2, 64, 2, 2)),
        ({"type": "channelshuffle", "groups": 4}, (2, 4, 8, 8)),
        ({"type": "localresponsenorm", "size": 3, "k": 2.0}, (2, 4, 8, 8)),
        ({"type": "permute", "dims": [0, 2, 3, 1]}, (2, 8, 8, 4)),
        ({"type": "stochasticdepth", "p": 0.2, "mode": "batch"}, (2, 4, 8, 8)),
    ],
)
def test_parameter_free_new_layers(layer, out):
    r, t = only(layer)
    assert r.valid, r.error
    assert t.output_shape == out and t.params == 0 and t.macs == 0
    assert t.weight_shape is None and not r.disagreements


@pytest.mark.parametrize(
    "layer, msg",
    [
        ({"type": "upsample", "scale_factor": 2, "align_corners": True}, "align_corners"),
        ({"type": "upsample", "scale_factor": 2, "size": 4}, "only one of size or scale_factor"),
        ({"type": "upsample", "scale_factor": 0.1}, "greater than 0"),
        ({"type": "reflectionpad2d", "padding": 8}, "Padding size should be less than"),
        ({"type": "zeropad2d", "padding": [1, 2, 3]}, "divisible by 2"),
        ({"type": "pixelshuffle", "upscale_factor": 3}, "divisible by the square"),
        ({"type": "pixelunshuffle", "downscale_factor": 3}, "divisible by downscale_factor"),
        ({"type": "channelshuffle", "groups": 3}, "divisible by groups"),
        ({"type": "groupnorm", "num_groups": 3}, "divisible by num_groups"),
        ({"type": "groupnorm", "num_groups": 2, "num_channels": 6}, "number of channels"),
        ({"type": "layernorm", "normalized_shape": 4}, "expected input with shape [*, 4]"),
        ({"type": "prelu", "num_parameters": 3}, "Mismatch of parameter numbers"),
        ({"type": "permute", "dims": [0, 2, 1]}, "does not match the length"),
        ({"type": "permute", "dims": [0, 2, 2, 1]}, "duplicate dims"),
        ({"type": "stochasticdepth", "p": 1.5}, "between 0 and 1"),
        ({"type": "stochasticdepth", "p": 0.1, "mode": "col"}, "'batch' or 'row'"),
        ({"type": "stochasticdepth"}, "missing 1 required positional argument: 'p'"),
        ({"type": "layerscale", "num_channels": 5}, "weight of 5 channels, input with 4"),
        ({"type": "mish", "beta": 2}, "unexpected keyword"),
    ],
)
def test_new_layer_rejections(layer, msg):
    r = run_oracle(spec(["relu", layer], (4, 8, 8)))
    assert (r.valid, r.failed_index) == (False, 1), r.error
    assert msg in r.error


def test_norms_and_learned_activations_infer_their_sizes():
    r = run_oracle(spec([
        {"type": "groupnorm", "num_groups": 2},
        {"type": "prelu", "num_parameters": 4, "init": 0.1},
        {"type": "permute", "dims": [0, 2, 3, 1]},
        {"type": "layernorm"},  # normalized_shape: [4], the last dim (channels-last)
        {"type": "layernorm", "normalized_shape": [8, 4], "bias": False},
        {"type": "layernorm", "normalized_shape": 4, "elementwise_affine": False},
        {"type": "permute", "dims": [0, 3, 1, 2]},
        "layerscale",
        "flatten",
        {"type": "layerscale", "init_value": 0.5},
        "softplus", "mish", "hardswish", "hardsigmoid",
    ], (4, 8, 8)))
    assert r.valid and r.output_shape == (2, 256)
    got = [(t.type, t.weight_shape, t.bias_shape, t.params) for t in r.layers]
    assert got == [
        ("groupnorm", (4,), (4,), 8),
        ("prelu", (4,), None, 4),
        ("permute", None, None, 0),
        ("layernorm", (4,), (4,), 8),
        ("layernorm", (8, 4), None, 32),
        ("layernorm", None, None, 0),
        ("permute", None, None, 0),
        ("layerscale", (4,), None, 4),
        ("flatten", None, None, 0),
        ("layerscale", (256,), None, 256),
        ("softplus", None, None, 0),
        ("mish", None, None, 0),
        ("hardswish", None, None, 0),
        ("hardsigmoid", None, None, 0),
    ]
    assert r.total_params == sum(p.numel() for p in r.module.parameters())
    # layerscale's weight is one value per channel, whatever the rank
    r = run_oracle(spec([{"type": "flatten", "start_dim": 2}, "layerscale"], (4, 8, 8)))
    assert r.layers[1].weight_shape == (4,)
    r = run_oracle(spec([{"type": "flatten", "start_dim": 0}, "layerscale"], (4, 8, 8)))
    assert (r.failed_index, "cannot infer num_channels") == (1, r.error[:25])


def test_residual_broadcasts_as_torch_adds():
    pool = {"type": "adaptiveavgpool2d", "output_size": 1}
    r = run_oracle(spec([{"type": "conv2d", "out_channels": 16, "kernel_size": 1},
                         {"type": "residual", "body": [pool]}]))
    assert r.valid and r.layers[1].output_shape == (2, 16, 8, 8)
    # the body may be the larger one, and 1×8 against 8×1 broadcasts to 8×8
    r = run_oracle(spec([pool, {"type": "residual", "body": [
        {"type": "upsample", "size": [1, 8]}], "shortcut": [{"type": "upsample", "size": [8, 1]}]}]))
    assert r.valid and r.output_shape == (2, 3, 8, 8)
    # 2×2 against 8×8 does not broadcast: the block fails, naming both shapes
    r = run_oracle(spec([{"type": "residual", "body": [{"type": "maxpool2d", "kernel_size": 4}]}]))
    assert (r.valid, r.failed_path) == (False, (0,))
    assert "(2, 3, 2, 2)" in r.error and "(2, 3, 8, 8)" in r.error


SE = [
    {"type": "adaptiveavgpool2d", "output_size": 1},
    {"type": "conv2d", "out_channels": 2, "kernel_size": 1},
    "relu",
    {"type": "conv2d", "out_channels": 8, "kernel_size": 1},
    "hardsigmoid",
]


def test_gate_is_squeeze_and_excitation():
    r = run_oracle(spec([{"type": "conv2d", "out_channels": 8, "kernel_size": 3},
                         {"type": "gate", "name": "se", "body": SE}]))
    assert r.valid and r.output_shape == (2, 8, 6, 6)
    gate = r.layers[1]
    assert gate.type == "gate" and gate.name == "se" and len(gate.branches) == 1
    assert gate.branches[0][3].path == (1, "body", 3)
    assert gate.branches[0][-1].output_shape == (2, 8, 1, 1)
    assert gate.params == (8 * 2 + 2) + (2 * 8 + 8) and gate.macs == 8 * 2 + 2 * 8
    x = torch.zeros(2, 3, 8, 8)
    cpu = run_oracle(spec([{"type": "conv2d", "out_channels": 8, "kernel_size": 3},
                           {"type": "gate", "body": SE}]), device="cpu").module
    assert cpu(x).shape == (2, 8, 6, 6)


def test_gate_failures():
    # the body's 4 channels do not broadcast against the input's 3: the gate itself fails
    r = run_oracle(spec(["relu", {"type": "gate", "body": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 1}]}]))
    assert (r.failed_index, r.failed_path) == (1, (1,))
    assert "(2, 3, 8, 8)" in r.error and "(2, 4, 8, 8)" in r.error
    # a layer in the body fails: its path
    r = run_oracle(spec([{"type": "gate", "body": ["relu", "flatten", "batchnorm2d"]}]))
    assert r.failed_path == (0, "body", 2)
    # the fields of residual and concat are not the gate's
    r = run_oracle(spec([{"type": "gate", "body": SE, "shortcut": []}]))
    assert r.failed_path == (0,) and "unexpected keyword" in r.error


def test_split_hands_each_branch_its_chunk():
    body = [{"type": "conv2d", "out_channels": 5, "kernel_size": 3, "padding": 1}]
    r = run_oracle(spec([{"type": "split", "name": "s", "branches": [[], body]}], (6, 8, 8)))
    assert r.valid and r.output_shape == (2, 8, 8, 8)  # 3 passed through + 5
    block = r.layers[0]
    assert block.type == "split" and [len(b) for b in block.branches] == [0, 1]
    assert block.branches[1][0].input_shape == (2, 3, 8, 8)
    assert block.branches[1][0].weight_shape == (5, 3, 3, 3) and block.params == 140
    # chunks may be uneven: 5 channels in 3 chunks are 2 + 2 + 1
    one_by_one = {"type": "conv2d", "out_channels": 3, "kernel_size": 1}
    r = run_oracle(spec([{"type": "split", "branches": [["relu"], [], [one_by_one]]}], (5, 2, 2)))
    assert [b[0].input_shape for b in r.layers[0].branches if b] == [(2, 2, 2, 2), (2, 1, 2, 2)]
    assert r.output_shape == (2, 2 + 2 + 3, 2, 2)
    # branch outputs that do not concatenate: the block fails after its branches ran
    r = run_oracle(spec([{"type": "split", "branches": [["relu"], ["flatten"]]}], (4, 2, 2)))
    assert (r.valid, r.failed_path) == (False, (0,))
    # N×F splits on the features too
    r = run_oracle(spec(["flatten", {"type": "split", "branches": [[], [
        {"type": "linear", "out_features": 2}]]}], (2, 2, 2)))
    assert r.valid and r.output_shape == (2, 6)
    # the oracle's assembled module computes what the layer-by-layer run said
    r = run_oracle(spec([{"type": "split", "branches": [[], body]}, {"type": "channelshuffle",
                        "groups": 2}], (6, 8, 8)), device="cpu")
    assert r.module(torch.zeros(2, 6, 8, 8)).shape == (2, 8, 8, 8)


def test_split_failures():
    # 4 channels in 3 chunks: torch.chunk gives 2, so the block fails before any branch runs
    r = run_oracle(spec([{"type": "split", "branches": [["relu"], ["relu"], ["relu"]]}],
                        (4, 8, 8)))
    assert (r.valid, r.failed_path) == (False, (0,))
    assert "4 channels give 2 chunks" in r.error
    r = run_oracle(spec([{"type": "flatten", "start_dim": 0}, {"type": "split",
                                                               "branches": [[], []]}]))
    assert r.failed_path == (1,)  # a 1-d tensor has no dim 1
    r = run_oracle(spec([{"type": "split", "branches": []}]))
    assert r.failed_path == (0,)
    # a failing layer inside branch 1
    r = run_oracle(spec([{"type": "split", "branches": [[], [
        {"type": "conv2d", "in_channels": 3, "out_channels": 2, "kernel_size": 1}]]}],
        (4, 8, 8)))
    assert r.failed_path == (0, 1, 0) and "channels" in r.error
