"""The CI fuzz campaign (fuzz/ci_campaign.py): each target, a bounded number of inputs.

Each target runs in its own subprocess under atheris with a fixed seed; any
exception other than the project's typed errors, any broken invariant and any hang
fails the test, which then shows libFuzzer's report and where the input was kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz import ci_campaign
from fuzz.run import CANARY, TARGETS

pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")


@pytest.mark.parametrize("target", TARGETS)
def test_short_campaign_finds_nothing(target: str, tmp_path: Path) -> None:
    result = ci_campaign.run(target, work=tmp_path)
    assert result.ok, result.report()
    assert result.executions == ci_campaign.CI_RUNS[target]
    # coverage guidance was on: the instrumented parser reported edges
    assert result.coverage is not None and result.coverage > 0, result.report()


def test_the_canary_bug_is_found_and_fails_the_campaign(tmp_path: Path) -> None:
    """fuzz/fuzz_canary.py hides an IndexError behind a 3-byte comparison; the
    machinery must find it, keep the input and report a failure."""
    result = ci_campaign.run(CANARY, runs=200_000, work=tmp_path)
    assert not result.ok
    assert result.artifacts, result.report()
    kept = Path(result.artifacts[0])
    assert kept.name.startswith("crash-") and kept.read_bytes()[8:11] == b"bug"
    assert "IndexError: the planted bug" in result.output
    assert result.executions is not None and result.executions < 200_000
