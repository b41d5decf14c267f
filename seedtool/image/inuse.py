"""Refusals before an image file is opened: that it may be written, is not readable by
others (when it is to hold a seed), is not mounted or attached to a loop device, and is
not in use by a QEMU; and the OFD lock held on a raw image while seedtool writes it.

Looks only at the file and the host (mode bits, /proc/self/mountinfo, /sys/block,
fcntl locks), never inside the image.
"""

from __future__ import annotations

import fcntl
import os
import stat as stat_mod
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from ..shared.errors import DeliveryError

PROC_MOUNTINFO = "/proc/self/mountinfo"
SYS_BLOCK = "/sys/block"


class ImageRefused(DeliveryError):
    """The image must not be changed as asked (in use, read-only, booted, seeded...)."""


def check_writable(path: str) -> None:
    """Refuse a missing, non-regular or read-only image (mode bits, access, mount flags)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DeliveryError(f"cannot use image {path}: {e.strerror}; check the path") from None
    if not stat_mod.S_ISREG(st.st_mode):
        raise ImageRefused(
            f"{path} is not a regular file; seedtool image seed writes image files only "
            "(write a block device's image before copying it to the device)"
        )
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        raise ImageRefused(
            f"{path} is on a read-only file system; copy the image somewhere writable "
            "and seed the copy"
        )
    # root may write a 0444 file, but a mode without write bits says "do not change"
    if not st.st_mode & 0o222 or not os.access(path, os.W_OK):
        raise ImageRefused(
            f"{path} is read-only (mode {stat_mod.S_IMODE(st.st_mode):04o}); seed a "
            "writable copy of it, or `chmod u+w` it if it is meant to change"
        )


def check_not_readable(path: str) -> None:
    """Refuse an image that group or others may read: its seed would be theirs.

    The mode's group bits are also the mask of any POSIX ACL (acl(5)), so 0600 leaves
    no named user or group an entry that grants reading."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DeliveryError(f"cannot use image {path}: {e.strerror}; check the path") from None
    if st.st_mode & 0o044:
        raise ImageRefused(
            f"{path} is readable by group or others (mode "
            f"{stat_mod.S_IMODE(st.st_mode):04o}), so its seed would be every local "
            f"user's; run `chmod 600 {path}` first, or pass --allow-readable-image if "
            "everyone who can read it may have the seed"
        )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _mounts() -> list[tuple[str, str, str]]:
    """(major:minor, mount point, source) from mountinfo (proc(5))."""
    out = []
    try:
        with open(PROC_MOUNTINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if "-" not in fields:
                    continue
                sep = fields.index("-")
                if len(fields) > sep + 2 and len(fields) > 4:
                    unesc = fields[4].replace("\\040", " ")
                    out.append((fields[2], unesc, fields[sep + 2].replace("\\040", " ")))
    except OSError:
        pass
    return out


def _loop_devices(path: str) -> list[tuple[str, list[str]]]:
    """Loop devices backed by `path`: (name, its and its partitions' major:minor)."""
    found = []
    try:
        names = sorted(n for n in os.listdir(SYS_BLOCK) if n.startswith("loop"))
    except OSError:
        return []
    for name in names:
        try:
            with open(os.path.join(SYS_BLOCK, name, "loop", "backing_file")) as f:
                backing = f.read().strip()
        except OSError:
            continue  # not attached
        if backing.endswith(" (deleted)"):
            continue
        if not _same_file(backing, path):
            continue
        devs = []
        base = os.path.join(SYS_BLOCK, name)
        for sub in [base] + [os.path.join(base, p) for p in os.listdir(base)
                             if p.startswith(name + "p")]:
            try:
                with open(os.path.join(sub, "dev")) as f:
                    devs.append(f.read().strip())
            except OSError:
                pass
        found.append((name, devs))
    return found


def check_not_mounted(path: str) -> None:
    """Refuse an image that is mounted or attached to a loop device."""
    mounts = _mounts()
    for _dev, point, source in mounts:
        if source.startswith("/") and _same_file(source, path):
            raise ImageRefused(
                f"{path} is mounted at {point}; unmount it first (changing a mounted file "
                "system behind the kernel's back corrupts it)"
            )
    for loop, devs in _loop_devices(path):
        points = [pt for dev, pt, _s in mounts if dev in devs]
        where = f" and mounted at {points[0]}" if points else ""
        raise ImageRefused(
            f"{path} is attached to /dev/{loop}{where}; unmount it and detach the loop "
            f"device (losetup -d /dev/{loop}) first"
        )


_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86-64 and arm64


def check_not_locked(fd: int, path: str) -> None:
    """Refuse an image another process holds a POSIX or OFD lock on.

    QEMU (and qemu-nbd, qemu-img, libguestfs's QEMU) lock single bytes of every image
    they open with OFD locks (QEMU's block/file-posix.c, raw_apply_lock_bytes), so any
    lock that would conflict with a whole-file write lock means the image is in use.
    """
    getlk = getattr(fcntl, "F_OFD_GETLK", 36)
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        got = fcntl.fcntl(fd, getlk, probe)
    except OSError:
        got = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
    l_type, _whence, _start, _len, pid = _FLOCK.unpack(got)
    if l_type != fcntl.F_UNLCK:
        who = f" (process {pid})" if pid > 0 else ""
        raise ImageRefused(
            f"{path} is in use{who}: a QEMU or other program holds a lock on it; stop the "
            "VM or tool using it first"
        )


@contextmanager
def exclusive(path: str) -> Iterator[int]:
    """Open the image read-write, refuse it if it is in use, and hold an OFD write lock
    on it meanwhile so a QEMU cannot start on it while we write (it would fail its own
    lock). Not for the libguestfs path, whose QEMU takes its own lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise ImageRefused(
            f"cannot open {path} for writing: {e.strerror}; seed a writable copy"
        ) from None
    try:
        check_not_locked(fd, path)
        setlk = getattr(fcntl, "F_OFD_SETLK", 37)
        try:
            fcntl.fcntl(fd, setlk, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        except OSError:
            raise ImageRefused(
                f"{path} is in use: another program locked it just now; try again when it "
                "is done"
            ) from None
        yield fd
    finally:
        os.close(fd)

