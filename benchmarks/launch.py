"""Run one command and write its wall time, CPU time, peak memory and exit status to a file.

    python -S -I benchmarks/launch.py RESULT_FILE COMMAND [ARG ...]

The benchmark starts every timed command through this small process rather than directly:
on Linux a child's peak resident memory (``ru_maxrss``) starts from the memory of the process
it was forked from, and the benchmark's own process (which may have imported torch) is far
larger than ``shapecheck plan``. Forked from this one, the figure is the command's own (with a
floor of this process's few MiB). Wall time is taken here, around fork and wait, so this
process's own start-up is not counted. RESULT_FILE gets one line:
``wall_s cpu_s maxrss exit_status`` (maxrss as ``getrusage`` gives it).
"""

import os
import sys
import time


def main() -> int:
    result, cmd = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: become the command
        try:
            os.execvp(cmd[0], cmd)
        except OSError as e:
            sys.stderr.write(f"cannot run {cmd[0]}: {e}\n")
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    with open(result, "w", encoding="ascii") as f:
        f.write(f"{wall!r} {usage.ru_utime + usage.ru_stime!r} {usage.ru_maxrss} "
                f"{os.waitstatus_to_exitcode(status)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
