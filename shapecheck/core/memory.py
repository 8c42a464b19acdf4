"""Memory: how much a new allocation can take, and sizes as people read them. The one place
that asks the system, for the checks that refuse what would not fit (the module's parameters,
a dataset, an ONNX export) before anything is allocated."""

from __future__ import annotations

import os


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation, or None where it cannot be told.

    Linux: MemAvailable from /proc/meminfo (free memory plus what the page cache can give
    back); elsewhere the free physical pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            continue
    return None


def shortfall(nbytes: int) -> int | None:
    """The bytes available when ``nbytes`` exceed them; None when they fit, or where the
    available memory cannot be told."""
    available = available_memory()
    return available if available is not None and nbytes > available else None


def ratio(n: int, size: int, places: int) -> str:
    """n / size with `places` decimals; exact ints can exceed a float (1e400 / 2**60 would
    raise OverflowError), and are then written as a power of two."""
    try:
        return f"{n / size:.{places}f}"
    except OverflowError:
        return f"about 2^{(n // size).bit_length() - 1}"


def human_bytes(n: int) -> str:
    for unit, size in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30),
                       ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{ratio(n, size, 1)} {unit}"
    return f"{n} B"
