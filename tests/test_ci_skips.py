"""A skip fails the run when CI is set, and stays a skip on a laptop (tests/ci_skips.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
A_SKIPPING_TEST = """
import pytest

def test_needs_a_program_this_machine_lacks():
    pytest.skip("no-such-program is not installed")
"""


@pytest.mark.parametrize("ci, code, outcome", [("true", 1, "1 failed"), ("", 0, "1 skipped")])
def test_a_skip_fails_the_run_in_ci_only(tmp_path, ci, code, outcome):
    (tmp_path / "test_skipping.py").write_text(A_SKIPPING_TEST)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(TESTS)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "ci_skips", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == code, run.stdout + run.stderr
    assert outcome in run.stdout
    if ci:
        assert "skipped in CI, where every test must run: no-such-program" in run.stdout
