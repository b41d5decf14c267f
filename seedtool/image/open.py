"""Opening a target: `open_target(Root(dir) | Image(disk), writable=..., partition=...,
backend=...)`, the one way `seedtool image seed`, `seedtool bake` and `bake --check` get
a `TargetFS`.

A directory (a chroot, `/` in a Packer build) is opened as it is (`localfs.py`). A disk
image first gets the refusals of `inuse.py` (writable when written, not mounted or
attached to a loop device, not in use by a QEMU; an OFD lock is held on a raw image
while the debugfs backend writes it), then its Linux root is found:

* a raw image whose Linux root is ext2/3/4, whole-disk or in a GPT/MBR partition read
  by `partitions.py`, goes through `debugfs` (fast, no root, no mounts); with several
  candidate partitions the one with `/etc/os-release` or `/usr/lib/os-release` is the
  root (os-release(5) names those two places), and a journal that needs recovery is
  refused (the file system may be in use);
* anything else (qcow2, vmdk, vhdx, vdi, vhd by their magic; xfs, btrfs or LVM inside a
  raw image) goes through libguestfs, whose inspection finds the root; it mounts
  read-only when the target is not to be written.

The target is closed (a disk image flushed) when the `with` block ends; a failure
inside the block is reported rather than a failure to close after it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..shared.errors import DeliveryError, SeedtoolError
from .debugfs import DebugfsTarget
from .formats import detect_format, ext_needs_recovery, filesystem_at
from .fs import TargetFS
from .inuse import ImageRefused, check_not_mounted, check_not_readable, check_writable, exclusive
from .partitions import Partition, PartitionTable, read_partitions

OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
BACKENDS = ("auto", "debugfs", "libguestfs")


class NoLinuxRoot(ImageRefused):
    """No Linux root file system was found in the image."""


@dataclass(frozen=True)
class Root:
    """A directory that is the target's root: a chroot, an unpacked tree, or `/`."""

    path: str


@dataclass(frozen=True)
class Image:
    """A disk image file (raw, qcow2, vmdk, ...)."""

    path: str


@dataclass
class OpenedTarget:
    fs: TargetFS
    backend: str  # "directory", "debugfs" or "libguestfs"
    format: str  # "directory", "raw", "qcow2", ...
    partition: int | None  # the partition used, None for a whole-disk file system
    why: str  # how the root was chosen, for the user
    warnings: list[str] = field(default_factory=list)


@contextlib.contextmanager
def open_target(target: Root | Image, *, writable: bool, partition: int | None = None,
                backend: str = "auto", allow_readable: bool = True
                ) -> Iterator[OpenedTarget]:
    """The opened target, closed at the end of the `with` block.

    `writable`: the caller will write (an image must be writable, and is locked or
    probed for other users). `allow_readable=False` refuses an image that group or
    others may read, as one that is to hold a seed must not be. `partition` and
    `backend` ("auto", "debugfs", "libguestfs") choose how an image is opened.
    """
    if isinstance(target, Root):
        if partition is not None or backend != "auto":
            raise DeliveryError(f"directory {target.path} has no partitions or backends to "
                                "choose; give them for disk images only")
        from .localfs import LocalFS

        opened = OpenedTarget(LocalFS(target.path), "directory", "directory", None,
                              "a directory")
        with _closing(opened):
            yield opened
        return
    path = os.fspath(target.path)
    if backend not in BACKENDS:
        raise DeliveryError(f"unknown backend {backend!r}; use auto, debugfs or libguestfs")
    if writable:
        check_writable(path)
    elif not os.path.exists(path):
        raise DeliveryError(f"cannot use image {path}: it does not exist; check the path")
    if not allow_readable:
        check_not_readable(path)
    check_not_mounted(path)
    lock: Any = contextlib.nullcontext()
    if writable and detect_format(path) == "raw" and backend != "libguestfs":
        lock = exclusive(path)
    elif writable:
        # libguestfs: its QEMU takes its own lock, so only look for another holder first
        with exclusive(path):
            pass
    with lock:
        opened = _open_image(path, partition, backend, readonly=not writable)
        with _closing(opened):
            yield opened


@contextlib.contextmanager
def _closing(opened: OpenedTarget) -> Iterator[None]:
    """Close the target after the block; a failure to close is raised only when the
    block itself succeeded (otherwise the block's own error is the one to report)."""
    ok = False
    try:
        yield
        ok = True
    finally:
        try:
            opened.fs.close()
        except SeedtoolError:
            if ok:
                raise


# ---- finding the root -------------------------------------------------------------------


def _has_os_release(fs: TargetFS) -> bool:
    return any(fs.stat(p) is not None for p in OS_RELEASE)


def _require_root(opened: OpenedTarget) -> OpenedTarget:
    if _has_os_release(opened.fs):
        return opened
    opened.fs.close()
    raise NoLinuxRoot(
        f"no Linux root was found in {opened.fs.description}: it has no /etc/os-release or "
        "/usr/lib/os-release; check it is the right image (or partition)"
    )


def partition_label(table: PartitionTable, p: Partition) -> str:
    return f"partition {p.number} ({table.scheme.upper()}, {p.kind}, {p.type})"


def _open_guestfs(path: str, readonly: bool, fmt: str, partition: int | None, why: str,
                  warnings: list[str]) -> OpenedTarget:
    from .guestfs import GuestfsNoRoot, GuestfsTarget

    root = f"/dev/sda{partition}" if partition is not None else None
    try:
        fs = GuestfsTarget(path, fmt=fmt, root=root, readonly=readonly)
    except GuestfsNoRoot as e:
        raise NoLinuxRoot(str(e)) from None
    if not _has_os_release(fs):
        fs.close()
        raise NoLinuxRoot(
            f"{fs.description} has no /etc/os-release or /usr/lib/os-release, so it is "
            "not a Linux root; name the root partition with --partition"
        )
    return OpenedTarget(fs, "libguestfs", fmt, partition, why, warnings)


