"""Benchmarks of shapecheck against torchinfo, the meta device and hand-written PyTorch.

Run ``python -m benchmarks`` (see benchmarks/run.py). Needs the ``torch`` extra; torchinfo
comes with the ``bench`` extra (``pip install -e '.[dev,bench]'``)."""


def byte_compiled() -> str | None:
    """Clear PYTHONDONTWRITEBYTECODE for this process and the commands it times, which then
    run byte-compiled as a user's install does (with it set, an editable install's modules are
    compiled at every start: 993 M instructions for the lecture plan instead of 728 M).
    Returns the line to print when it was set."""
    import os

    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is None:
        return None
    return ("PYTHONDONTWRITEBYTECODE was set: cleared for the commands timed here, which run "
            "byte-compiled as an installed shapecheck does")
