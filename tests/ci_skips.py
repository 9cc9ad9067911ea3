"""In CI every test must run: a skip there fails the run instead of passing quietly.

A skip in CI means a missing install step (chromium, nginx, redis-server), and
a run that skips the browser tests is not a green run. Wherever the skip comes
from (need(), a plugin, a skipif), with CI set its report becomes a failure.
Loaded by tests/conftest.py; a plugin of its own so tests/test_ci_skips.py can
load it into a pytest run of its own.
"""

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (f"skipped in CI, where every test must run: {reason} "
                           "(.ci/run must install what it needs)")
