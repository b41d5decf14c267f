"""The shared launch runner: concurrency bound, failures, interruption, unique seeds."""

from __future__ import annotations

import threading
import time

from seedtool.launch.runner import (
    FAILED,
    LAUNCHED,
    NOT_STARTED,
    InstanceResult,
    render_table,
    run_all,
)
from seedtool.shared.errors import CloudError


def test_all_launched_with_bounded_concurrency() -> None:
    lock = threading.Lock()
    active = peak = 0

    def one(i: int) -> InstanceResult:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1
        return InstanceResult(i, LAUNCHED, seed_id=f"s{i}", instance_id=f"i-{i}")

    seen: list[int] = []
    results, interrupted = run_all(range(10), one, concurrency=3,
                                   on_done=lambda r: seen.append(r.index))
    assert not interrupted and [r.index for r in results] == list(range(10))
    assert all(r.ok for r in results) and sorted(seen) == list(range(10))
    assert 1 <= peak <= 3


def test_errors_become_failed_results() -> None:
    def one(i: int) -> InstanceResult:
        if i == 2:
            raise CloudError("quota exceeded for instance type t3.micro; ask for more quota")
        return InstanceResult(i, LAUNCHED, instance_id=f"i-{i}")

    results, _ = run_all(range(4), one, concurrency=2)
    assert [r.status for r in results] == [LAUNCHED, LAUNCHED, FAILED, LAUNCHED]
    assert "quota" in (results[2].error or "")
    table = render_table(results)
    assert "i-3" in table and "failed: quota" in table


def test_interrupt_reports_in_flight_and_not_started() -> None:
    started = threading.Event()

    def one(i: int) -> InstanceResult:
        if i == 1:
            started.set()
            time.sleep(0.3)
            return InstanceResult(i, LAUNCHED, instance_id="i-1")
        return InstanceResult(i, LAUNCHED, instance_id=f"i-{i}")

    calls = {"n": 0}

    def on_done(r: InstanceResult) -> None:
        calls["n"] += 1
        if r.index == 0:
            started.wait(2)
            raise KeyboardInterrupt  # as if Ctrl-C arrived while index 1 is in flight

    results, interrupted = run_all(range(5), one, concurrency=2, on_done=on_done)
    assert interrupted
    by = {r.index: r for r in results}
    assert by[1].status == LAUNCHED and by[1].instance_id == "i-1"  # in flight: reported
    assert {by[i].status for i in (2, 3, 4)} <= {NOT_STARTED, LAUNCHED}
    assert any(by[i].status == NOT_STARTED for i in (2, 3, 4))
