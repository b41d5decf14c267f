"""What the cloud launch commands (`launch aws`, `launch gce`) share on the command line:
reading a --params file, saying at once what Ctrl-C does, and the closing verdict
that names every instance that exists and how to resume."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from ..launch.runner import InstanceResult
from ..shared.errors import UsageError


def read_params(path: str | None, what: str, example: str) -> dict[str, Any]:
    """The JSON object in a --params file (`what` names its fields for the errors)."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read --params file {path}: {e.strerror}; check the path") \
            from None
    except (ValueError, UnicodeDecodeError):
        raise UsageError(
            f"--params file {path} is not valid JSON; write a JSON object of {what}, "
            f"e.g. {example}"
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"--params file {path} must hold a JSON object of {what}, "
                         "not a list or a value")
    return data


@contextmanager
def announce_interrupt(launch_id: str) -> Iterator[None]:
    """On Ctrl-C say at once that the calls in flight are being waited for."""
    def handler(signum: int, frame: Any) -> None:
        click.echo(
            "seedtool: interrupted; waiting for the calls in flight so every instance "
            f"that exists is reported (launch id {launch_id})", err=True,
        )
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: keep the default behaviour
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def failure(results: Sequence[InstanceResult], count: int, launch_id: str,
            existing: Sequence[str], interrupted: bool) -> str | None:
    """The closing sentence when not every instance was launched, else None."""
    bad = [r for r in results if not r.ok]
    if not bad and not interrupted:
        return None
    indices = ", ".join(str(r.index) for r in bad) or "none"
    have = f"instances that exist: {', '.join(existing)}" if existing else "no instance exists"
    rerun = (f"re-run with --launch-id {launch_id} and the same options to launch the rest "
             "with fresh seeds")
    if interrupted:
        return f"interrupted: {len(bad)} of {count} instances not launched " \
               f"(indices {indices}); {have}; {rerun}"
    return (f"{len(bad)} of {len(results)} instances failed or were not started "
            f"(indices {indices}, reasons in the table); {have}; {rerun}")


def announce_launch(launch_id: str, notes: Sequence[str]) -> None:
    """Say the launch id first (so the user can resume) and the launcher's notes."""
    click.echo(f"seedtool: launch id {launch_id} (to resume or retry: --launch-id {launch_id})",
               err=True)
    for note in notes:
        click.echo(f"seedtool: {note}", err=True)


def launch_with_progress(launcher: Any, count: int, *, concurrency: int, resume: bool) -> Any:
    """Run `launcher.launch` with a progress bar on a terminal, else a line per instance."""
    if sys.stderr.isatty():
        with click.progressbar(length=count, label="launching", file=sys.stderr) as bar:
            return launcher.launch(count, concurrency=concurrency, resume=resume,
                                   on_existing=lambda r: bar.update(1),
                                   on_done=lambda r: bar.update(1))
    done = 0

    def line(r: InstanceResult) -> None:
        nonlocal done
        done += 1
        extra = f": {r.error}" if r.error else ""
        click.echo(f"  [{done}/{count}] index {r.index}: {r.status} {r.instance_id or '-'} "
                   f"(seed {r.seed_id or '-'}){extra}", err=True)

    return launcher.launch(count, concurrency=concurrency, resume=resume,
                           on_existing=line, on_done=line)
