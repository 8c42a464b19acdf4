"""shapecheck's phases timed inside one process, for the scale benchmark.

    python benchmarks/inproc_plan.py SPEC REPEAT

Prints one JSON object: the seconds of ``import shapecheck`` (with the table module the plan
command uses) and the median over REPEAT runs of each phase of ``shapecheck plan``: parse
(read the file, YAML, pydantic: ``load_spec``), plan (``shapecheck.plan`` of the Spec) and
render (``render_table``, the text the command prints).
"""

import json
import statistics
import sys
import time


def main(argv: list[str]) -> int:
    path, repeat = argv[0], int(argv[1])
    t0 = time.perf_counter()
    import shapecheck
    from shapecheck.table import render_table

    imported = time.perf_counter() - t0
    parse, plan, render = [], [], []
    layers = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        spec = shapecheck.load_spec(path)
        t1 = time.perf_counter()
        p = shapecheck.plan(spec)
        t2 = time.perf_counter()
        render_table(p)
        t3 = time.perf_counter()
        if not p.valid:
            raise SystemExit(f"{path}: the spec is not valid")
        parse.append(t1 - t0)
        plan.append(t2 - t1)
        render.append(t3 - t2)
        layers = len(p.layers)
    print(json.dumps({"import": imported, "parse": statistics.median(parse),
                      "plan": statistics.median(plan), "render": statistics.median(render),
                      "layers": layers}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
