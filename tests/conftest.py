"""Shared test helpers. `pytest --update-expected` rewrites the expected-output files under
tests/expected/ instead of comparing against them."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
EXPECTED = Path(__file__).resolve().parent / "expected"


# What `pytest -m "not slow"` leaves out: the tests that train, launch processes or browsers,
# export ONNX or install hooks, each taking seconds (the rest takes about a third of the time).
SLOW_MODULES = {"test_distributed", "test_onnx", "test_precommit", "test_dense", "test_benchmarks",
                "test_extending"}
SLOW_TESTS = {"test_planner_equals_torch", "test_classifiers_train_on_synthetic_data",
              "test_train_and_eval_end_to_end", "test_sigkill_mid_epoch_leaves_a_loadable_checkpoint",
              "test_a_resume_on_another_thread_count_says_the_bits_will_differ",
              "test_no_string_in_a_spec_runs_as_code",
              "test_onnx_follows_sizes_taken_from_other_tensors",
              "test_a_graph_spec_trains_for_segmentation"}


def pytest_addoption(parser):
    parser.addoption("--update-expected", action="store_true",
                     help="rewrite tests/expected/* from the current output")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes seconds (training, processes, ONNX, "
                            "hooks); left out by -m 'not slow'")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def expect(request):
    """expect(name, text): compare text with tests/expected/<name>, or rewrite it."""
    update = request.config.getoption("--update-expected")

    def check(name: str, text: str) -> None:
        path = EXPECTED / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"{path} is missing: run pytest --update-expected"
        assert text == path.read_text(encoding="utf-8"), (
            f"output differs from {path}; if the change is intended, run pytest --update-expected"
        )

    return check


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A test's own empty folder as the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small nets on a shared machine: one thread is as fast and far steadier. A module asks
    for it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
