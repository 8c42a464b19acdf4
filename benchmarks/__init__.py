"""Benchmarks of shapecheck against torchinfo, the meta device and hand-written PyTorch.

Run ``python -m benchmarks`` (see benchmarks/run.py). Needs the ``torch`` extra; torchinfo
comes with the ``bench`` extra (``pip install -e '.[dev,bench]'``)."""
