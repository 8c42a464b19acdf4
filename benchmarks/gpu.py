"""``python -m benchmarks --gpu``: training on one CUDA device, shapecheck against a hand loop.

The lecture net (its input widened to 3×224×224 with ``input_shape``, as ``--input`` does) and
ResNet-18 (specs/resnet18.yaml) on synthetic 3×224×224 data, fp32 against bf16: training
samples/s of ``shapecheck.training.train`` and of a hand-written loop over the same tensors,
batch size, optimizer and autocast, in this process, one after the other. A few minutes at
most on a current GPU; ``--quick`` is a smoke run of a few steps.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (3, 224, 224)
NETS = {"lecture_cnn": "specs/lecture_cnn.yaml", "resnet18": "specs/resnet18.yaml"}


def hand_loop(model, x, y, batch: int, epochs: int, dtype) -> float:
    """Samples/s of the last epoch of a plain loop: SGD, cross_entropy, autocast."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n = x.shape[0]
    rate = 0.0
    for epoch in range(epochs):
        perm = torch.randperm(n, device=x.device)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        rate = n / (time.perf_counter() - t0)
    return rate


def main(markdown: Path | None = None, quick: bool = False) -> int:
    import torch

    import shapecheck
    from shapecheck.core.trainspec import TrainSpec
    from shapecheck.emit.codegen import generate_source
    from shapecheck.training import train

    if not torch.cuda.is_available():
        print("benchmarks --gpu: this PyTorch sees no CUDA device; the GPU figures need one",
              file=sys.stderr)
        return 1
    n, batch, epochs = (256, 64, 1) if quick else (4096, 128, 3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="shapecheck-gpu-") as tmp:
        for name, rel in NETS.items():
            spec = shapecheck.load_spec(ROOT / rel)
            plan = shapecheck.plan(spec, input_shape=SHAPE)
            source = generate_source(plan)
            classes = plan.output_shape[-1]
            for precision in ("32", "bf16"):
                ts = TrainSpec.model_validate({
                    "dataset": {"format": "synthetic", "train_size": n, "test_size": 256},
                    "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9},
                    "epochs": epochs, "batch_size": batch, "device": "cuda",
                    "precision": precision, "loss": "cross_entropy"})
                module = shapecheck.build_module(spec, input_shape=SHAPE)
                result = train(module, ts, name=name, input_shape=SHAPE, num_classes=classes,
                               base_dir=ROOT, out_dir=Path(tmp) / f"{name}-{precision}",
                               model_source=source, log=lambda _: None, progress=False)
                ours = result.history[-1].samples_per_s
                model = shapecheck.build_module(spec, input_shape=SHAPE).cuda()
                x = torch.randn(n, *SHAPE, device="cuda")
                y = torch.randint(0, classes, (n,), device="cuda")
                theirs = hand_loop(model, x, y, batch, epochs,
                                   torch.bfloat16 if precision == "bf16" else None)
                rows.append((name, precision, ours, theirs))
                print(f"{name} {precision}: shapecheck {ours:,.0f} samples/s, hand loop "
                      f"{theirs:,.0f} samples/s, ratio {ours / theirs:.3f}", flush=True)
    device = torch.cuda.get_device_name(0)
    lines = [(f"### 7. One GPU ({device}), synthetic 3×224×224, batch {batch}, SGD momentum "
             f"0.9, {epochs} epoch(s) of {n:,} images; samples/s of the last epoch"), "",
             "| net | precision | shapecheck train() | hand-written loop | ratio |",
             "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {a} | {p} | {o:,.0f} | {h:,.0f} | {o / h:.3f} |" for a, p, o, h in rows]
    lines += ["", (f"- torch {torch.__version__}, CUDA {torch.version.cuda}; median ratio "
              f"{statistics.median(o / h for _, _, o, h in rows):.3f}"),
              "- command: `python -m benchmarks --gpu --markdown gpu.md`"]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if markdown is not None:
        markdown.write_text(text, encoding="utf-8")
    return 0
