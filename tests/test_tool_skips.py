"""Under CI=true or FSD_GS_REQUIRE_TOOLS=1 a skip fails unless the test is a CUDA one (tests/tool_skips.py)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import pytest

def test_needs_a_tool():
    pytest.skip("no Chromium browser found")

@pytest.mark.cuda
def test_needs_a_gpu():
    pytest.skip("needs a CUDA GPU")

@pytest.mark.xfail(reason="known", strict=True)
def test_known_failure():
    assert False

def test_plain():
    assert True
"""


@pytest.mark.parametrize(
    "env, strict",
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"FSD_GS_REQUIRE_TOOLS": "1"}, True),
        ({"CI": "false", "FSD_GS_REQUIRE_TOOLS": "0"}, False),
    ],
)
def test_a_skip_for_a_missing_tool_fails_where_tools_are_required(pytester, monkeypatch, env, strict):
    for name in ("CI", "FSD_GS_REQUIRE_TOOLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makeini("[pytest]\nmarkers =\n    cuda: needs a CUDA GPU\n")
    pytester.makepyfile(test_tools=TESTS)
    result = pytester.runpytest("-p", "tests.tool_skips", "-rA", "-W", "ignore::pytest.PytestAssertRewriteWarning")
    if strict:
        result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)
        result.stdout.fnmatch_lines(["*needs every non-CUDA test to run: no Chromium browser found*"])
    else:
        result.assert_outcomes(passed=1, skipped=2, xfailed=1)
