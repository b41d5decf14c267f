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

Where the booted system reads it (`fstab.py`): the root's /etc/fstab may mount /var,
/var/lib or /var/lib/seedtool from a file system of its own; then the seed, and the
"already booted" checks (ledger, status), go to that file system at the path below its
mount point, and nothing is written into the root's directory, which that mount hides.
Sources are matched against the image's own file systems: `UUID=` and `LABEL=` from
ext superblocks (or `blkid -p` for other types), `PARTUUID=` and `PARTLABEL=` from the
partition table (`partitions.py`). What does not resolve to a file system of this
image that the chosen backend writes is refused, naming the mount.

Refusals, each before anything is written: the image is not a regular file, is
readable by group or others (it would give its seed to every local user, like any
other seed carrier that is not 0600; `allow_readable` accepts that), is read-only, is
mounted or attached to a loop device, is in use (a QEMU or qemu-nbd
holds an OFD lock on it), has no Linux root, its ext4 journal needs recovery, it still
holds an unconsumed seed (`force` replaces it), or it has booted with seedtool already
(ledger or status present; `force` seeds it anyway for its own next boot). The seed is
made only once every check has passed, and is never printed or logged.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat as stat_mod
import struct
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..image.debugfs import DebugfsError, DebugfsTarget
from ..image.fs import TargetFS
from ..image.fstab import (
    FSTAB_MAX,
    MountEntry,
    MountRefused,
    Placement,
    Volume,
    check_mounted,
    parse_fstab,
    place,
)
from ..image.partitions import Partition, PartitionTable, read_partitions
from ..shared.errors import DeliveryError

SEED_DIR = "/var/lib/seedtool"
SEED_PATH = SEED_DIR + "/seed"
#: the guest writes these once it has booted with seedtool (seedtool.guest.core)
BOOTED_MARKERS = (SEED_DIR + "/ledger", SEED_DIR + "/status.json")
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
FSTAB = "/etc/fstab"
#: mount units for SEED_DIR's path (systemd.mount(5): named after the escaped mount
#: point) in the unit directories an image carries (systemd.unit(5), unit load path)
MOUNT_UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system")
MOUNT_UNITS = ("var.mount", "var-lib.mount", "var-lib-seedtool.mount")

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
# s_uuid[16] at +0x68, s_volume_name[16] at +0x78 (the kernel's
# Documentation/filesystems/ext4/super.rst; struct ext4_super_block in fs/ext4/ext4.h)
_EXT_UUID, _EXT_LABEL = 0x68, 0x78


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
    #: the path written inside the file system that holds it (below its mount point)
    seed_path: str = SEED_PATH
    #: the mount point of that file system in the booted system ("/" for the root)
    mount_point: str = "/"
    #: where that file system is, for the user: "partition 3 (mounted at /var)"
    where: str = ""
    #: the root file system's partition (whose /etc/fstab was read)
    root_partition: int | None = None


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


def ext_identity(path: str, offset: int) -> tuple[str, str]:
    """(UUID, label) of the ext2/3/4 file system at `offset`, as blkid and fstab's
    `UUID=` and `LABEL=` spell them (lower-case UUID; label up to its first NUL)."""
    sb = _read_at(path, offset + 1024, 0x88)
    if len(sb) < 0x88:
        return "", ""
    fs_uuid = str(uuid.UUID(bytes=sb[_EXT_UUID:_EXT_UUID + 16]))
    label = sb[_EXT_LABEL:_EXT_LABEL + 16].split(b"\x00", 1)[0]
    return fs_uuid, label.decode("utf-8", "replace")