def _open_image(path: str, partition: int | None, backend: str, readonly: bool
                ) -> OpenedTarget:
    """Open the Linux root of the image at `path` (libguestfs mounts it read-only when
    `readonly`; debugfs writes only when asked to). Does not check whether the image
    is in use: `open_target` does that first."""
    if backend not in ("auto", "debugfs", "libguestfs"):
        raise DeliveryError(f"unknown backend {backend!r}; use auto, debugfs or libguestfs")
    fmt = detect_format(path)
    if fmt != "raw":
        if backend == "debugfs":
            raise DeliveryError(
                f"{path} is a {fmt} image; debugfs reads raw images only: use the "
                "libguestfs backend or convert it (qemu-img convert -O raw)"
            )
        return _open_guestfs(path, readonly, fmt, partition,
                             f"{fmt} image, root found by libguestfs", [])
    if backend == "libguestfs":
        return _open_guestfs(path, readonly, "raw", partition,
                             "raw image, root found by libguestfs", [])
    table = read_partitions(path)
    warnings = list(table.warnings)
    if table.scheme == "none":
        if partition is not None:
            raise DeliveryError(
                f"{path} has no partition table, so there is no partition {partition}; "
                "leave out --partition"
            )
        kind = filesystem_at(path, 0)
        if kind == "ext":
            return _require_root(open_ext(path, 0, None, "whole-disk file system", warnings))
        if kind in ("xfs", "btrfs", "lvm") and backend == "auto":
            return _open_guestfs(path, readonly, "raw", None, f"whole-disk {kind}", warnings)
        raise NoLinuxRoot(
            f"{path} has no partition table and no Linux file system the fast path reads "
            f"({kind or 'nothing recognised'}); check it is the right image"
        )
    if partition is not None:
        p = table.get(partition)
        if p is None or p.kind == "extended":
            nums = ", ".join(str(q.number) for q in table.partitions if q.kind != "extended")
            raise DeliveryError(
                f"{path} has no partition {partition} holding a file system (it has: "
                f"{nums or 'none'}); pick one of those"
            )
        kind = filesystem_at(path, p.start)
        why = f"{partition_label(table, p)}, chosen with --partition"
        if kind == "ext":
            return _require_root(open_ext(path, p.start, p.number, why, warnings))
        if backend == "auto" and kind in ("xfs", "btrfs", "lvm"):
            return _open_guestfs(path, readonly, "raw", p.number, why, warnings)
        raise NoLinuxRoot(
            f"partition {partition} of {path} holds no file system seedtool can write "
            f"({kind or 'nothing recognised'}); pick the Linux root partition"
        )
    ext_parts: list[Partition] = []
    other: list[str] = []
    for p in table.partitions:
        if p.kind == "extended":
            continue
        kind = filesystem_at(path, p.start)
        if kind == "ext":
            ext_parts.append(p)
        elif kind in ("xfs", "btrfs", "lvm"):
            # blank or unrecognised partitions are not worth an appliance boot
            other.append(f"{p.number}:{kind}")
    roots: list[OpenedTarget] = []
    try:
        for p in ext_parts:
            opened = open_ext(path, p.start, p.number, partition_label(table, p), warnings)
            if _has_os_release(opened.fs):
                roots.append(opened)
            else:
                opened.fs.close()
        if len(roots) > 1:
            typed = [r for r in roots if _root_typed(table, r.partition)]
            if len(typed) == 1:
                chosen = typed[0]
                chosen.why += ": the only root-typed partition with os-release"
            else:
                nums = ", ".join(str(r.partition) for r in roots)
                raise ImageRefused(
                    f"{path} has several Linux roots (partitions {nums}); name the one to "
                    "seed with --partition"
                )
        elif len(roots) == 1:
            chosen = roots[0]
            n = len(ext_parts)
            chosen.why += (": the only ext partition" if n == 1 else
                           f": the only one of {n} ext partitions with os-release")
        else:
            chosen = None
    except BaseException:
        for r in roots:
            r.fs.close()
        raise
    for r in roots:
        if r is not chosen:
            r.fs.close()
    if chosen is not None:
        return chosen
    if other and backend == "auto":
        return _open_guestfs(path, readonly, "raw", None,
                             f"no ext root; partitions {', '.join(other)} need libguestfs",
                             warnings)
    raise NoLinuxRoot(
        f"no Linux root was found in {path}: no partition has a file system with "
        "/etc/os-release; check it is the right image, or name the root with --partition"
    )


def _root_typed(table: PartitionTable, number: int | None) -> bool:
    p = table.get(number) if number is not None else None
    return p is not None and p.kind.startswith("root-")


def open_ext(path: str, offset: int, number: int | None, why: str,
              warnings: list[str]) -> OpenedTarget:
    if ext_needs_recovery(path, offset):
        raise ImageRefused(
            f"the ext4 file system in {path}"
            + (f" (partition {number})" if number else "")
            + " was not cleanly unmounted (its journal needs recovery), so it may be in "
            "use; shut the VM down cleanly, or run e2fsck on it, then try again"
        )
    where = f"partition {number}" if number is not None else "whole disk"
    fs = DebugfsTarget(path, offset,
                       description=f"{os.path.basename(path)} (ext4, {where}, debugfs)")
    return OpenedTarget(fs, "debugfs", "raw", number, why, warnings)

