"""What a PyTorch user runs to get a network's shapes: one process per call, timed end to end.

    python benchmarks/torch_plan.py torchinfo NET   # torchinfo.summary of the module on the CPU
    python benchmarks/torch_plan.py meta NET        # a forward pass on the meta device

NET is one of benchmarks/nets.py's networks. ``torchinfo`` builds the module as usual (real
weights, initialised) and calls ``summary(model, input_size=...)``, which runs a real forward
pass and prints its table. ``meta`` builds the module on the meta device (no memory, no
initialisation), runs a forward pass on a meta tensor and prints the output shape and the
parameter count.
"""

import sys

import torch
from nets import BUILD, INPUTS  # this script's folder is on sys.path


def main(argv: list[str]) -> int:
    mode, net = argv
    if mode == "torchinfo":
        from torchinfo import summary

        summary(BUILD[net](), input_size=INPUTS[net])
    elif mode == "meta":
        with torch.device("meta"):
            model = BUILD[net]()
        out = model(torch.empty(INPUTS[net], device="meta"))
        params = sum(p.numel() for p in model.parameters())
        print(f"output {tuple(out.shape)} params {params}")
    else:
        raise SystemExit(f"unknown mode {mode!r}: torchinfo or meta")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
