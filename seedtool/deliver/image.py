"""Seeding a disk image before its first boot: `seed_image()` and `open_image()`.

`seed_image` writes a fresh envelope (base64 text, as `seedtool generate` writes it) to
`/var/lib/seedtool/seed` (0600, root:root; `/var/lib/seedtool` 0700 if it has to be
made) inside a disk image, for the guest's early-boot unit to verify and credit.

Choosing how (`open_image`):

* a raw image whose Linux root is ext2/3/4, whole-disk or in a GPT/MBR partition we
  read ourselves (`partitions.py`), goes through `debugfs` (fast, no root, no mounts);
  with several candidate partitions the one with `/etc/os-release` or
  `/usr/lib/os-release` is the root (os-release(5) names those two places);
* anything else (qcow2, vmdk, vhdx, vdi, vhd by their magic; xfs, btrfs or LVM inside a
  raw image) goes through libguestfs, whose inspection finds the root.

Refusals, each before anything is written: the image is not a regular file, is
read-only, is mounted or attached to a loop device, is in use (a QEMU or qemu-nbd
holds an OFD lock on it), has no Linux root, its ext4 journal needs recovery, it still
holds an unconsumed seed (`force` replaces it), or it has booted with seedtool already
(ledger or status present; `force` seeds it anyway for its own next boot). The seed is
made only once every check has passed, and is never printed or logged.
"""

from __future__ import annotations

import fcntl
import os
import stat as stat_mod
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import DeliveryError
from .debugfs import DebugfsError, DebugfsTarget
from .fs import TargetFS
from .partitions import Partition, PartitionTable, read_partitions

SEED_DIR = "/var/lib/seedtool"
SEED_PATH = SEED_DIR + "/seed"
#: the guest writes these once it has booted with seedtool (seedtool.guest.core)
BOOTED_MARKERS = (SEED_DIR + "/ledger", SEED_DIR + "/status.json")
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")

PROC_MOUNTINFO = "/proc/self/mountinfo"
SYS_BLOCK = "/sys/block"

# image formats QEMU knows, by their magic at offset 0 (QEMU's block/*.c probes)
_FORMAT_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"QFI\xfb", "qcow2"),
    (b"QED\x00", "qed"),
    (b"KDMV", "vmdk"),
    (b"COWD", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (b"conectix", "vpc"),
)
_VDI_MAGIC = 0xBEDA107F  # u32 LE at 0x40
_EXT_MAGIC = 0xEF53  # superblock at 1024, s_magic at +0x38 (ext4 on-disk layout)
_EXT_INCOMPAT_RECOVER = 0x4  # s_feature_incompat at +0x60: journal needs recovery


class ImageRefused(DeliveryError):
    """The image must not be changed as asked (in use, read-only, booted, seeded...)."""


class NoLinuxRoot(ImageRefused):
    """No Linux root file system was found in the image."""


class _ImageFS(TargetFS, Protocol):
    def rmdir(self, path: str) -> None: ...


@dataclass
class OpenedImage:
    fs: _ImageFS
    backend: str  # "debugfs" or "libguestfs"
    format: str  # "raw", "qcow2", ...
    partition: int | None  # the partition used, None for a whole-disk file system
    why: str  # how the root was chosen, for the user
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SeedResult:
    image: str
    seed_id: str
    backend: str
    partition: int | None
    target: str  # the backend's description of what was written to
    why: str
    replaced: bool  # an earlier seed or a booted state was overridden with force
    summary: Mapping[str, Any]  # the envelope summary: never the seed
    warnings: tuple[str, ...] = ()


class _MakesSeeds(Protocol):
    def new(self) -> Any: ...  # a seedtool.generate.NewSeed


# ---- what the image is ------------------------------------------------------------------


def _read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def detect_format(path: str) -> str:
    """QEMU's name for the image format, by magic; "raw" if none matches."""
    head = _read_at(path, 0, 512)
    for magic, name in _FORMAT_MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 0x44 and struct.unpack_from("<I", head, 0x40)[0] == _VDI_MAGIC:
        return "vdi"
    size = os.path.getsize(path)
    if size >= 512 and size % 512 == 0 and _read_at(path, size - 512, 8) == b"conectix":
        return "vpc"  # a fixed VHD: raw data plus a footer QEMU must not write over
    return "raw"


