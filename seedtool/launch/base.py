"""The launcher contract and the one launch engine every launcher runs on.

A launcher (one module per cloud or hypervisor) knows only its own API: how to refuse
a request before any seed exists, how to find the instances an earlier run made under
a launch id, and how to make ONE instance with ONE call given user-data that already
holds that instance's seed. Everything else is here, written once:

- seeds: one `SeedFactory.new()` per instance attempt, read by one thread at a time,
  merged into the user's user-data with `deliver.userdata.add_seed` (every user part
  kept), so a retry never reuses a seed and no two instances share one;
- refusals shared by every cloud (user-data that already carries a seed, user-data
  that is not what its header says) before any seed is made;
- the first-call probe: the first create goes alone, so a problem every call would
  hit (credentials, an unknown image, a used-up quota) shows up once and the others
  are not started, instead of N identical failures;
- stop-the-others: after an error that would hit every call alike, no further
  create is started (those indices are reported "not started");
- bounded concurrency, resume by launch id (only the missing indices are made, each
  with a new seed), and Ctrl-C: no new create starts, the calls in flight are waited
  for (their instances may exist) and the report lists every instance that exists;
- one `LaunchReport` and its table.

Why one call and one seed per instance: every instance of a multi-instance call, a
launch template, an instance template, a managed group or a server group gets the
same user-data, and a seed shared by several VMs is worse than none, because each
guest credits it as secret.

The library never prints: progress goes to the callbacks the command passes. No
message made here holds seed bytes, user-data or envelope text.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..clouds import redact
from ..deliver import userdata
from ..shared import envelope
from ..shared.errors import (
    CloudError,
    DeliveryError,
    EnvelopeError,
    SeedtoolError,
    UsageError,
)

LAUNCHED, FAILED, NOT_STARTED, DRY_RUN, EXISTING = (
    "launched",
    "failed",
    "not-started",
    "dry-run-ok",
    "already-launched",
)

#: launch ids most clouds accept in a tag (1-64 letters, digits, '.', '_', '-')
LAUNCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LAUNCH_ID_RULE = "1-64 letters, digits, '.', '_' or '-'"


# --- errors -----------------------------------------------------------------------------


class LaunchError(CloudError):
    """A cloud refused or failed one create. `stops_all`: every further create would
    fail the same way (credentials, permission, a missing image, a bad request, a
    quota), so the engine starts no more of them."""

    stops_all: bool = False


class SharedSeedRefused(UsageError):
    """The request would give several instances one seed."""


class LaunchInterrupted(LaunchError):
    """Ctrl-C stopped a launch; the report lists every instance that exists."""

    exit_code = 130


class CreateAgain(Exception):  # noqa: N818 - a signal to the engine, not an error
    """Raised by `Launcher.create` when its call made nothing and a new call (with a
    new seed and `attempt + 1`) may succeed, e.g. a request id that replayed an
    earlier run's failed operation."""


# --- results ----------------------------------------------------------------------------


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


@dataclass
class LaunchReport:
    """Every index of one launch: made now, found from an earlier run, failed, or not
    started. `fields` are the launcher's own (project and zone, dry run...)."""

    launcher: str
    launch_id: str
    results: list[InstanceResult]
    interrupted: bool
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    #: extra columns of the table (keys of each result's `extra`)
    columns: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.ok for r in self.results)

    def existing_ids(self) -> list[str]:
        """The ids of the instances that exist (made now or by an earlier run)."""
        return [r.instance_id for r in self.results
                if r.instance_id and r.status in (LAUNCHED, EXISTING)]

    def warnings(self) -> list[tuple[InstanceResult, str]]:
        return [(r, str(r.extra["warning"])) for r in self.results if r.extra.get("warning")]

    def as_dict(self) -> dict[str, Any]:
        return {
            "launch_id": self.launch_id,
            **self.fields,
            "interrupted": self.interrupted,
            "instances": [r.as_dict() for r in self.results],
        }


# --- the contract -------------------------------------------------------------------------


