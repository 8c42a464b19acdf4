"""`shapecheck check`: many specs in one process, only the problems, one summary line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shapecheck.cli import main

ROOT = Path(__file__).resolve().parent.parent

VALID = """\
input:
  shape: [1, 28, 28]
layers:
  - {type: conv2d, out_channels: 10, kernel_size: 5}
  - relu
  - flatten
  - {type: linear, out_features: 10}
"""

# conv2d's bias is cancelled by the batchnorm2d after it: exactly one warning (SC303).
WARNING = """\
input:
  shape: [3, 32, 32]
layers:
  - {type: conv2d, out_channels: 8, kernel_size: 3}
  - batchnorm2d
  - relu
  - flatten
  - {type: linear, out_features: 10}
"""

# The kernel is larger than the input: PyTorch would fail at layer 0 (SC201).
TOO_SMALL = """\
input:
  shape: [1, 28, 28]
layers:
  - {type: conv2d, out_channels: 4, kernel_size: 50}
  - flatten
"""

# Schema errors: two unknown fields and an unknown type.
SCHEMA = """\
input:
  shape: [1, 28, 28]
layers:
  - {type: conv2d, out_channel: 4, kernal_size: 5}
  - maxpool
"""

NOT_A_SPEC = """\
# some other tool's settings
retries: 3
servers: [a, b]
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def check(capsys, *argv: str) -> tuple[int, list[str], str]:
    """Run `shapecheck check ARGV` in this process: (exit code, stdout lines, stderr)."""
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_valid_spec_prints_only_the_summary(cwd, capsys):
    write(cwd, "specs/net.yaml", VALID)
    code, lines, err = check(capsys, "specs/net.yaml")
    assert code == 0
    assert lines == ["1 spec checked, 0 invalid, 0 warnings"]
    assert err == ""


def test_shape_error_has_file_line_col_code_and_hint(cwd, capsys):
    write(cwd, "specs/small.yaml", TOO_SMALL)
    code, lines, _ = check(capsys, "specs/small.yaml")
    assert code == 1
    assert lines[0].startswith("specs/small.yaml:4:5: error[SC201]: layer 0 (conv2d conv1): ")
    assert lines[1].startswith("  hint: this stack needs an input of at least 50×50")
    assert lines[2:] == ["1 spec checked, 1 invalid, 0 warnings"]


def test_schema_errors_each_have_their_position(cwd, capsys):
    write(cwd, "specs/schema.yaml", SCHEMA)
    code, lines, _ = check(capsys, "specs/schema.yaml")
    assert code == 1
    assert lines == [
        "specs/schema.yaml:4:20: error[SC102]: layer 0 (conv2d): unknown field 'out_channel'",
        "  hint: did you mean 'out_channels'?",
        "specs/schema.yaml:4:36: error[SC102]: layer 0 (conv2d): unknown field 'kernal_size'",
        "  hint: did you mean 'kernel_size'?",
        "specs/schema.yaml:5:5: error[SC101]: layer 1 (maxpool): unknown layer type 'maxpool'",
        "  hint: did you mean 'maxpool2d'?",
        "1 spec checked, 1 invalid, 0 warnings",
    ]


def test_warnings_pass_unless_strict(cwd, capsys):
    write(cwd, "specs/warn.yaml", WARNING)
    expected = [
        ("specs/warn.yaml:4:5: warning[SC303]: layer 0 (conv2d conv1): the bias of conv1 is "
         "cancelled by bn1, which subtracts the mean"),
        "  hint: set bias: false on the conv",
        "1 spec checked, 0 invalid, 1 warning",
    ]
    code, lines, _ = check(capsys, "specs/warn.yaml")
    assert (code, lines) == (0, expected)
    code, lines, _ = check(capsys, "--strict", "specs/warn.yaml")
    assert (code, lines) == (1, expected)


def test_strict_passes_specs_without_warnings(cwd, capsys):
    write(cwd, "specs/net.yaml", VALID)
    code, _, _ = check(capsys, "--strict", "specs/net.yaml")
    assert code == 0


