"""What the launch commands share on the command line: reading a --params file, saying
the launch id first and at once what Ctrl-C does, progress while the launch engine
(seedtool.launch.base.run_launch) runs, and the closing verdict that names every
instance that exists and how to resume."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..shared.errors import UsageError

if TYPE_CHECKING:
    from ..launch.base import InstanceResult, Launcher, LaunchReport

F = TypeVar("F", bound=Callable[..., Any])


def launch_options(*, call: str, limit: str, tagged: str,
                   params: str | None = None) -> Callable[[F], F]:
    """The options every cloud launch command has, in its cloud's words: --count (one
    `call` and one seed each), --user-data (within `limit`), --params (when `params`
    says what the JSON object holds), --concurrency (`call`s in flight), --launch-id
    (indices `tagged` with the id are not launched again), --json."""
    options = [
        click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1000),
                     help=f"How many instances, each with its own {call} and its own seed."),
        click.option("--user-data", "user_data_path", default=None, metavar="FILE",
                     help="Your user-data (any format cloud-init reads); each instance gets "
                          f"it plus its own seed, within {limit}."),
        *([click.option("--params", "params_path", default=None, metavar="FILE",
                        help=f"JSON object of further {params}")] if params else []),
        click.option("--concurrency", default=4, show_default=True,
                     type=click.IntRange(1, 64),
                     help=f"{call[:1].upper()}{call[1:]}s in flight at once."),
        click.option("--launch-id", default=None, metavar="ID",
                     help=f"Resume or retry an earlier launch: indices already {tagged} "
                          "this id are reported, not launched again; the rest get new seeds."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print the launch id and every instance as JSON (never the seeds)."),
    ]

    def decorate(f: F) -> F:
        for opt in reversed(options):
            f = opt(f)
        return f

    return decorate


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


def launch_with_progress(launcher: Launcher, factory: Any, count: int, *, concurrency: int,
                         resume: bool) -> LaunchReport:
    """`run_launch` with the launch id and notes first, then a progress bar on a
    terminal, else a line per instance."""
    from ..launch.base import run_launch

    def notes(found: list[str]) -> None:
        announce_launch(launcher.launch_id, found)

    if sys.stderr.isatty():
        with ExitStack() as stack:
            bars: list[Any] = []

            def notes_then_bar(found: list[str]) -> None:
                notes(found)
                bars.append(stack.enter_context(
                    click.progressbar(length=count, label="launching", file=sys.stderr)))

            return run_launch(launcher, factory, count, concurrency=concurrency,
                              resume=resume, on_notes=notes_then_bar,
                              on_existing=lambda r: bars[0].update(1),
                              on_done=lambda r: bars[0].update(1))
    done = 0

    def line(r: InstanceResult) -> None:
        nonlocal done
        done += 1
        extra = f": {r.error}" if r.error else ""
        click.echo(f"  [{done}/{count}] index {r.index}: {r.status} {r.instance_id or '-'} "
                   f"(seed {r.seed_id or '-'}){extra}", err=True)

    return run_launch(launcher, factory, count, concurrency=concurrency, resume=resume,
                      on_notes=notes, on_existing=line, on_done=line)


def finish(report: LaunchReport, count: int) -> None:
    """Raise the closing error when not every instance was launched (exit 1, or 130
    after Ctrl-C), naming every instance that exists and how to resume."""
    from ..launch.base import LaunchError, LaunchInterrupted

    message = failure(report.results, count, report.launch_id, report.existing_ids(),
                      report.interrupted)
    if message:
        raise (LaunchInterrupted if report.interrupted else LaunchError)(message)
