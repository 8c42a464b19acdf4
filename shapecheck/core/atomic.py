"""Atomic file writes: a reader sees the old file or the new one, never a torn one. And the
rules on the files shapecheck touches: it reads only regular files, within a size limit
(read_bounded), replaces only what it wrote (replace_problem), and lets one process at a time
write a folder (folder_lock).

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

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "FileTooLargeError", "FolderBusyError", "NotRegularFileError", "atomic_open", "atomic_write",
    "check_regular", "folder_lock", "folder_problem", "read_bounded", "replace_problem", "same_file",
    "temp_name_prefix",
]


def temp_name_prefix(path: str | os.PathLike[str]) -> str:
    """The prefix of the temporary files that writing ``path`` may leave behind."""
    return f".{Path(path).name}."


def _create_temp(path: Path) -> tuple[int, Path]:
    # os.open with O_EXCL and mode 0o666 honours the umask, so the final file
    # gets the same permissions a plain open() would have given it
    # (tempfile.mkstemp would make it 0600).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f"{temp_name_prefix(path)}{os.urandom(4).hex()}.tmp")
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


# ---------------------------------------------------------------- reading: regular files only

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class NotRegularFileError(OSError):
    """The path is a folder, a FIFO, a device or a socket: reading it could hang or never end."""


class FileTooLargeError(OSError):
    """The file holds more bytes than the reader accepts."""


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file ``path``; at most ``limit`` of them.

    The file type is checked on the open descriptor before the first read, and the file is
    opened without blocking, so a FIFO or a device (/dev/zero, /dev/stdin) is refused at once
    instead of hanging or filling memory. At most ``limit + 1`` bytes are read, so a file that
    grows while it is read cannot exceed the limit either.
    Raises NotRegularFileError, FileTooLargeError or another OSError."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"it is {_kind(mode)}, not a regular file",
                                      os.fspath(path))
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise FileTooLargeError(errno.EFBIG, f"it is larger than {limit:,} bytes",
                                os.fspath(path))
    return data


def check_regular(path: str | os.PathLike[str]) -> None:
    """Raise NotRegularFileError unless ``path`` is a regular file (for readers that open
    the path themselves, such as numpy and Pillow); FileNotFoundError if it is missing."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(errno.EINVAL, f"it is {_kind(mode)}, not a regular file",
                                  os.fspath(path))


# ---------------------------------------------------------------- replacing: only our files


def folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the folder ``path`` would go in cannot take it, or None."""
    parent = Path(path).parent
    if parent.is_dir():
        return None
    return (f"the folder {str(parent)!r} does not exist (create it first)"
            if not parent.exists() else f"{str(parent)!r} is not a folder")


def replace_problem(
    path: str | os.PathLike[str],
    *,
    force: bool,
    ours: Callable[[Path], bool],
    inputs: Iterable[str | os.PathLike[str]] = (),
    kind: str = "",
) -> str | None:
    """Why shapecheck must not write ``path``, or None: the one rule for every output file.

    A missing file may be written. An input of the command (the spec) and anything that is
    not a regular file or a symbolic link (a folder, a FIFO, /dev/null) are never replaced.
    A symbolic link (dangling or not) and a file that ``ours`` does not recognise as
    shapecheck's are replaced only with ``force``; the link itself is replaced then, never
    its target. ``ours`` is only called on a regular file. ``kind`` names what the command
    writes (" as an ONNX file"), where shapecheck may have written the file as another kind."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot use {path}: {e.strerror or e}"
    if stat.S_ISLNK(st.st_mode):
        if force:
            return None
        return (f"{path} is a symbolic link and was not written by shapecheck; it was left "
                "untouched (--force replaces the link itself, never its target)")
    for source in inputs:
        try:
            if os.path.samefile(path, source):
                return (f"{path} is the command's input ({source}); shapecheck never "
                        "overwrites its input, not even with --force")
        except OSError:
            continue
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a folder; give a file name"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is {_kind(st.st_mode)}, not a file shapecheck wrote; it was left untouched"
    if force or ours(path):
        return None
    return (f"{path} exists and was not written by shapecheck{kind}; it was left untouched "
            "(use --force to overwrite it)")


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two output paths end in one file: the same path once links in it are followed
    (a folder reached through a symbolic link, ``a/net.py`` and ``b/net.py`` with ``b -> a``),
    or two names of one file that exists (hard links). Writing both would lose the first."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


# ---------------------------------------------------------------- one writer per folder

LOCK_FILE = ".shapecheck.lock"


class FolderBusyError(OSError):
    """Another process holds the folder's lock; the message names it."""


@contextmanager
def folder_lock(folder: str | os.PathLike[str], holder: str) -> Iterator[None]:
    """Hold ``folder/.shapecheck.lock`` for the block, or raise FolderBusyError naming the
    process that holds it. The lock is the operating system's (flock), so it ends with its
    process, even one killed outright: no stale lock is ever left to clean up. The file stays
    and names the last holder. Where flock is missing (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(folder) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = os.read(fd, 1000).decode("utf-8", "replace").strip() or "another process"
            raise FolderBusyError(errno.EBUSY, f"in use by {held_by}",
                                  os.fspath(folder)) from None
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode("utf-8", "replace") + b"\n")
        yield
    finally:
        os.close(fd)  # releases the lock
