"""The early-boot entry point: credit a seed written into the disk image before launch.

Run by `seedtool-early.service` (via the launcher /usr/lib/seedtool/seedtool-early)
as soon as the root file system is writable, before anything can make a host key
or read the kernel CRNG for a long-lived secret. It reads `/var/lib/seedtool/seed`,
hands it to `core.credit_seed`, then wipes and deletes the file whatever the
outcome (the ledger already holds the seed id, so a crash before the delete can
never lead to a second credit). Exit status 0, unless the image's policy is invalid
(a misbuilt image: nothing is credited) or says fail closed and nothing was credited
(1, so systemd shows the unit failed). Standard library only.

Every import here is paid before the seed is credited, under emulation at several
hundred times the native cost: argparse only for explicit arguments (tests), no
pathlib (docs/guest.md "Boot time").
"""

from __future__ import annotations

import os
import sys
import time

from ..shared import envelope
from . import core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

ORIGIN = "disk"
#: how long to wait for a read-only root to be remounted read-write (the unit is not
#: ordered after systemd-remount-fs.service; see wait_until_writable)
WRITABLE_TIMEOUT = 30.0


def wait_until_writable(directory: str, timeout: float = WRITABLE_TIMEOUT,
                        pause: float = 0.02) -> bool:
    """Wait until the file system holding `directory` is mounted read-write; False on timeout.

    The unit is not ordered after systemd-remount-fs.service, which would cost
    seconds of the boot (it waits for the journal and the kernel file systems)
    where the root is read-write from the start (`rw` on the kernel command line).
    Where the initramfs mounted it read-only, systemd-remount-fs remounts it while
    we wait here. The ledger must be written durably before any credit, so the
    caller goes on either way and a still read-only root ends as "ledger not writable".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not os.statvfs(directory).f_flag & os.ST_RDONLY:
                return True
        except OSError:
            return True  # nothing to wait for: the ledger code reports what is wrong
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)


def _instance_identity(root: str) -> str:
    """This machine's identifiers, as local inputs: DMI UUID (root-only) and machine id."""
    parts = []
    for rel in ("sys/class/dmi/id/product_uuid", "etc/machine-id"):
        try:
            with open(os.path.join(root, rel), "rb") as f:
                parts.append(f.read(128).decode("ascii", "replace").strip())
        except OSError:
            continue
    return ";".join(p for p in parts if p)


def wipe_and_delete(path: str | os.PathLike[str]) -> str:
    """Overwrite the seed file with zeros, then unlink it and sync; '' or a short note."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            os.pwrite(fd, b"\x00" * min(size, 1 << 20), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # read-only or odd file: still try to remove it
    try:
        os.unlink(path)
    except FileNotFoundError:
        return ""
    except OSError as e:
        return f"seed file not deleted: {e.strerror}"
    try:
        dfd = os.open(os.path.dirname(os.fspath(path)) or ".",
                      os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return ""


def run(paths: core.Paths, sys_root: str | os.PathLike[str]) -> core.Outcome | None:
    """Credit the seed file if there is one; None when there is none."""
    seed_file = paths.seed_file
    if not os.path.exists(seed_file):
        return None
    wait_until_writable(os.path.dirname(paths.ledger))
    data: bytes | None
    try:
        with open(seed_file, "rb") as f:
            data = f.read(envelope.MAX_TEXT + 1)
    except OSError:
        data = None
    if data is not None and len(data) > envelope.MAX_TEXT:
        data = data[: envelope.MAX_TEXT + 1]  # parse() refuses it as too large
    try:
        outcome = core.credit_seed(
            data if data is not None else b"",
            ORIGIN,
            stage=core.STAGE_EARLY,
            instance_id=_instance_identity(os.fspath(sys_root)),
            paths=paths,
        )
    finally:
        note = wipe_and_delete(seed_file)
    if note:
        outcome.notes.append(note)
    return outcome


def _fails_closed(paths: core.Paths) -> bool:
    """After an internal error: does the policy say fail closed, or is it unreadable
    (a misbuilt image, never a quiet ``fail_closed: false``)?"""
    from .policy import load_policy

    try:
        return load_policy(paths.policy).fail_closed
    except Exception:
        return True


def _arguments(argv: Sequence[str]) -> tuple[str, str | None]:
    import argparse  # only for explicit arguments (tests): the unit passes none

    p = argparse.ArgumentParser(
        prog="seedtool-early",
        description="Credit a seed written into the disk image (/var/lib/seedtool/seed).",
    )
    p.add_argument("--root", default="/", help="root of the image (tests)")
    p.add_argument("--devices", default=None, help="root for /dev and /proc (tests)")
    args = p.parse_args(argv)
    return args.root, args.devices


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root, devices = _arguments(argv) if argv else ("/", None)
    paths = core.Paths.under(root, devices)
    try:
        outcome = run(paths, root)
    except Exception as e:  # never break the boot over a bug; say what happened
        print(f"seedtool-early: internal error ({type(e).__name__}); seed not credited",
              file=sys.stderr)
        return 1 if _fails_closed(paths) else 0
    if outcome is None:
        # the unit does not start without a seed file (ConditionPathExists); run by
        # hand, an invalid policy is still an error
        failure = core.policy_failure(paths)
        if failure:
            print(f"seedtool-early: {failure}", file=sys.stderr)
            return 1
        print("seedtool-early: no seed file; nothing to do", file=sys.stderr)
        return 0
    if not outcome.kmsg_written:
        print(outcome.line(), file=sys.stderr)
    for note in outcome.notes:
        print(f"seedtool-early: {note}", file=sys.stderr)
    failure = outcome.failure()
    if failure:
        print(f"seedtool-early: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