def test_summary_counts_specs_invalid_and_warnings(cwd, capsys):
    write(cwd, "specs/a.yaml", VALID)
    write(cwd, "specs/b.yaml", WARNING)
    write(cwd, "specs/c.yaml", TOO_SMALL)
    write(cwd, "specs/d.yaml", WARNING)
    code, lines, _ = check(capsys, "specs/a.yaml", "specs/b.yaml", "specs/c.yaml")
    assert code == 1
    assert lines[-1] == "3 specs checked, 1 invalid, 1 warning"
    code, lines, _ = check(capsys, "specs/a.yaml", "specs/b.yaml", "specs/d.yaml")
    assert code == 0
    assert lines[-1] == "3 specs checked, 0 invalid, 2 warnings"
    # Problems are printed file by file, in the order given.
    files = [line.split(":")[0] for line in lines[:-1] if not line.startswith(" ")]
    assert files == ["specs/b.yaml", "specs/d.yaml"]


def test_missing_file_is_an_input_error(cwd, capsys):
    write(cwd, "specs/a.yaml", VALID)
    code, lines, _ = check(capsys, "specs/a.yaml", "specs/nope.yaml")
    assert code == 2
    assert lines == [
        "specs/nope.yaml: error[SC001]: no such file: specs/nope.yaml",
        "2 specs checked, 0 invalid, 0 warnings, 1 unreadable",
    ]


def test_invalid_yaml_is_an_input_error(cwd, capsys):
    write(cwd, "specs/broken.yaml", "input: [\n")
    code, lines, _ = check(capsys, "specs/broken.yaml")
    assert code == 2
    assert lines[0].startswith("specs/broken.yaml:2:1: error[SC002]: not valid YAML")
    assert lines[-1] == "1 spec checked, 0 invalid, 0 warnings, 1 unreadable"


def test_input_errors_win_over_invalid_specs_and_the_rest_is_still_checked(cwd, capsys):
    write(cwd, "specs/a.yaml", TOO_SMALL)
    write(cwd, "specs/c.yaml", WARNING)
    code, lines, _ = check(capsys, "specs/a.yaml", "specs/b.yaml", "specs/c.yaml")
    assert code == 2
    codes = [line.split(": ")[1] for line in lines[:-1] if not line.startswith(" ")]
    assert codes == ["error[SC201]", "error[SC001]", "warning[SC303]"]
    assert lines[-1] == "3 specs checked, 1 invalid, 1 warning, 1 unreadable"


def test_a_yaml_that_is_not_a_spec_is_one_problem_not_a_cascade(cwd, capsys):
    write(cwd, "specs/other.yaml", NOT_A_SPEC)
    write(cwd, "specs/list.yml", "- 1\n- 2\n")
    write(cwd, "specs/net.yaml", VALID)
    code, lines, _ = check(capsys, "specs/other.yaml", "specs/list.yml", "specs/net.yaml")
    # "Not a mapping / not a spec" is an input error in the contract: exit 2, as in `plan`.
    assert code == 2
    assert lines == [
        ("specs/other.yaml:1:1: error[SC003]: not a shapecheck spec: a YAML mapping with "
         "neither `input` nor `layers`"),
        "  hint: a spec is a mapping with `input: {shape: [C, H, W]}` and `layers: [...]`",
        ("specs/list.yml:1:1: error[SC003]: not a shapecheck spec: a YAML list with "
         "neither `input` nor `layers`"),
        "  hint: a spec is a mapping with `input: {shape: [C, H, W]}` and `layers: [...]`",
        "3 specs checked, 0 invalid, 0 warnings, 2 unreadable",
    ]


def test_empty_file_is_not_a_spec(cwd, capsys):
    write(cwd, "specs/empty.yaml", "")
    code, lines, _ = check(capsys, "specs/empty.yaml")
    assert code == 2
    assert lines[0] == "specs/empty.yaml: error[SC003]: the file is empty"