def filesystem_at(path: str, offset: int) -> str | None:
    """"ext", "xfs", "btrfs", "lvm", "luks" or None, by superblock magic at `offset`."""
    sb = _read_at(path, offset + 1024, 0x64)
    if len(sb) >= 0x3A and struct.unpack_from("<H", sb, 0x38)[0] == _EXT_MAGIC:
        return "ext"
    head = _read_at(path, offset, 4096)
    if head[:4] == b"XFSB":
        return "xfs"
    if head[:6] == b"LUKS\xba\xbe":
        return "luks"
    if any(head[s:s + 8] == b"LABELONE" for s in range(0, 2048, 512)):
        return "lvm"
    if _read_at(path, offset + 0x10040, 8) == b"_BHRfS_M":
        return "btrfs"
    return None


def _ext_needs_recovery(path: str, offset: int) -> bool:
    sb = _read_at(path, offset + 1024, 0x64)
    return len(sb) >= 0x64 and bool(struct.unpack_from("<I", sb, 0x60)[0]
                                    & _EXT_INCOMPAT_RECOVER)


# ---- refusals that need no look inside ------------------------------------------------------


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


# ---- finding the root -------------------------------------------------------------------


def _has_os_release(fs: TargetFS) -> bool:
    return any(fs.stat(p) is not None for p in OS_RELEASE)


def _require_root(opened: OpenedImage) -> OpenedImage:
    if _has_os_release(opened.fs):
        return opened
    opened.fs.close()
    raise NoLinuxRoot(
        f"no Linux root was found in {opened.fs.description}: it has no /etc/os-release or "
        "/usr/lib/os-release; check it is the right image (or partition)"
    )


def _partition_label(table: PartitionTable, p: Partition) -> str:
    return f"partition {p.number} ({table.scheme.upper()}, {p.kind}, {p.type})"


def _open_guestfs(path: str, fmt: str, partition: int | None, why: str,
                  warnings: list[str]) -> OpenedImage:
    from .guestfs import GuestfsNoRoot, GuestfsTarget

    root = f"/dev/sda{partition}" if partition is not None else None
    try:
        fs = GuestfsTarget(path, fmt=fmt, root=root)
    except GuestfsNoRoot as e:
        raise NoLinuxRoot(str(e)) from None
    if not _has_os_release(fs):
        fs.close()
        raise NoLinuxRoot(
            f"{fs.description} has no /etc/os-release or /usr/lib/os-release, so it is "
            "not a Linux root; name the root partition with --partition"
        )
    return OpenedImage(fs, "libguestfs", fmt, partition, why, warnings)


def open_image(path: str, partition: int | None = None, backend: str = "auto"
               ) -> OpenedImage:
    """Open the Linux root of the image at `path` for reading and writing.

    backend: "auto" (debugfs for raw ext, else libguestfs), "debugfs" or "libguestfs".
    Does not check whether the image is in use; `seed_image` does that first.
    """
    if backend not in ("auto", "debugfs", "libguestfs"):
        raise DeliveryError(f"unknown backend {backend!r}; use auto, debugfs or libguestfs")
    fmt = detect_format(path)
    if fmt != "raw":
        if backend == "debugfs":
            raise DeliveryError(
                f"{path} is a {fmt} image; debugfs reads raw images only: use the "
                "libguestfs backend or convert it (qemu-img convert -O raw)"
            )
        return _open_guestfs(path, fmt, partition, f"{fmt} image, root found by libguestfs",
                             [])
    if backend == "libguestfs":
        return _open_guestfs(path, "raw", partition, "raw image, root found by libguestfs", [])
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
            return _require_root(_open_ext(path, 0, None, "whole-disk file system", warnings))
        if kind in ("xfs", "btrfs", "lvm") and backend == "auto":
            return _open_guestfs(path, "raw", None, f"whole-disk {kind}", warnings)
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
        why = f"{_partition_label(table, p)}, chosen with --partition"
        if kind == "ext":
            return _require_root(_open_ext(path, p.start, p.number, why, warnings))
        if backend == "auto" and kind in ("xfs", "btrfs", "lvm"):
            return _open_guestfs(path, "raw", p.number, why, warnings)
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
    roots: list[OpenedImage] = []
    try:
        for p in ext_parts:
            opened = _open_ext(path, p.start, p.number, _partition_label(table, p), warnings)
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
        return _open_guestfs(path, "raw", None,
                             f"no ext root; partitions {', '.join(other)} need libguestfs",
                             warnings)
    raise NoLinuxRoot(
        f"no Linux root was found in {path}: no partition has a file system with "
        "/etc/os-release; check it is the right image, or name the root with --partition"
    )


