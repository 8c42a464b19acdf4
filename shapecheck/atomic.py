"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every file shapecheck writes (checkpoints, weights, metrics, plots, diagrams,
emitted source) goes through here. The data goes to a temporary file in the
target's own directory (so ``os.replace`` is a rename within one file system),
is flushed and fsynced, and only then replaces the target. On any error, or a
KeyboardInterrupt, the temporary file is removed and the target is untouched;
a process killed outright can at worst leave a ``.<name>.<random>.tmp`` file
behind, never a half-written target.

    atomic_write("out/model.py", source)             # str is UTF-8 encoded
    with atomic_open("out/model.pt") as f:            # binary by default
        torch.save(state_dict, f)
    with atomic_open("out/metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write", "temp_name_prefix"]


def temp_name_prefix(path: str | os.PathLike[str]) -> str:
    """The prefix of the temporary files that writing ``path`` may leave behind."""
    return f".{Path(path).name}."


def _create_temp(path: Path) -> tuple[int, Path]:
    # os.open with O_EXCL and mode 0o666 honours the umask, so the final file
    # gets the same permissions a plain open() would have given it
    # (tempfile.mkstemp would make it 0600).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f"{temp_name_prefix(path)}{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable across a power loss. POSIX only: Windows
    # cannot open a directory this way, and there the rename is what we get.
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the block ends without error.

    ``mode`` is ``"wb"`` (default) or ``"w"`` (text; ``encoding`` defaults to UTF-8).
    The parent directory must exist.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', not {mode!r}")
    target = Path(path)
    fd, tmp = _create_temp(target)
    try:
        if mode == "w":
            f: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str, *, encoding: str = "utf-8"
) -> None:
    """Write ``data`` to ``path`` atomically (a str is encoded with ``encoding``)."""
    if isinstance(data, str):
        data = data.encode(encoding)
    with atomic_open(path, "wb") as f:
        f.write(data)
