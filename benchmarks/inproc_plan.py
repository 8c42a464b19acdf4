"""shapecheck's phases timed inside one process, for the scale benchmark.

    python benchmarks/inproc_plan.py SPEC REPEAT

Prints one JSON object: the seconds of ``import shapecheck`` (with the table module the plan
command uses) and the median over REPEAT runs of each phase of ``shapecheck plan``: parse
(read the file, YAML, pydantic: ``load_spec``), plan (``shapecheck.plan`` of the Spec) and
render (``render_table``, the text the command prints). Each as wall-clock time and as this
process's CPU time (``cpu_`` keys), the steadier figure on a busy machine: the phases run on
one thread.
"""

import json
import statistics
import sys
import time


def main(argv: list[str]) -> int:
    path, repeat = argv[0], int(argv[1])
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    times: dict[str, list[float]] = {}

    def record(phase: str, start: tuple[float, float], end: tuple[float, float]) -> None:
        times.setdefault(phase, []).append(end[0] - start[0])
        times.setdefault(f"cpu_{phase}", []).append(end[1] - start[1])

    t0 = now()
    import shapecheck
    from shapecheck.outputs.table import render_table

    record("import", t0, now())
    layers = 0
    for _ in range(repeat):
        t0 = now()
        spec = shapecheck.load_spec(path)
        t1 = now()
        p = shapecheck.plan(spec)
        t2 = now()
        render_table(p)
        t3 = now()
        if not p.valid:
            raise SystemExit(f"{path}: the spec is not valid")
        record("parse", t0, t1)
        record("plan", t1, t2)
        record("render", t2, t3)
        layers = len(p.layers)
    result = {phase: statistics.median(values) for phase, values in times.items()}
    print(json.dumps({**result, "layers": layers}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
