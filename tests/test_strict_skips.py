"""The strict-skips guard (tests/strict_skips.py): under --strict-skips or CI=true a skipped test
fails the run and is listed with its reason; without them a skip passes; deselection is no skip."""
import pytest

SKIPPING = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("no widget here")

@pytest.mark.slow
def test_slow():
    pytest.skip("never collected under -m 'not slow'")
"""


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)  # the outer run may be CI's: the inner one decides here
    pytester.makeini("[pytest]\nmarkers = slow: slow")
    pytester.makepyfile(test_suite=SKIPPING)
    return pytester


def test_a_skip_passes_without_strict_skips(suite):
    result = suite.runpytest("-p", "strict_skips", "-m", "not slow")
    result.assert_outcomes(passed=1, skipped=1, deselected=1)
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("strict", [["--strict-skips"], []], ids=["option", "CI=true"])
def test_a_skip_fails_the_run_under_strict_skips_and_is_listed(suite, monkeypatch, strict):
    if not strict:
        monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-p", "strict_skips", "-m", "not slow", *strict)
    result.assert_outcomes(passed=1, skipped=1, deselected=1)  # the deselected test is not listed
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skipped tests fail this run*", "test_suite.py::test_skips: no widget here"])
    result.stdout.no_fnmatch_line("*test_slow*")


def test_a_module_skipped_at_import_fails_the_run_under_strict_skips(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_gone='import pytest\npytest.importorskip("no_such_module_here")\n')
    result = pytester.runpytest("-p", "strict_skips", "--strict-skips")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["test_gone.py: could not import 'no_such_module_here'*"])


def test_a_run_with_nothing_skipped_passes_under_strict_skips(pytester, monkeypatch):
    monkeypatch.setenv("CI", "1")
    pytester.makepyfile(test_fine="def test_ok():\n    pass\n")
    assert pytester.runpytest("-p", "strict_skips").ret == pytest.ExitCode.OK
