"""Running N per-instance launches: bounded concurrency, progress, interruption, report.

Every cloud launcher (one module per cloud) supplies a function that launches ONE
instance with ONE fresh seed; this module calls it for each index, never hands the
same seed to two calls, and reports exactly which instances exist and which failed.
On Ctrl-C it stops starting new launches, waits for the calls already in flight
(their instances may exist, so they must be reported) and marks the rest not started.
The library never prints: progress goes to the `on_done` callback the CLI passes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ..shared.errors import SeedtoolError

LAUNCHED, FAILED, NOT_STARTED, DRY_RUN, EXISTING = (
    "launched",
    "failed",
    "not-started",
    "dry-run-ok",
    "already-launched",
)


@dataclass
class InstanceResult:
    index: int
    status: str
    seed_id: str | None = None
    instance_id: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (LAUNCHED, DRY_RUN, EXISTING)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "index": self.index,
            "status": self.status,
            "instance_id": self.instance_id,
            "seed_id": self.seed_id,
        }
        if self.error:
            d["error"] = self.error
        d.update(self.extra)
        return d


LaunchOne = Callable[[int], InstanceResult]


def run_all(
    indices: Sequence[int],
    launch_one: LaunchOne,
    *,
    concurrency: int = 4,
    on_done: Callable[[InstanceResult], None] | None = None,
) -> tuple[list[InstanceResult], bool]:
    """Launch every index; return (results sorted by index, interrupted?).

    `launch_one(index)` makes its own fresh seed, so a retry never reuses one. It
    should return a result rather than raise; a `SeedtoolError` it raises becomes a
    failed result with the error's sentence, anything else propagates after in-flight
    calls finish.
    """
    results: dict[int, InstanceResult] = {}
    pending = list(indices)
    interrupted = False
    stop = threading.Event()

    def guarded(i: int) -> InstanceResult:
        try:
            return launch_one(i)
        except SeedtoolError as e:
            return InstanceResult(i, FAILED, error=str(e))

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        running: dict[Future[InstanceResult], int] = {}
        try:
            while pending or running:
                while pending and len(running) < concurrency and not stop.is_set():
                    i = pending.pop(0)
                    running[pool.submit(guarded, i)] = i
                done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    res = fut.result()
                    results[i] = res
                    if on_done:
                        on_done(res)
                if stop.is_set() and not running:
                    break
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            # let in-flight calls finish: their instances may already exist
            for fut, i in list(running.items()):
                try:
                    res = fut.result()
                except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C
                    res = InstanceResult(i, FAILED, error="interrupted while launching; "
                                         "check the console for this index")
                results[i] = res
                if on_done:
                    on_done(res)
            running.clear()
    for i in pending:
        results.setdefault(i, InstanceResult(i, NOT_STARTED, error="not started: interrupted"))
    return [results[i] for i in sorted(results)], interrupted


def render_table(results: Sequence[InstanceResult], columns: Sequence[str] = ()) -> str:
    """A plain-text table: index, instance id, seed id, status (and extra columns)."""
    head = ["INDEX", "INSTANCE", "SEED", "STATUS", *[c.upper() for c in columns]]
    rows = [
        [
            str(r.index),
            r.instance_id or "-",
            r.seed_id or "-",
            r.status + (f": {r.error}" if r.error else ""),
            *[str(r.extra.get(c, "-")) for c in columns],
        ]
        for r in results
    ]
    widths = [max(len(h), *(len(row[k]) for row in rows)) if rows else len(h)
              for k, h in enumerate(head)]
    # the status column holds free text: do not pad the last-but-extras column wider
    lines = ["  ".join(h.ljust(widths[k]) for k, h in enumerate(head)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(widths[k]) for k, c in enumerate(row)).rstrip())
    return "\n".join(lines)
