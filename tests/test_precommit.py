"""The pre-commit hook (.pre-commit-hooks.yaml), end to end with the real `pre-commit` tool.

A snapshot of this checkout's working tree is committed to a temporary git repository, which
serves as the hook's repository (pre-commit clones it and pip-installs it into a virtualenv,
so the hook sees exactly what a user would get from a tag). User repositories are temporary
git repositories whose .pre-commit-config.yaml points at it; specs are committed through the
installed git hook. PRE_COMMIT_HOME is shared by the session, so the hook's environment is
built once (this needs pydantic and PyYAML from the package index, or pip's cache)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pre_commit", reason="pre-commit is not installed")
if shutil.which("git") is None:
    pytest.skip("git is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
PRE_COMMIT = [sys.executable, "-m", "pre_commit"]
DEFAULT_HOOK = "- id: shapecheck"

VALID = """\
input:
  shape: [1, 28, 28]
layers:
  - {type: conv2d, out_channels: 10, kernel_size: 5}
  - relu
  - flatten
  - {type: linear, out_features: 10}
"""

WARNING = """\
input:
  shape: [3, 32, 32]
layers:
  - {type: conv2d, out_channels: 8, kernel_size: 3}
  - batchnorm2d
  - flatten
  - {type: linear, out_features: 10}
"""

BROKEN = """\
input:
  shape: [1, 28, 28]
layers:
  - {type: conv2d, out_channels: 4, kernel_size: 50}
  - flatten
"""

NOT_A_SPEC = """\
retries: 3
servers: [a, b]
"""


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _ok(cmd: list[str], cwd: Path, env: dict, timeout: float = 120) -> str:
    done = _run(cmd, cwd, env, timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict:
    """The environment for git and pre-commit: no user or system git config, one
    PRE_COMMIT_HOME for the session, no colours."""
    home = tmp_path_factory.mktemp("precommit")
    gitconfig = home / "gitconfig"
    gitconfig.write_text("[user]\n\tname = shapecheck tests\n\temail = tests@example.invalid\n"
                         "[init]\n\tdefaultBranch = main\n[commit]\n\tgpgsign = false\n")
    return {
        **os.environ,
        "GIT_CONFIG_GLOBAL": str(gitconfig),
        "GIT_CONFIG_NOSYSTEM": "1",
        "PRE_COMMIT_HOME": str(home / "cache"),
        "PRE_COMMIT_COLOR": "never",
    }


def _init(path: Path, env: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _ok(["git", "init", "-q"], path, env)
    _ok(["git", "config", "user.name", "shapecheck tests"], path, env)
    _ok(["git", "config", "user.email", "tests@example.invalid"], path, env)


def _working_tree_files() -> list[str]:
    """The files a commit of this checkout would hold: tracked plus untracked, not ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in out.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="session")
def hook_repo(tmp_path_factory, env) -> tuple[str, str]:
    """A git repository holding a snapshot of this working tree: (path, HEAD sha)."""
    repo = tmp_path_factory.mktemp("shapecheck-hook-repo")
    for name in _working_tree_files():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    assert (repo / ".pre-commit-hooks.yaml").is_file()
    _init(repo, env)
    _ok(["git", "add", "-A"], repo, env)
    _ok(["git", "commit", "-q", "-m", "snapshot for the pre-commit tests"], repo, env)
    sha = _ok(["git", "rev-parse", "HEAD"], repo, env).strip()
    return str(repo), sha


def _config(hook_repo: tuple[str, str], hook: str) -> str:
    path, sha = hook_repo
    hook = hook.replace("\n", "\n        ")
    return (f"repos:\n  - repo: {json.dumps(path)}\n    rev: {sha}\n"
            f"    hooks:\n      {hook}\n")


@pytest.fixture(scope="session")
def hook_env(tmp_path_factory, env, hook_repo) -> None:
    """Build the hook's virtualenv once (pip-installs the hook repository, core deps only)."""
    project = tmp_path_factory.mktemp("warmup")
    _init(project, env)
    (project / ".pre-commit-config.yaml").write_text(_config(hook_repo, DEFAULT_HOOK))
    _ok([*PRE_COMMIT, "install-hooks"], project, env, timeout=900)


@pytest.fixture
def project(tmp_path, env, hook_repo, hook_env):
    """A user's repository with the hook installed; project(hook) to change its config."""

    def make(hook: str = DEFAULT_HOOK) -> Path:
        path = tmp_path / "project"
        _init(path, env)
        (path / ".pre-commit-config.yaml").write_text(_config(hook_repo, hook))
        _ok([*PRE_COMMIT, "install"], path, env)
        _ok(["git", "add", ".pre-commit-config.yaml"], path, env)
        _ok(["git", "commit", "-q", "-m", "add pre-commit"], path, env)
        return path

    return make