class Launcher(ABC):
    """What one cloud or hypervisor supplies to `run_launch`.

    Subclasses set `name`, `target` (the `deliver.userdata` size limit their user-data
    must fit) and, in `__init__`, `launch_id` and `user_data` (the user's own, or None).
    """

    #: the launcher's name, as in `seedtool launch NAME` (its line in launch.LAUNCHERS)
    name: ClassVar[str]
    #: "module:attribute" of the click command `seedtool launch NAME` runs (default
    #: seedtool.commands.launch_NAME:command)
    command: ClassVar[str]
    #: the user-data target whose size limit applies ("raw" for none)
    target: ClassVar[str] = "raw"
    #: extra table columns (keys of each result's `extra`)
    columns: ClassVar[tuple[str, ...]] = ()
    #: how many creates one index may try when `create` raises CreateAgain
    max_attempts: ClassVar[int] = 1

    launch_id: str
    #: the user-data every instance gets, before its seed; `check_request` may set it
    #: from a template the request names
    user_data: bytes | None = None
    dry_run: bool = False
    #: set by `run_launch` before any call: whether this run resumes a launch id
    resuming: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "command" not in cls.__dict__ and "name" in cls.__dict__:
            cls.command = f"seedtool.commands.launch_{cls.name}:command"

    def prepare(self, count: int = 1) -> list[str]:
        """Every refusal, before any seed is made; returns notes for the user.

        The shared ones (user-data that already carries a seed, user-data that is not
        what its header says) around the launcher's own `check_request`."""
        refuse_seeded(self.user_data, "the --user-data file")
        notes = self.check_request(count)
        userdata.check(self.user_data)  # refuse bad input before reading any entropy source
        return notes

    @abstractmethod
    def check_request(self, count: int) -> list[str]:
        """The launcher's own refusals and reads (credentials, parameters, a template's
        user-data, which it checks with `refuse_seeded`); no seed exists yet."""

    @abstractmethod
    def existing(self) -> dict[int, InstanceResult]:
        """The instances an earlier run made under `launch_id` (status EXISTING), by index."""

    @abstractmethod
    def create(self, index: int, user_data: bytes, seed_id: str,
               attempt: int = 0) -> InstanceResult:
        """Make instance `index` with one call carrying `user_data` (which holds the seed
        `seed_id`); return its result (LAUNCHED, DRY_RUN, or EXISTING when the call
        found an earlier run's instance). Raise a SeedtoolError on failure (a
        LaunchError with `stops_all` when every call would fail alike), or CreateAgain."""

    def settle(self, result: InstanceResult) -> InstanceResult:
        """After a successful create, in the same worker: wait for what the launcher
        reports on (a VM's console). Runs after the probe has released the others."""
        return result

    def report_fields(self) -> dict[str, Any]:
        """The launcher's own fields in the report (e.g. project and zone)."""
        return {}

    def interrupt(self) -> None:
        """Ctrl-C: make the calls in flight end soon (a local VM is killed); clouds
        let them finish, since their instances may exist."""
        return None

    def close(self) -> None:
        """Release clients."""
        return None

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- shared helpers ------------------------------------------------------------------------


