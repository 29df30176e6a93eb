"""pytest plugin: with ``--strict-skips`` (or env CI=1/true) a skipped test fails the run.

CI must run everything: a skip there hides a missing dependency, data folder or launcher behind a
green run. Deselected tests (``-m 'not slow'``) are not skips. Loaded by tests/conftest.py; a
module of its own so tests/test_strict_skips.py can load it into a pytester run.
"""
from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--strict-skips", action="store_true",
                     help="fail the run when any test is skipped (on by default when env CI is 1/true)")


def pytest_configure(config):
    if config.getoption("--strict-skips") or os.environ.get("CI", "").lower() in ("1", "true"):
        config.pluginmanager.register(StrictSkips(), "strict-skips")


class StrictSkips:
    def __init__(self):
        self.skipped: list[str] = []

    def _record(self, report) -> None:
        # An expected failure (xfail) reports as skipped too, but it ran: only real skips count.
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append(f"{report.nodeid}: {reason.removeprefix('Skipped: ')}")

    def pytest_runtest_logreport(self, report):
        self._record(report)

    def pytest_collectreport(self, report):  # a whole module skipped at import
        self._record(report)

    def pytest_sessionfinish(self, session):
        if self.skipped and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self.skipped:
            terminalreporter.section("skipped tests fail this run (--strict-skips or CI)", red=True)
            for line in self.skipped:
                terminalreporter.line(line, red=True)