def _root_typed(table: PartitionTable, number: int | None) -> bool:
    p = table.get(number) if number is not None else None
    return p is not None and p.kind.startswith("root-")


def _open_ext(path: str, offset: int, number: int | None, why: str,
              warnings: list[str]) -> OpenedImage:
    if _ext_needs_recovery(path, offset):
        raise ImageRefused(
            f"the ext4 file system in {path}"
            + (f" (partition {number})" if number else "")
            + " was not cleanly unmounted (its journal needs recovery), so it may be in "
            "use; shut the VM down cleanly, or run e2fsck on it, then try again"
        )
    where = f"partition {number}" if number is not None else "whole disk"
    fs = DebugfsTarget(path, offset,
                       description=f"{os.path.basename(path)} (ext4, {where}, debugfs)")
    return OpenedImage(fs, "debugfs", "raw", number, why, warnings)


# ---- seeding ----------------------------------------------------------------------------


def _refuse_if_used(fs: TargetFS, path: str, force: bool) -> bool:
    """Raise if the image has booted with seedtool or holds a seed (unless force);
    return True if force overrides either."""
    booted = [m for m in BOOTED_MARKERS if fs.stat(m) is not None]
    seeded = fs.stat(SEED_PATH) is not None
    if booted and not force:
        raise ImageRefused(
            f"{path} has already booted with seedtool ({booted[0]} exists): a disk that "
            "has booted holds per-VM state (host keys, machine-id, the ledger) and must "
            "not be re-seeded for cloning; use --force to seed it for its own next boot"
        )
    if seeded and not force:
        raise ImageRefused(
            f"{path} already holds an unconsumed seed ({SEED_PATH}); it has not booted "
            "since it was seeded: use --force to replace that seed"
        )
    return bool(booted or seeded)


def seed_image(path: str, factory: _MakesSeeds, partition: int | None = None,
               force: bool = False, backend: str = "auto") -> SeedResult:
    """Write one fresh envelope from `factory.new()` into the image at `path`.

    Every refusal happens before the seed is made; on failure nothing is left behind
    (no seed file, no directory we created).
    """
    path = os.fspath(path)
    check_writable(path)
    check_not_mounted(path)
    fmt = detect_format(path)
    if fmt == "raw" and backend != "libguestfs":
        with exclusive(path):
            opened = open_image(path, partition, backend)
            try:
                return _seed_opened(path, opened, factory, force)
            finally:
                opened.fs.close()
    # libguestfs: QEMU takes its own lock, so only look for another holder first
    with exclusive(path):
        pass
    opened = open_image(path, partition, backend)
    ok = False
    try:
        result = _seed_opened(path, opened, factory, force)
        ok = True
    finally:
        if ok:
            opened.fs.close()
        else:
            try:
                opened.fs.close()
            except DeliveryError:
                pass
    return result


def _seed_opened(path: str, opened: OpenedImage, factory: _MakesSeeds, force: bool
                 ) -> SeedResult:
    fs = opened.fs
    replaced = _refuse_if_used(fs, path, force)
    made_dir = fs.stat(SEED_DIR) is None
    if not made_dir:
        st = fs.stat(SEED_DIR)
        if st is not None and not stat_mod.S_ISDIR(st.mode):
            raise ImageRefused(
                f"{SEED_DIR} in {path} exists but is not a directory; the image is not "
                "laid out as seedtool expects: remove it"
            )
    seed = factory.new()
    text = (seed.text + "\n").encode("ascii")
    try:
        if made_dir:
            fs.mkdir(SEED_DIR, 0o700)
        fs.write(SEED_PATH, text, mode=0o600, uid=0, gid=0)
    except BaseException:
        if made_dir:
            try:
                fs.rmdir(SEED_DIR)
            except (DeliveryError, DebugfsError):
                pass
        raise
    return SeedResult(
        image=path,
        seed_id=seed.seed_id,
        backend=opened.backend,
        partition=opened.partition,
        target=fs.description,
        why=opened.why,
        replaced=replaced,
        summary=dict(seed.summary),
        warnings=tuple(opened.warnings),
    )
