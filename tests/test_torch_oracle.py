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
