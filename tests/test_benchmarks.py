"""The benchmark harness (benchmarks/) runs end to end on tiny sizes, so it never rots.

No timing is asserted: only that every section runs, prints its table and writes the Markdown,
that the hand-written networks are the specs' networks, and that the harness measures what it
says (each child's own peak memory; torchinfo's column skipped when torchinfo is missing)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import shapecheck

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run, specgen
from benchmarks.nets import BUILD, INPUTS, SPECS

TITLES = ("1. Plan latency", "2. Scale", "3. shapecheck check", "4. Training the lecture net",
          "5. Image folders", "Targets")


def test_quick_run_prints_every_section_and_writes_markdown(tmp_path):
    pytest.importorskip("torch")
    md = tmp_path / "bench.md"
    # ddp (two launches of torch.distributed.run) is left to tests/test_distributed.py,
    # which runs the same command.
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--markdown", str(md),
                           "--only", "plan,scale,check,train,stream"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for title in (*TITLES, "load average (1, 5, 15 min)", "CPU:", "Python:", "versions:"):
        assert title in out
    assert "identical final weights: yes" in out
    text = md.read_text(encoding="utf-8")
    assert text.startswith("## Benchmark results")
    for title in TITLES:
        assert f"### {title}" in text
    assert "| lecture_cnn |" in text
    if importlib.util.find_spec("torchinfo") is None:
        assert "torchinfo is not installed" in out
    else:
        assert "skipped" not in out


def test_peers_are_compared_and_an_absent_one_is_skipped(monkeypatch, capsys):
    pytest.importorskip("torch")
    from benchmarks import peers

    installed = {tool for tool in peers.PEERS if peers.available(tool)}
    # one tool (if any) as installed, the others as absent: each absent one is named
    kept = set(sorted(installed)[:1])
    monkeypatch.setattr(peers, "available", lambda tool: tool in kept)
    assert run.main(["--quick", "--only", "peers"]) == 0
    out = capsys.readouterr().out
    assert "lecture_cnn  shapecheck plan" in out and "8,490" in out and "467,200" in out
    absent = [tool for tool in peers.PEERS if tool not in kept]
    assert f"not installed, skipped: {', '.join(absent)}" in out
    for tool in kept:
        assert f"lecture_cnn  {tool}" in out


def test_without_torchinfo_the_column_is_skipped(monkeypatch, capsys):
    pytest.importorskip("torch")
    monkeypatch.setattr(run, "torchinfo_available", lambda: False)
    assert run.main(["--quick", "--only", "plan"]) == 0
    captured = capsys.readouterr()
    assert "torchinfo is not installed" in captured.err
    assert "skipped" in captured.out
    assert "torchinfo not installed" in captured.out  # the target row


@pytest.mark.parametrize("net", sorted(SPECS))
def test_hand_written_nets_are_the_specs(net):
    torch = pytest.importorskip("torch")
    plan = shapecheck.plan(ROOT / SPECS[net])
    with torch.device("meta"):
        model = BUILD[net]()
    out = model(torch.empty(INPUTS[net], device="meta"))
    assert sum(p.numel() for p in model.parameters()) == plan.params
    assert tuple(out.shape[1:]) == tuple(plan.output_shape[1:])
    if isinstance(plan.batch, int):
        assert INPUTS[net][0] == plan.batch


def test_generated_specs_are_valid(tmp_path):
    chain = shapecheck.plan(specgen.write_chain(tmp_path / "chain.yaml", 10))
    assert chain.valid and len(chain.layers) == 10
    # every spec under specs/ at each of the three channel scales
    n = 3 * len(list((specgen.ROOT / "specs").glob("*.yaml")))
    for path in specgen.write_variants(tmp_path, n):
        p = shapecheck.plan(path)
        assert p.valid, (path, [str(d) for d in p.errors])


def test_peak_memory_is_the_childs_own():
    """A child forked from a large process would report that process's memory as its own
    peak; the launcher keeps the figure to the command's."""
    ballast = bytearray(300 * 2**20)  # this process: at least 300 MiB resident
    ballast[::4096] = b"x" * len(ballast[::4096])
    done = run.run_child([sys.executable, "-c", "pass"])
    assert done.rc == 0 and done.wall > 0 and done.cpu >= 0
    assert done.rss_mib < 100
    del ballast


def test_a_failing_command_is_reported():
    with pytest.raises(run.BenchError, match="exited 3"):
        run.run_child([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_compare_runs_two_trees_in_the_same_rounds():
    """benchmarks.compare with this tree as both sides: the floor, before and after, each with
    its times and its ratio to the floor."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--rounds", "1", str(ROOT),
                           "plan", "specs/lecture_cnn.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("shapecheck plan specs/lecture_cnn.yaml: medians of 1 rounds")
    assert [line.split()[0] for line in lines[1:]] == ["floor", "before", "after"]
    assert all(line.endswith("× the floor") for line in lines[1:])


def test_floors_splits_start_up_and_compares_with_the_dependencies_alone():
    """benchmarks.floors: the three start-up commands with their ratios, where plan's time goes
    (shapecheck's pydantic models counted), and the chain and many-spec comparisons."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.floors", "--rounds", "1",
                           "--layers", "40", "--specs", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for name in ("floor", "one model", "shapecheck plan"):
        assert re.search(rf"^  {name} +[\d.]+ s +[\d.]+ × the floor$", out, re.MULTILINE), out
    # the lecture net's spec, its five layer kinds and its train section need models
    models = re.search(r"(\d+) pydantic models defined in [\d.]+ ms", out)
    assert models and int(models[1]) >= 10, out
    assert "2. A chain of 40 layers" in out and "3. 3 spec files" in out
    assert re.search(r"shapecheck\.plan \+ table +[\d.]+ ms", out)


def test_benchmarks_time_byte_compiled_code(monkeypatch):
    """With PYTHONDONTWRITEBYTECODE set, an editable install compiles its modules at every
    start; the benchmarks clear it for what they time, and say so."""
    from benchmarks import byte_compiled

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert "PYTHONDONTWRITEBYTECODE was set" in byte_compiled()
    assert "PYTHONDONTWRITEBYTECODE" not in os.environ
    assert byte_compiled() is None