def _blkid_identity(path: str, offset: int, size: int) -> tuple[str, str]:
    """(UUID, LABEL) of another file system type, from util-linux's `blkid -p` at a
    byte range of the image; ("", "") if blkid is missing or finds nothing."""
    exe = shutil.which("blkid")
    if exe is None:
        return "", ""
    try:
        res = subprocess.run([exe, "-p", "-o", "export", "-O", str(offset), "-S", str(size),
                              path], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "", ""
    tags = dict(ln.split("=", 1) for ln in res.stdout.splitlines() if "=" in ln)
    return tags.get("UUID", "").lower(), tags.get("LABEL", "")


def image_volumes(path: str, table: PartitionTable) -> list[Volume]:
    """Every file system of a raw image with the names an fstab may give it."""
    spans: list[tuple[int | None, int, int, str, str]]
    if table.scheme == "none":
        spans = [(None, 0, os.path.getsize(path), "", "")]
    else:
        spans = [(p.number, p.start, p.size, p.uuid, p.name) for p in table.partitions
                 if p.kind != "extended"]
    out = []
    for number, start, size, part_uuid, part_label in spans:
        kind = filesystem_at(path, start)
        if kind == "ext":
            fs_uuid, label = ext_identity(path, start)
        elif kind in ("lvm", "luks"):
            fs_uuid, label = "", ""  # what fstab names is inside, not this container
        else:
            fs_uuid, label = _blkid_identity(path, start, size)
        out.append(Volume(number, start, kind, fs_uuid, label, part_uuid.lower(),
                          part_label))
    return out


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
    from ..image.guestfs import GuestfsNoRoot, GuestfsTarget

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


@dataclass
class _SeedHome:
    """The file system and directory the booted system reads the seed from."""

    fs: _ImageFS
    dir: str  # SEED_DIR as seen inside `fs` (below its mount point)
    mount_point: str  # "/" for the root
    partition: int | None
    where: str
    own: bool  # opened here for a separate file system: close it after use

    @property
    def seed(self) -> str:
        return self.dir.rstrip("/") + "/seed"

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(self.dir.rstrip("/") + "/" + m.rsplit("/", 1)[1] for m in BOOTED_MARKERS)


def _refuse_mount_units(path: str, fs: TargetFS) -> None:
    """A systemd mount unit for /var, /var/lib or /var/lib/seedtool mounts a file system
    seedtool does not follow (it reads /etc/fstab only): refuse rather than write a seed
    that unit would hide."""
    for d in MOUNT_UNIT_DIRS:
        try:
            names = set(fs.listdir(d))  # one listing, not a lookup per unit
        except DeliveryError:
            continue  # no such directory
        for unit in MOUNT_UNITS:
            if unit in names:
                point = "/" + unit[:-len(".mount")].replace("-", "/")
                raise MountRefused(
                    f"{path}: {d}/{unit} mounts {point}, where the booted system reads "
                    f"{SEED_DIR}, and seedtool follows /etc/fstab only; move that mount "
                    "into the image's /etc/fstab, or deliver the seed in user-data instead "
                    "(seedtool userdata or nocloud)"
                )


def _read_fstab(path: str, fs: TargetFS) -> list[MountEntry]:
    _refuse_mount_units(path, fs)
    st = fs.stat(FSTAB)
    if st is None:
        return []  # no fstab: everything is on the root
    if not stat_mod.S_ISREG(st.mode):
        raise ImageRefused(
            f"{FSTAB} in {path} is not a regular file (a symlink?), so seedtool cannot "
            "tell where the booted system reads /var/lib/seedtool; make it a regular file"
        )
    if st.size > FSTAB_MAX:
        raise ImageRefused(
            f"{FSTAB} in {path} is {st.size} bytes, more than any real fstab "
            f"({FSTAB_MAX} bytes at most); check the image"
        )
    return parse_fstab(fs.read(FSTAB).decode("utf-8", "surrogateescape"))


def _backend_mounts(fs: TargetFS) -> set[str]:
    """The mount points libguestfs made (its `mountpoints` call). TargetFS has no such
    operation yet; a backend without one is taken to have mounted only the root."""
    call = getattr(fs, "_call", None)
    if call is None:
        return {"/"}
    points = call("mountpoints")
    return {"/" + "/".join(q for q in str(mp).split("/") if q) for mp in dict(points).values()}


def _seed_home(path: str, opened: OpenedImage) -> _SeedHome:
    """Where the booted system reads SEED_DIR: the root, or a file system the root's
    fstab mounts on its path (refused, naming the mount, if seedtool cannot write it)."""
    entries = _read_fstab(path, opened.fs)
    if opened.backend != "debugfs":
        root_where = (f"partition {opened.partition}" if opened.partition is not None
                      else "the root file system")
        entry = check_mounted(SEED_DIR, entries, _backend_mounts(opened.fs), path)
        where = root_where if entry is None else f"{entry.point} ({entry.source}, mounted " \
            "by libguestfs)"
        return _SeedHome(opened.fs, SEED_DIR, entry.point if entry else "/",
                         opened.partition, where, own=False)
    table = read_partitions(path)
    volumes = image_volumes(path, table)
    root = next((v for v in volumes if v.number == opened.partition), None)
    if root is None:  # cannot happen: the root was opened from this table
        raise ImageRefused(f"the root file system of {path} is not in its partition table")
    placement = place(SEED_DIR, entries, volumes, root, path)
    if placement.volume.number == root.number:
        return _SeedHome(opened.fs, placement.path, "/", root.number, placement.where,
                         own=False)
    return _open_separate(path, opened, placement, table)


def _open_separate(path: str, opened: OpenedImage, placement: Placement,
                   table: PartitionTable) -> _SeedHome:
    vol, mount = placement.volume, placement.mount
    assert mount is not None
    if vol.kind != "ext":
        raise MountRefused(
            f"{path}: its /etc/fstab (line {mount.line}) mounts {mount.point} from "
            f"{mount.source}, which is {vol.name}, holding "
            f"{vol.kind or 'no file system seedtool recognises'}; the debugfs path writes "
            "ext2/3/4 only: use --backend libguestfs"
        )
    part = table.get(vol.number) if vol.number is not None else None
    label = _partition_label(table, part) if part is not None else vol.name
    separate = _open_ext(path, vol.offset, vol.number,
                         f"{label}, mounted at {mount.point} by /etc/fstab", opened.warnings)
    # an older seed in the root's own directory is hidden by the mount: never credited,
    # and carried by every copy of the image
    try:
        if opened.fs.stat(SEED_PATH) is not None:
            opened.warnings.append(
                f"the root file system of {path} holds {SEED_PATH}, hidden under the "
                f"{mount.point} mount, so it is never credited and every copy of the image "
                "carries it: remove it from the root file system")
    except DeliveryError:
        pass
    return _SeedHome(separate.fs, placement.path, mount.point, vol.number, placement.where,
                     own=True)


def _refuse_if_used(home: _SeedHome, path: str, force: bool) -> bool:
    """Raise if the image has booted with seedtool or holds a seed (unless force);
    return True if force overrides either."""
    fs = home.fs
    booted = [m for m in home.markers if fs.stat(m) is not None]
    seeded = fs.stat(home.seed) is not None
    on = "" if home.mount_point == "/" else f" on the file system mounted at " \
        f"{home.mount_point}"
    if booted and not force:
        raise ImageRefused(
            f"{path} has already booted with seedtool ({booted[0]} exists{on}): a disk "
            "that has booted holds per-VM state (host keys, machine-id, the ledger) and "
            "must not be re-seeded for cloning; use --force to seed it for its own next boot"
        )
    if seeded and not force:
        raise ImageRefused(
            f"{path} already holds an unconsumed seed ({home.seed}{on}); it has not "
            "booted since it was seeded: use --force to replace that seed"
        )
    return bool(booted or seeded)


def seed_image(path: str, factory: _MakesSeeds, partition: int | None = None,
               force: bool = False, backend: str = "auto",
               allow_readable: bool = False) -> SeedResult:
    """Write one fresh envelope from `factory.new()` into the image at `path`.

    Every refusal happens before the seed is made; on failure nothing is left behind
    (no seed file, no directory we created). `allow_readable` accepts an image that
    group or others may read (refused by default: they could read the seed).
    """
    path = os.fspath(path)
    check_writable(path)
    if not allow_readable:
        check_not_readable(path)
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
    home = _seed_home(path, opened)
    ok = False
    try:
        result = _seed_at(path, opened, home, factory, force)
        ok = True
    finally:
        if home.own:
            try:
                home.fs.close()
            except DeliveryError:
                if ok:
                    raise
    return result


def _seed_at(path: str, opened: OpenedImage, home: _SeedHome, factory: _MakesSeeds,
             force: bool) -> SeedResult:
    fs = home.fs
    replaced = _refuse_if_used(home, path, force)
    # the directories to make, outermost first: parents 0755 (e.g. /lib on a fresh /var
    # file system), the seed's own directory 0700
    missing: list[str] = []
    cur = home.dir.rstrip("/")
    while cur and fs.stat(cur) is None:
        missing.insert(0, cur)
        cur = cur.rsplit("/", 1)[0]
    st = fs.stat(home.dir)
    if st is not None and not stat_mod.S_ISDIR(st.mode):
        raise ImageRefused(
            f"{home.dir} in {path} ({home.where}) exists but is not a directory; the "
            "image is not laid out as seedtool expects: remove it"
        )
    seed = factory.new()
    text = (seed.text + "\n").encode("ascii")
    made: list[str] = []
    try:
        for d in missing:
            fs.mkdir(d, 0o700 if d == home.dir.rstrip("/") else 0o755)
            made.append(d)
        fs.write(home.seed, text, mode=0o600, uid=0, gid=0)
    except BaseException:
        for d in reversed(made):
            try:
                fs.rmdir(d)
            except (DeliveryError, DebugfsError):
                pass
        raise
    return SeedResult(
        image=path,
        seed_id=seed.seed_id,
        backend=opened.backend,
        partition=home.partition,
        target=fs.description,
        why=opened.why,
        replaced=replaced,
        summary=dict(seed.summary),
        warnings=tuple(opened.warnings),
        seed_path=home.seed,
        mount_point=home.mount_point,
        where=home.where,
        root_partition=opened.partition,
    )
