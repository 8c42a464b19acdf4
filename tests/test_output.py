"""Where the commands print (stdout: output and diagnostics; stderr: the run's own failures),
colour (--color, NO_COLOR, FORCE_COLOR, TERM) and -q, in-process and through the console
script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shapecheck.cli import main

ROOT = Path(__file__).resolve().parent.parent
LECTURE = str(ROOT / "specs" / "lecture_cnn.yaml")
ESC = "\x1b"
RED = "\x1b[1;31m"

INVALID = ("input: {shape: [1, 28, 28]}\nlayers:\n"
           "  - {type: linear, name: fc, in_features: 320, out_features: 10}\n")
# A pool of 2 on 25×25 leaves a row unused: a warning (SC301), valid.
WARNS = "input: {shape: [1, 25, 25]}\nlayers:\n  - {type: maxpool2d, kernel_size: 2}\n"
# A name with an escape sequence in it: refused (SC105), and shown escaped.
HOSTILE = ("input: {shape: [1, 8, 8]}\nlayers:\n"
           "  - {type: relu, name: \"x\\e[2Jy\"}\n")


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def no_colour_env(monkeypatch):
    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


# ---------------------------------------------------------------- streams


def test_every_command_prints_its_diagnostics_on_stdout(capsys, tmp_path):
    spec = write(tmp_path, "net.yaml", INVALID)
    for argv in (["plan", spec], ["check", spec], ["solve", spec], ["expand", spec + "x"],
                 ["render", spec, "-o", str(tmp_path / "n.dot")]):
        code, out, err = run(capsys, *argv)
        assert code in (1, 2) and "error[SC" in out and "error[SC" not in err, argv


def test_plan_json_is_one_document_with_every_file_in_it(capsys, tmp_path):
    warns = write(tmp_path, "odd.yaml", WARNS)
    missing = str(tmp_path / "missing.yaml")
    code, out, err = run(capsys, "plan", warns, missing, "--format", "json")
    data = json.loads(out)  # nothing but the JSON
    assert code == 2 and err == ""
    assert [d["file"] for d in data] == [warns, missing]
    assert data[0]["valid"] and data[0]["diagnostics"][0]["code"] == "SC301"
    assert data[1]["valid"] is False and data[1]["layers"] == []
    assert data[1]["diagnostics"][0]["code"] == "SC001"
    code, out, _ = run(capsys, "plan", missing, "--format", "json")
    assert code == 2 and json.loads(out)["diagnostics"][0]["code"] == "SC001"


def test_solve_json_stays_json_when_a_spec_cannot_be_solved(capsys, tmp_path):
    bad = write(tmp_path, "net.yaml", INVALID)
    code, out, _ = run(capsys, "solve", LECTURE, bad, str(tmp_path / "none.yaml"),
                       "--format", "json")
    first, second, third = json.loads(out)
    assert code == 2 and first["axes"] and second["axes"] is None and third["axes"] is None
    assert second["reason"] and second["diagnostics"][0]["code"] == "SC204"
    assert third["diagnostics"][0]["code"] == "SC001"


def test_build_to_stdout_keeps_its_diagnostics_on_stderr(capsys, tmp_path):
    pytest.importorskip("torch")
    spec = write(tmp_path, "odd.yaml", WARNS.replace(
        "layers:\n", "layers:\n  - {type: conv2d, out_channels: 2, kernel_size: 1}\n") +
        "  - flatten\n  - {type: linear, out_features: 3}\n")
    code, out, err = run(capsys, "build", spec, "-o", "-")
    assert code == 0 and "warning[SC301]" in err and "warning" not in out
    compile(out, "model.py", "exec")  # stdout is the module's source alone


def test_usage_errors_stay_on_stderr(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", LECTURE, "--input", "3x"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "" and "C×H×W" in err


# ---------------------------------------------------------------- colour


def test_color_always_colours_the_severity_location_and_hint(capsys, tmp_path):
    spec = write(tmp_path, "net.yaml", INVALID)
    code, out, _ = run(capsys, "--color", "always", "plan", spec, "-q")
    assert code == 1
    first, hint = out.splitlines()
    assert first.startswith(f"\x1b[1m{spec}:3:5\x1b[0m: {RED}error[SC204]\x1b[0m: ")
    assert hint.startswith("  \x1b[1;36mhint:\x1b[0m add flatten")
    _, out, _ = run(capsys, "check", spec, "--colour", "always")  # after the command too
    assert RED in out and "\x1b[1;35m" not in out
    _, out, _ = run(capsys, "check", write(tmp_path, "odd.yaml", WARNS), "--color=always")
    assert "\x1b[1;35mwarning[SC301]\x1b[0m" in out


def test_colour_never_reaches_a_pipe_nor_with_no_color(capsys, tmp_path, monkeypatch):
    spec = write(tmp_path, "net.yaml", INVALID)
    assert ESC not in run(capsys, "plan", spec)[1]  # auto: capsys is not a terminal
    assert ESC not in run(capsys, "check", spec, "--color", "never")[1]
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert RED in run(capsys, "check", spec)[1]
    monkeypatch.setenv("NO_COLOR", "1")
    assert ESC not in run(capsys, "check", spec)[1]
    assert RED in run(capsys, "check", spec, "--color", "always")[1]  # the flag wins
    monkeypatch.setenv("NO_COLOR", "")  # empty: as if unset
    assert RED in run(capsys, "check", spec)[1]
    assert ESC not in run(capsys, "check", spec, "--format", "github", "--color", "always")[1]


def test_auto_colours_a_terminal_unless_term_is_dumb(tmp_path, monkeypatch):
    from shapecheck.outputs.report import OUTPUT, colored

    class Terminal:
        def isatty(self) -> bool:
            return True

    assert OUTPUT.color == "auto" and colored(Terminal())
    monkeypatch.setenv("TERM", "dumb")
    assert not colored(Terminal())
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "yes")
    assert not colored(Terminal())


def test_colour_keeps_the_users_text_escaped(capsys, tmp_path):
    spec = write(tmp_path, "bad\x1b[31mname.yaml", HOSTILE)
    code, out, err = run(capsys, "--color", "always", "check", spec)
    assert code == 1 and err == ""
    assert "\\x1b[31m" in out and "\\x1b[2J" in out  # the file name and the spec's text
    codes = [part.split("m", 1)[0] for part in out.split(ESC)[1:]]
    assert set(codes) <= {"[0", "[1", "[1;31", "[1;35", "[1;36"}, codes


def test_a_bad_color_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", LECTURE, "--color", "sometimes"])
    assert e.value.code == 2 and "--color" in capsys.readouterr().err


# ---------------------------------------------------------------- -q


def test_quiet_prints_only_errors(capsys, tmp_path):
    warns = write(tmp_path, "odd.yaml", WARNS)
    invalid = write(tmp_path, "net.yaml", INVALID)
    assert run(capsys, "plan", LECTURE, "-q") == (0, "", "")
    assert run(capsys, "-q", "plan", warns) == (0, "", "")
    assert run(capsys, "plan", warns, "--format", "json", "--quiet") == (0, "", "")
    code, out, _ = run(capsys, "plan", warns, "-q", "--strict")  # a warning that fails
    assert code == 1 and out.startswith(f"{warns}:3:5: warning[SC301]")
    code, out, _ = run(capsys, "plan", invalid, warns, "-q")
    assert code == 1 and out.count("error[") == 1 and "warning" not in out and "fc" in out
    assert run(capsys, "check", LECTURE, warns, "-q") == (0, "", "")
    code, out, _ = run(capsys, "check", invalid, warns, "-q")
    assert code == 1 and "error[SC204]" in out and "checked" not in out


def test_quiet_render_writes_without_a_word(capsys, tmp_path):
    pytest.importorskip("graphviz")
    out = tmp_path / "n.dot"
    assert run(capsys, "render", write(tmp_path, "odd.yaml", WARNS), "-o", str(out), "-q") \
        == (0, "", "")
    assert out.exists()


def test_quiet_keeps_what_a_command_exists_to_print(capsys):
    code, out, _ = run(capsys, "expand", LECTURE, "-q")
    assert code == 0 and out.startswith("# lecture_cnn.yaml expanded")
    code, out, _ = run(capsys, "solve", LECTURE, "-q")
    assert code == 0 and "smallest" in out


# ---------------------------------------------------------------- the console script


def _script(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return subprocess.run([sys.executable, "-m", "shapecheck", *argv], capture_output=True,
                          text=True, cwd=ROOT, env={**environ, **(env or {})}, timeout=120,
                          check=False)


def test_the_command_flushes_everything_before_its_quick_exit(tmp_path):
    done = _script("plan", LECTURE, "--format", "json")
    assert done.returncode == 0 and json.loads(done.stdout)["totals"]["params"] == 8490
    invalid = write(tmp_path, "net.yaml", INVALID)
    done = _script("check", invalid, LECTURE, env={"FORCE_COLOR": "1"})
    assert done.returncode == 1 and RED in done.stdout
    assert done.stdout.endswith("2 specs checked, 1 invalid, 0 warnings\n")
    done = _script("plan", LECTURE, env={"NO_COLOR": "1", "FORCE_COLOR": "1"})
    assert done.returncode == 0 and ESC not in done.stdout and done.stderr == ""


def test_plan_and_check_import_only_what_they_need():
    code = ("import sys\nfrom shapecheck.cli import main\n"
            f"main(['plan', {LECTURE!r}, '-q'])\nmain(['check', {LECTURE!r}, '-q'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('shapecheck.commands.')))\n"
            "print('shapecheck.core.layers.norm' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=True)
    # only the command's module, and only the layer families the spec uses (no norm here)
    assert done.stdout == "['shapecheck.commands.check', 'shapecheck.commands.plan']\nFalse\n"
    for command in ("plan", "check"):  # the command: no torch, no search for pydantic plugins
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "shapecheck", command,
                               LECTURE, "-q"], capture_output=True, text=True, cwd=ROOT,
                              timeout=120, check=True)
        loaded = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
        assert "shapecheck.core.planner" in loaded
        assert "torch" not in loaded and "importlib.metadata" not in loaded


def test_a_closed_pipe_ends_the_command_quietly():
    # `shapecheck plan ... | head -1`: the reader goes away before the output is written
    done = subprocess.Popen([sys.executable, "-m", "shapecheck", "plan",
                             str(ROOT / "specs" / "resnet18.yaml"), "--format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    done.stdout.read(1)
    done.stdout.close()
    err = done.stderr.read()
    assert done.wait(timeout=120) == 0 and err == b""


def test_mistakes_on_the_command_line_get_a_suggestion(capsys):
    from shapecheck.cli import main

    with pytest.raises(SystemExit) as e:
        main(["plna", "specs/lecture_cnn.yaml"])
    assert e.value.code == 2
    assert "unknown command 'plna'; did you mean plan?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "specs/lecture_cnn.yaml", "--formt", "json"])
    err = capsys.readouterr().err
    assert err.startswith("usage: shapecheck plan")
    assert "unrecognized arguments: --formt json; did you mean --format?" in err


def test_a_bare_shapecheck_lists_the_commands(capsys):
    from shapecheck.cli import main

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert all(f"\n    {command} " in err for command in ("plan", "check", "render", "build"))


def test_quiet_help_mentions_strict_only_where_the_command_has_it(capsys):
    from shapecheck.cli import build_parser

    commands = build_parser().parse_args(["schema"]).commands
    for name, parser in commands.items():
        quiet = next(a for a in parser._actions if "-q" in a.option_strings)
        has_strict = "--strict" in parser._option_string_actions
        assert ("--strict" in quiet.help) == has_strict, name
    strict = {n for n, p in commands.items() if "--strict" in p._option_string_actions}
    assert {"plan", "check"} <= strict
