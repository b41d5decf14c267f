"""The seed server's metrics, as Prometheus text (exposition format 0.0.4).

A few counters and one histogram, kept here under one lock and written out by
`Metrics.render` for ``GET /metrics``; no client library: the text format
("Exposition formats", Prometheus documentation) is a handful of lines, and the
server needs no registry, push gateway or multiprocess mode.

* ``seedtool_seeds_issued_total{kind}``: envelopes sent (ledger row committed);
* ``seedtool_requests_refused_total{reason}``: answers other than 200, by error code;
* ``seedtool_issue_seconds{kind}``: histogram of the time from a request's body
  read to its answer, per identity kind (refusals included);
* gauges given at render time: source health (``seedtool_source_healthy{source}``),
  ``seedtool_core_serving``, ``seedtool_ledger_writable``.

Labels are identity kinds, error codes and source names: never an instance, a
client address or anything a request chose freely.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping

#: histogram bucket upper bounds, seconds
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Thread-safe counters and the latency histogram of the HTTPS listener."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._hist: dict[str, list[int]] = {}  # kind -> per-bucket counts (+Inf last)
        self._sum: dict[str, float] = {}

    def issued(self, kind: str) -> None:
        with self._lock:
            self._issued[kind] = self._issued.get(kind, 0) + 1

    def refused(self, reason: str) -> None:
        with self._lock:
            self._refused[reason] = self._refused.get(reason, 0) + 1

    def observe(self, kind: str, seconds: float) -> None:
        with self._lock:
            counts = self._hist.setdefault(kind, [0] * (len(BUCKETS) + 1))
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sum[kind] = self._sum.get(kind, 0.0) + seconds

    def count(self, name: str, label: str) -> int:
        """One counter's value ("issued" by kind or "refused" by reason), for status and tests."""
        with self._lock:
            table = self._issued if name == "issued" else self._refused
            return table.get(label, 0)

    def render(self, *, sources: Iterable[tuple[str, bool]] = (), serving: bool | None = None,
               ledger: bool | None = None) -> str:
        """The exposition text; `sources` (name, healthy), `serving` and `ledger` as gauges."""
        out: list[str] = []
        with self._lock:
            _family(out, "seedtool_seeds_issued_total", "counter",
                    "Seed envelopes issued (ledger row committed before the answer).",
                    "kind", self._issued)
            _family(out, "seedtool_requests_refused_total", "counter",
                    "Seed requests answered with an error, by error code.",
                    "reason", self._refused)
            out.append("# HELP seedtool_issue_seconds Time to answer a seed request, "
                       "by identity kind.")
            out.append("# TYPE seedtool_issue_seconds histogram")
            for kind in sorted(self._hist):
                counts = self._hist[kind]
                total = 0
                for bound, n in zip((*BUCKETS, float("inf")), counts):
                    total += n
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    out.append(f'seedtool_issue_seconds_bucket{{kind="{_esc(kind)}",le="{le}"}} '
                               f"{total}")
                out.append(f'seedtool_issue_seconds_sum{{kind="{_esc(kind)}"}} '
                           f"{self._sum[kind]:.6f}")
                out.append(f'seedtool_issue_seconds_count{{kind="{_esc(kind)}"}} {total}')
        _family(out, "seedtool_source_healthy", "gauge",
                "1 while the entropy source passes its health tests.",
                "source", {name: int(ok) for name, ok in sources})
        if serving is not None:
            _family(out, "seedtool_core_serving", "gauge",
                    "1 while every required source is healthy and the DRBG serves.",
                    None, {"": int(serving)})
        if ledger is not None:
            _family(out, "seedtool_ledger_writable", "gauge",
                    "1 when the ledger's last probe write committed.", None, {"": int(ledger)})
        return "\n".join(out) + "\n"


def _family(out: list[str], name: str, kind: str, help_text: str, label: str | None,
            values: Mapping[str, int]) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for key in sorted(values):
        labels = "" if label is None else f'{{{label}="{_esc(key)}"}}'
        out.append(f"{name}{labels} {values[key]}")


def _esc(value: str) -> str:
    """A label value escaped as the text format requires (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
