"""One peer tool's summary of a network, as its user runs it: one process per call.

    python benchmarks/peer_plan.py TOOL NET

TOOL is torchinfo, torchview, fvcore, ptflops or thop; NET one of benchmarks/nets.py's
networks, built on the CPU as usual and given one sample (batch 1) of its input. The last line
printed is ``params P macs M`` with the tool's own totals (``-`` where it has none). Each tool
runs a real forward pass."""

import sys

import torch
from nets import BUILD, INPUTS  # this script's folder is on sys.path

PEERS = ("torchinfo", "torchview", "fvcore", "ptflops", "thop")


def summarise(tool: str, model, shape: tuple[int, ...]) -> tuple[object, object]:
    """The tool's parameter and MAC totals for one input of ``shape``."""
    if tool == "torchinfo":
        from torchinfo import summary

        stats = summary(model, input_size=shape)  # prints its table
        return stats.total_params, stats.total_mult_adds
    if tool == "torchview":
        from torchview import draw_graph

        graph = draw_graph(model, input_size=shape)  # the graph, with each tensor's shape
        print(f"{len(graph.edge_list)} edges")
        return "-", "-"  # it counts neither
    if tool == "fvcore":
        from fvcore.nn import FlopCountAnalysis, parameter_count

        flops = FlopCountAnalysis(model, torch.randn(shape))  # counts one "flop" per MAC
        return parameter_count(model)[""], flops.total()
    if tool == "ptflops":
        from ptflops import get_model_complexity_info

        macs, params = get_model_complexity_info(model, shape[1:], as_strings=False,
                                                 print_per_layer_stat=False)
        return params, macs
    if tool == "thop":
        from thop import profile

        macs, params = profile(model, inputs=(torch.randn(shape),), verbose=False)
        return int(params), int(macs)
    raise SystemExit(f"unknown tool {tool!r}: one of {', '.join(PEERS)}")


def main(argv: list[str]) -> int:
    tool, net = argv
    model = BUILD[net]()
    model.eval()
    with torch.no_grad():
        params, macs = summarise(tool, model, (1, *INPUTS[net][1:]))
    print(f"params {params} macs {macs}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
