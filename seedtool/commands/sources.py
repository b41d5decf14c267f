"""`seedtool sources`: every known source, whether it is usable here and why, a health sample."""

from __future__ import annotations

from typing import Any

import click

from ..health import HealthMonitor
from ..shared.errors import SeedtoolError
from ..sources import REGISTRY, make_source, parse_source_spec, source_class
from ._options import echo_json

SAMPLE_BYTES = 1024


def describe(spec: str, sample: bool) -> dict[str, Any]:
    name, options = parse_source_spec(spec)
    row: dict[str, Any] = {"name": name, "options": dict(source_class(name).known_options)}
    try:
        src = make_source(name, **options)
    except SeedtoolError as e:
        return {**row, "available": False, "reason": str(e)}
    row.update(description=src.description, raw=src.raw, min_entropy=src.min_entropy)
    try:
        avail = src.available()
        row["available"] = avail.ok
        if not avail.ok:
            row["reason"] = avail.reason
        if avail.detail:
            row["detail"] = dict(avail.detail)
        if avail.ok and sample:
            mon = HealthMonitor(name, src.min_entropy, src.sample_bits)
            try:
                mon.read(src.read, SAMPLE_BYTES)
                row["health"] = mon.report.as_dict()
            except SeedtoolError as e:
                row["health"] = {**mon.report.as_dict(), "verdict": "fail", "reason": str(e)}
    except SeedtoolError as e:
        row["available"] = False
        row["reason"] = str(e)
    finally:
        src.close()
    return row


@click.command("sources")
@click.option("--source", "specs", multiple=True, metavar="NAME[:k=v,...]",
              help="Only these sources, with options (default: every known kind).")
@click.option("--no-sample", is_flag=True, help="Skip the health sample (no reads).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def command(specs: tuple[str, ...], no_sample: bool, as_json: bool) -> None:
    """List entropy sources: available or not (and why), with a short health sample.

    The sample reads about 2 KB from each available source (a 1024-sample start-up
    test plus 1 KB) through the SP 800-90B health tests; no bytes are shown. Each
    source's options (`--source NAME:key=value`) are listed under it; --json gives
    each one's help.
    """
    rows = [describe(s, not no_sample) for s in (specs or tuple(REGISTRY))]
    if as_json:
        echo_json(rows)
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        if r.get("available"):
            health = r.get("health")
            verdict = f"health {health['verdict']}" if health else "not sampled"
            kind = "raw" if r.get("raw") else "conditioned"
            detail = ", ".join(f"{k}={v}" for k, v in (r.get("detail") or {}).items())
            click.echo(f"{r['name']:<{width}}  available    {kind}, H={r['min_entropy']:g}, "
                       f"{verdict}" + (f" [{detail}]" if detail else ""))
            if health and health.get("reason"):
                click.echo(f"{'':<{width}}  {health['reason']}")
        else:
            click.echo(f"{r['name']:<{width}}  unavailable  {r.get('reason', '')}")
        click.echo(f"{'':<{width}}  options: {', '.join(r['options']) or 'none'}")