def commit(path: Path, env: dict, files: dict[str, str]) -> subprocess.CompletedProcess:
    """Write and stage the files, then `git commit` (which runs the hook)."""
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    _ok(["git", "add", *files], path, env)
    done = _run(["git", "commit", "-m", "change specs"], path, env, timeout=300)
    done.output = done.stdout + done.stderr
    return done


def _committed(path: Path, env: dict) -> list[str]:
    return _ok(["git", "show", "--name-only", "--format=", "HEAD"], path, env).split()


def test_committing_a_valid_spec_passes(project, env):
    path = project()
    done = commit(path, env, {"specs/net.yaml": VALID, "models/specs/other_net.yml": VALID})
    assert done.returncode == 0, done.output
    assert "shapecheck" in done.output and "Passed" in done.output
    assert sorted(_committed(path, env)) == ["models/specs/other_net.yml", "specs/net.yaml"]


def test_committing_a_broken_spec_fails_with_file_line_and_code(project, env):
    path = project()
    done = commit(path, env, {"specs/good.yaml": VALID, "specs/broken.yaml": BROKEN})
    assert done.returncode != 0, done.output
    assert "Failed" in done.output
    assert "specs/broken.yaml:4:5: error[SC201]: layer 0 (conv2d conv1)" in done.output
    assert "2 specs checked, 1 invalid, 0 warnings" in done.output
    assert _committed(path, env) == [".pre-commit-config.yaml"]  # nothing was committed


def test_a_non_spec_yaml_outside_the_pattern_is_left_alone(project, env):
    path = project()
    done = commit(path, env, {"config/other.yaml": NOT_A_SPEC, "specs.yaml": NOT_A_SPEC})
    assert done.returncode == 0, done.output
    assert "(no files to check)Skipped" in done.output
    assert "SC003" not in done.output


def test_a_non_spec_yaml_under_specs_is_reported_in_one_line(project, env):
    path = project()
    done = commit(path, env, {"specs/settings.yaml": NOT_A_SPEC})
    assert done.returncode != 0, done.output
    assert "- exit code: 2" in done.output
    assert "specs/settings.yaml:1:1: error[SC003]: not a shapecheck spec" in done.output
    assert "SC1" not in done.output


def test_files_and_args_can_be_overridden(project, env):
    path = project("- id: shapecheck\nfiles: ^nets/.*\\.yaml$\nargs: [--strict]")
    done = commit(path, env, {"specs/broken.yaml": BROKEN})  # no longer matches: left alone
    assert done.returncode == 0, done.output
    done = commit(path, env, {"nets/warn.yaml": WARNING})  # --strict: a warning fails
    assert done.returncode != 0, done.output
    assert "nets/warn.yaml:4:5: warning[SC303]" in done.output
    assert "1 spec checked, 0 invalid, 1 warning" in done.output


def test_the_hook_environment_has_the_core_package_only(env, hook_env):
    """pre-commit pip-installs the hook repository without extras: no torch, no graphviz."""
    envs = sorted(Path(env["PRE_COMMIT_HOME"]).glob("repo*/py_env-*"))
    assert envs, f"no hook environment under {env['PRE_COMMIT_HOME']}"
    for venv in envs:
        python = next(p for p in (venv / "bin" / "python", venv / "Scripts" / "python.exe")
                      if p.exists())
        probe = ("import importlib.util as u; "
                 "print([m for m in ('shapecheck', 'torch', 'graphviz') if u.find_spec(m)])")
        assert _ok([str(python), "-c", probe], venv, env).strip() == "['shapecheck']"


def test_the_readme_local_hook_works_as_written(tmp_path, env):
    """The README's `repo: local` configuration, copied as it stands, with this environment's
    shapecheck on PATH."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    config = next(block for block in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)
                  if "repo: local" in block)
    path = tmp_path / "project"
    _init(path, env)
    (path / ".pre-commit-config.yaml").write_text(config)
    local = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    _ok([*PRE_COMMIT, "install"], path, local)
    _ok(["git", "add", ".pre-commit-config.yaml"], path, local)
    _ok(["git", "commit", "-q", "-m", "add pre-commit"], path, local)
    done = commit(path, local, {"specs/good.yaml": VALID, "specs/broken.yaml": BROKEN})
    assert done.returncode != 0 and "error[SC201]" in done.output, done.output
    done = commit(path, local, {"specs/broken.yaml": VALID})
    assert done.returncode == 0, done.output