def new_launch_id(*, lowercase: bool = False) -> str:
    """A fresh launch id: UTC time (for humans) plus 32 random bits (for uniqueness);
    `lowercase` for clouds whose labels allow no capitals."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return (stamp.lower() if lowercase else stamp) + "-" + secrets.token_hex(4)


def check_launch_id(launch_id: str, pattern: re.Pattern[str] = LAUNCH_ID,
                    rule: str = LAUNCH_ID_RULE) -> str:
    if not pattern.fullmatch(launch_id):
        raise UsageError(
            f"launch id '{launch_id[:80]}' is not valid; use the id an earlier run printed "
            f"({rule})"
        )
    return launch_id


def carries_seed(data: bytes | None) -> bool:
    """Whether user-data already carries a seedtool seed: a seed part (even one that
    does not parse), or an envelope in its merged random_seed."""
    if not data:
        return False
    try:
        if len(userdata.parts(data)) != len(userdata.user_parts(data)):
            return True
        found = userdata.find_seed(data)
    except DeliveryError:
        return False
    if found is None:
        return False
    try:
        envelope.parse(found)
    except EnvelopeError:
        return False
    return True


def refuse_seeded(data: bytes | None, what: str, fix: str = "") -> None:
    """SharedSeedRefused when `data` (named `what`) already carries a seed."""
    if carries_seed(data):
        raise SharedSeedRefused(
            f"{what} already carries a seedtool seed, which every instance would share; "
            + (fix or "give your user-data without it and seedtool adds a fresh seed per "
               "instance")
        )


def stops_all(error: SeedtoolError) -> bool:
    """Whether `error` from one create would hit every other create alike."""
    return bool(getattr(error, "stops_all", isinstance(error, UsageError)))


# --- the engine ---------------------------------------------------------------------------


class _Run:
    """The state one `run_launch` shares between its worker threads."""

    def __init__(self, launcher: Launcher, factory: Any) -> None:
        self.launcher = launcher
        self.factory = factory
        self.seed_lock = threading.Lock()
        self.stop_lock = threading.Lock()
        self.stopped_by: int | None = None
        #: set once the probe's create has returned (its settle may still run)
        self.probed = threading.Event()

    def stop_others(self, index: int) -> None:
        with self.stop_lock:
            if self.stopped_by is None:
                self.stopped_by = index

    def one(self, index: int) -> InstanceResult:
        """Seed, user-data and create for one index; never raises a SeedtoolError."""
        try:
            result = self._create(index)
        finally:
            self.probed.set()
        if not result.ok or result.status != LAUNCHED:
            return result
        try:
            return self.launcher.settle(result)
        except SeedtoolError as e:
            result.status, result.error = FAILED, str(e)
            return result

    def _create(self, index: int) -> InstanceResult:
        la = self.launcher
        seed_id: str | None = None
        for attempt in range(max(1, la.max_attempts)):
            if self.stopped_by is not None:
                return InstanceResult(index, NOT_STARTED, error=(
                    f"not started: index {self.stopped_by} failed in a way every launch "
                    "would"))
            try:
                with self.seed_lock:  # sources are read by one thread at a time
                    seed = self.factory.new()
                seed_id = seed.seed_id
                data = userdata.add_seed(la.user_data, seed.text, target=la.target)
                del seed
            except SeedtoolError as e:  # a required source failed, or over the size limit
                self.stop_others(index)
                return InstanceResult(index, FAILED, seed_id=seed_id, error=str(e))
            try:
                return la.create(index, data, seed_id, attempt)
            except CreateAgain:
                continue
            except SeedtoolError as e:
                if stops_all(e):
                    self.stop_others(index)
                return InstanceResult(index, FAILED, seed_id=seed_id, error=str(e))
            finally:
                del data
        return InstanceResult(index, FAILED, seed_id=seed_id, error=(
            f"{la.name}: no create call for index {index} was accepted in "
            f"{la.max_attempts} attempts; start a new launch without --launch-id"))


def run_launch(
    launcher: Launcher,
    factory: Any,
    count: int,
    *,
    concurrency: int = 4,
    resume: bool = False,
    on_notes: Callable[[list[str]], None] | None = None,
    on_existing: Callable[[InstanceResult], None] | None = None,
    on_done: Callable[[InstanceResult], None] | None = None,
) -> LaunchReport:
    """Launch indices 0..count-1 that do not exist yet, each with its own fresh seed
    from `factory` (a `SeedFactory`); report every index.

    Raises (before any seed is made) what `launcher.prepare()` refuses, and what
    `launcher.existing()` raises when resuming; every later failure is a result."""
    if count < 1:
        raise UsageError("--count must be at least 1")
    notes = launcher.prepare(count)
    if on_notes:
        on_notes(notes)
    launcher.resuming = resume
    existing = {i: r for i, r in launcher.existing().items() if i >= 0} if resume else {}
    for r in sorted(existing.values(), key=lambda r: r.index):
        if on_existing:
            on_existing(r)
    todo = [i for i in range(count) if i not in existing]
    run = _Run(launcher, factory)
    results, interrupted = _run_all(todo, run, concurrency=concurrency, on_done=on_done)
    merged = {r.index: r for r in results}
    merged.update(existing)
    return LaunchReport(
        launcher.name, launcher.launch_id, [merged[i] for i in sorted(merged)], interrupted,
        dry_run=launcher.dry_run, notes=list(notes), fields=launcher.report_fields(),
        columns=list(launcher.columns),
    )


def _run_all(
    indices: Sequence[int],
    run: _Run,
    *,
    concurrency: int,
    on_done: Callable[[InstanceResult], None] | None,
) -> tuple[list[InstanceResult], bool]:
    """Every index through `run.one`; (results sorted by index, interrupted?).

    The first index goes alone until its create has returned (the probe); then up to
    `concurrency` run at once. On Ctrl-C no new index starts, `interrupt()` is called,
    the calls in flight are waited for and the rest are marked not started."""
    results: dict[int, InstanceResult] = {}
    pending = list(indices)
    interrupted = False
    concurrency = max(1, concurrency)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        running: dict[Future[InstanceResult], int] = {}
        try:
            while pending or running:
                probing = bool(running) and not run.probed.is_set()
                while pending and len(running) < concurrency and not probing:
                    i = pending.pop(0)
                    running[pool.submit(run.one, i)] = i
                    probing = not run.probed.is_set()
                done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    res = fut.result()
                    results[running.pop(fut)] = res
                    if on_done:
                        on_done(res)
        except KeyboardInterrupt:
            interrupted = True
            run.launcher.interrupt()
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
    lines = ["  ".join(h.ljust(widths[k]) for k, h in enumerate(head)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(widths[k]) for k, c in enumerate(row)).rstrip())
    return "\n".join(lines)


__all__ = [
    "DRY_RUN",
    "EXISTING",
    "FAILED",
    "LAUNCHED",
    "LAUNCH_ID",
    "NOT_STARTED",
    "CreateAgain",
    "InstanceResult",
    "LaunchError",
    "LaunchInterrupted",
    "LaunchReport",
    "Launcher",
    "SharedSeedRefused",
    "carries_seed",
    "check_launch_id",
    "new_launch_id",
    "redact",
    "refuse_seeded",
    "render_table",
    "run_launch",
    "stops_all",
]
