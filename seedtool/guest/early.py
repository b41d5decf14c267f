"""The early-boot entry point: credit a seed written into the disk image before launch.

Run by `seedtool-early.service` (via the launcher /usr/lib/seedtool/seedtool-early)
as soon as the root file system is writable, before anything can make a host key
or read the kernel CRNG for a long-lived secret. It reads `/var/lib/seedtool/seed`,
hands it to `core.credit_seed`, then wipes and deletes the file whatever the
outcome (the ledger already holds the seed id, so a crash before the delete can
never lead to a second credit). Exit status 0, unless the policy says fail closed
and nothing was credited (1). Standard library only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import envelope
from . import core

ORIGIN = "disk"


def _instance_identity(root: Path) -> str:
    """This machine's identifiers, as local inputs: DMI UUID (root-only) and machine id."""
    parts = []
    for rel in ("sys/class/dmi/id/product_uuid", "etc/machine-id"):
        try:
            with open(root / rel, "rb") as f:
                parts.append(f.read(128).decode("ascii", "replace").strip())
        except OSError:
            continue
    return ";".join(p for p in parts if p)


def wipe_and_delete(path: Path) -> str:
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
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return ""


def run(paths: core.Paths, sys_root: Path) -> core.Outcome | None:
    """Credit the seed file if there is one; None when there is none."""
    seed_file = paths.seed_file
    if not seed_file.exists():
        return None
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
            instance_id=_instance_identity(sys_root),
            paths=paths,
        )
    finally:
        note = wipe_and_delete(seed_file)
    if note:
        outcome.notes.append(note)
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="seedtool-early",
        description="Credit a seed written into the disk image (/var/lib/seedtool/seed).",
    )
    p.add_argument("--root", default="/", help="root of the image (tests)")
    p.add_argument("--devices", default=None, help="root for /dev and /proc (tests)")
    args = p.parse_args(argv)
    paths = core.Paths.under(args.root, args.devices)
    try:
        outcome = run(paths, Path(args.root))
    except Exception as e:  # never break the boot over a bug; say what happened
        print(f"seedtool-early: internal error ({type(e).__name__}); seed not credited",
              file=sys.stderr)
        return 0
    if outcome is None:
        print("seedtool-early: no seed file; nothing to do", file=sys.stderr)
        return 0
    if not outcome.kmsg_written:
        print(outcome.line(), file=sys.stderr)
    for note in outcome.notes:
        print(f"seedtool-early: {note}", file=sys.stderr)
    if outcome.fail_closed and not outcome.credited:
        print("seedtool-early: seed not credited and the policy says fail_closed",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