def test_github_format(cwd, capsys):
    write(cwd, "specs/warn.yaml", WARNING)
    write(cwd, "specs/schema.yaml", SCHEMA)
    write(cwd, "specs/other.yaml", NOT_A_SPEC)
    code, lines, _ = check(capsys, "--format", "github",
                           "specs/warn.yaml", "specs/schema.yaml", "specs/other.yaml",
                           "specs/gone.yaml")
    assert code == 2
    assert lines == [
        ("::warning file=specs/warn.yaml,line=4,col=5,title=SC303::layer 0 (conv2d conv1): "
         "the bias of conv1 is cancelled by bn1, which subtracts the mean"
         "%0Ahint: set bias: false on the conv"),
        ("::error file=specs/schema.yaml,line=4,col=20,title=SC102::layer 0 (conv2d): "
         "unknown field 'out_channel'%0Ahint: did you mean 'out_channels'?"),
        ("::error file=specs/schema.yaml,line=4,col=36,title=SC102::layer 0 (conv2d): "
         "unknown field 'kernal_size'%0Ahint: did you mean 'kernel_size'?"),
        ("::error file=specs/schema.yaml,line=5,col=5,title=SC101::layer 1 (maxpool): "
         "unknown layer type 'maxpool'%0Ahint: did you mean 'maxpool2d'?"),
        ("::error file=specs/other.yaml,line=1,col=1,title=SC003::not a shapecheck spec: "
         "a YAML mapping with neither `input` nor `layers`"
         "%0Ahint: a spec is a mapping with `input: {shape: [C, H, W]}` and `layers: [...]`"),
        "::error file=specs/gone.yaml,title=SC001::no such file: specs/gone.yaml",
        "4 specs checked, 1 invalid, 1 warning, 2 unreadable",
    ]


def test_github_format_escapes_the_file_property(cwd, capsys):
    write(cwd, "specs/a,b:c.yaml", TOO_SMALL)
    code, lines, _ = check(capsys, "--format", "github", "specs/a,b:c.yaml")
    assert code == 1
    assert lines[0].startswith("::error file=specs/a%2Cb%3Ac.yaml,line=4,col=5,title=SC201::")
    assert "\n" not in lines[0] and "%0Ahint: " in lines[0]


def test_default_is_every_yaml_file_under_specs_recursively_sorted(cwd, capsys):
    write(cwd, "specs/b.yaml", WARNING)
    write(cwd, "specs/a/z.yml", WARNING)
    write(cwd, "specs/a.yaml", TOO_SMALL)
    write(cwd, "specs/notes.txt", "not yaml")
    write(cwd, "specs/c.yml", WARNING)
    write(cwd, "specs/d.json", "{}")
    write(cwd, "other/x.yaml", TOO_SMALL)  # not under specs/
    code, lines, _ = check(capsys)
    assert code == 1
    files = [line.split(":")[0] for line in lines[:-1] if not line.startswith(" ")]
    assert files == ["specs/a/z.yml", "specs/a.yaml", "specs/b.yaml", "specs/c.yml"]
    assert lines[-1] == "4 specs checked, 1 invalid, 3 warnings"


def test_a_folder_argument_stands_for_its_yaml_files(cwd, capsys):
    write(cwd, "models/one.yaml", VALID)
    write(cwd, "models/deep/two.yml", WARNING)
    code, lines, _ = check(capsys, "models", "models/one.yaml")  # one.yaml is checked once
    assert code == 0
    assert lines[0].startswith("models/deep/two.yml:4:5: warning[SC303]")
    assert lines[-1] == "2 specs checked, 0 invalid, 1 warning"


def test_no_specs_folder_is_a_usage_error(cwd, capsys):
    code, lines, err = check(capsys)
    assert code == 2
    assert lines == []
    assert "no specs/ folder" in err


def test_empty_specs_folder_checks_nothing(cwd, capsys):
    (cwd / "specs").mkdir()
    code, lines, err = check(capsys)
    assert code == 0
    assert lines == ["0 specs checked, 0 invalid, 0 warnings"]
    assert "no *.yaml / *.yml files under specs/" in err


def test_a_named_folder_without_specs_is_an_input_error(cwd, capsys):
    """`check models/` where models/ holds no spec (or `check net.yaml`, a folder) must not pass
    as if its specs had been checked."""
    write(cwd, "specs/ok.yaml", VALID)
    (cwd / "models").mkdir()
    (cwd / "models" / "notes.txt").write_text("no specs here")
    (cwd / "net.yaml").mkdir()
    for target in ("models", "net.yaml"):
        code, lines, err = check(capsys, "specs", target)
        assert code == 2 and lines == []
        assert f"no *.yaml / *.yml files under {target}" in err


def test_warnings_a_spec_ignores_are_not_reported_and_do_not_fail_strict(cwd, capsys):
    """`ignore: [SC303]` accepts a network kept as its paper has it; other warnings stay, and
    an error code cannot be ignored."""
    write(cwd, "specs/net.yaml", WARNING)
    code, lines, _ = check(capsys, "--strict")
    assert code == 1 and "warning[SC303]" in lines[0]
    write(cwd, "specs/net.yaml", "ignore: [SC303]\n" + WARNING)
    code, lines, _ = check(capsys, "--strict")
    assert code == 0 and lines == ["1 spec checked, 0 invalid, 0 warnings"]
    write(cwd, "specs/net.yaml", "ignore: [SC303, SC204]\n" + WARNING)
    code, lines, _ = check(capsys)
    assert code == 1
    assert "ignore.1: 'SC204' is not a warning's code (SC301, " in lines[0]


