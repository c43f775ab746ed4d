"""Under CI=true any skip fails the whole run (the hooks at the end of tests/conftest.py), whatever
skipped it: a skip or skipif marker, pytest.skip, pytest.importorskip, a third-party plugin, or a
module skipped at collection. An xfail stays an xfail. Without CI the same run passes with the
skips reported. Each case is a pytest of its own in a subprocess, on a copy of our conftest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # where `app` (imported by the conftest) comes from

TESTS = '''
import pytest


def test_passes():
    pass


@pytest.mark.skip(reason="a skip marker")
def test_skip_marker():
    pass


@pytest.mark.skipif(True, reason="a skipif marker")
def test_skipif_marker():
    pass


def test_skip_call():
    pytest.skip("pytest.skip in the test")


def test_importorskip():
    pytest.importorskip("no_such_module_for_this_test")


def test_skipped_by_the_plugin():
    pass


@pytest.mark.xfail(reason="an expected failure", strict=True)
def test_xfail():
    assert False
'''

MODULE_SKIPPED = '''
import pytest

pytest.importorskip("no_such_module_at_collection")


def test_never_collected():
    pass
'''

PLUGIN = '''
import pytest


def pytest_runtest_setup(item):
    if item.name == "test_skipped_by_the_plugin":
        pytest.skip("skipped by a third-party plugin")
'''

SKIPS = {
    "test_skips.py::test_skip_marker": "a skip marker",
    "test_skips.py::test_skipif_marker": "a skipif marker",
    "test_skips.py::test_skip_call": "pytest.skip in the test",
    "test_skips.py::test_importorskip": "no_such_module_for_this_test",
    "test_skips.py::test_skipped_by_the_plugin": "skipped by a third-party plugin",
    "test_module_skipped.py": "no_such_module_at_collection",
}


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "conftest.py").write_text((HERE / "conftest.py").read_text())
    (tmp_path / "test_skips.py").write_text(TESTS)
    (tmp_path / "test_module_skipped.py").write_text(MODULE_SKIPPED)
    (tmp_path / "skipping_plugin.py").write_text(PLUGIN)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return tmp_path


def run(suite: Path, *args: str, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(suite)])
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skipping_plugin", "-p", "no:cacheprovider", "-rs", *args],
                          cwd=suite, env=env, capture_output=True, text=True, timeout=120)


def test_under_ci_any_skip_fails_the_run_and_is_listed(suite: Path) -> None:
    result = run(suite, ci=True)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "1 passed, 6 skipped, 1 xfailed" in output, output  # no test failed: the skips alone fail the run
    listed = output[output.index("CI=true: nothing may skip"):]
    for nodeid, reason in SKIPS.items():
        [line] = [line for line in listed.splitlines() if line.startswith(f"SKIPPED {nodeid}:")]
        assert reason in line, line
    assert "test_passes" not in listed and "test_xfail" not in listed
    assert "6 skipped under CI=true, so the run fails" in listed


def test_without_ci_skips_pass_and_are_reported(suite: Path) -> None:
    result = run(suite, ci=False)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.OK, output
    assert "1 passed, 6 skipped, 1 xfailed" in output, output
    assert "CI=true: nothing may skip" not in output
    for nodeid, reason in SKIPS.items():
        assert any(line.startswith("SKIPPED") and reason in line for line in output.splitlines()), (nodeid, output)


def test_under_ci_a_run_without_skips_passes_and_xfail_is_kept(suite: Path) -> None:
    result = run(suite, "test_skips.py::test_passes", "test_skips.py::test_xfail", ci=True)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.OK, output
    assert "1 passed, 1 xfailed" in output and "CI=true: nothing may skip" not in output, output