def test_the_repository_specs_pass(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, lines, _ = check(capsys)
    assert code == 0
    assert lines[-1].startswith(f"{len(list((ROOT / 'specs').rglob('*.yaml')))} specs checked, "
                                "0 invalid")


# Runs `shapecheck check` as a fresh process and records every import of torch or graphviz
# that anything tries (whether or not they are installed), plus what ended up in sys.modules.
_RECORD_IMPORTS = textwrap.dedent("""\
    import sys

    HEAVY = ("torch", "graphviz")
    tried = []

    class Recorder:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                tried.append(name)
            return None

    sys.meta_path.insert(0, Recorder())
    from shapecheck.cli import main

    code = main(["check", *sys.argv[1:]])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    print("HEAVY", sorted(set(tried)), loaded)
    sys.exit(code)
""")


@pytest.mark.parametrize("argv", [[], ["--strict", "--format", "github"]])
def test_check_never_imports_torch_or_graphviz(cwd, argv):
    write(cwd, "specs/net.yaml", VALID)
    write(cwd, "specs/warn.yaml", WARNING)
    write(cwd, "specs/small.yaml", TOO_SMALL)
    write(cwd, "specs/schema.yaml", SCHEMA)
    write(cwd, "specs/other.yaml", NOT_A_SPEC)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _RECORD_IMPORTS, *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "5 specs checked, 2 invalid, 1 warning, 1 unreadable" in done.stdout
    assert done.stdout.splitlines()[-1] == "HEAVY [] []", done.stdout


def test_python_dash_m_shapecheck(cwd):
    write(cwd, "specs/small.yaml", TOO_SMALL)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "shapecheck", "check"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("specs/small.yaml:4:5: error[SC201]")
    assert done.stdout.endswith("1 spec checked, 1 invalid, 0 warnings\n")


def test_many_files_shared_among_processes_give_the_same_report(cwd, capsys):
    """40 files (every kind of result among them) in 2 processes: the same lines in the same
    order, the same summary and exit code as in one."""
    texts = [VALID, WARNING, TOO_SMALL, SCHEMA, NOT_A_SPEC]
    for i in range(40):
        write(cwd, f"specs/s{i:02d}.yaml", texts[i % len(texts)])
    one = check(capsys, "-j", "1", "specs")
    two = check(capsys, "--jobs", "2", "specs")
    assert two == one
    code, lines, _ = two
    assert code == 2
    assert lines[-1] == "40 specs checked, 16 invalid, 8 warnings, 8 unreadable"
    assert lines[0].startswith("specs/s01.yaml:4:5: warning[SC303]")


def test_jobs_must_be_positive(cwd, capsys):
    write(cwd, "specs/net.yaml", VALID)
    code, lines, err = check(capsys, "--jobs", "0")
    assert code == 2 and lines == []
    assert "--jobs 0: give 1 or more" in err


def test_ctrl_c_stops_the_processes_quietly(cwd):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while processes share the
    files: exit 130, one line saying so, no worker's traceback, no process left behind."""
    import signal

    for i in range(300):
        write(cwd, f"specs/s{i:03d}.yaml", WARNING)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen([sys.executable, "-m", "shapecheck", "check", "-j", "2", "specs"],
                           cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    first = run.stdout.readline()  # the processes are at work
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert first.startswith("specs/s000.yaml:4:5: warning[SC303]")
    assert run.returncode == 130
    assert err == "interrupted\n"
    assert "specs checked" not in out
    with pytest.raises(ProcessLookupError):  # the group is gone: no worker outlived it
        os.killpg(run.pid, 0)


def test_the_repository_passes_the_check_its_hook_suggests(capsys):
    """.pre-commit-hooks.yaml suggests `args: [--strict]`: the specs shipped here pass it (a
    warning a spec keeps on purpose is accepted by its `ignore:`, with the reason beside it)."""
    assert "--strict" in (ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    specs = sorted(map(str, [*ROOT.glob("specs/*.yaml"), *ROOT.glob("specs/zoo/*.yaml")]))
    assert main(["check", "--strict", *specs]) == 0, capsys.readouterr().out
