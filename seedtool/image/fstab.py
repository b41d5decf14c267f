"""Where a booted system reads a path: an image's /etc/fstab against its own partitions.

`seedtool image seed` writes `/var/lib/seedtool/seed`, and the guest reads it (and its
ledger and status) at that path once the system has booted. When the image's
/etc/fstab mounts /var, /var/lib or /var/lib/seedtool from a file system of its own, a
seed written into the root file system's directory is hidden under that mount: never
credited, and carried by every copy of the image. `place()` answers "which file system
of this image, and which path inside it, does the booted system see at PATH", or
refuses, naming the mount, when the answer is not a file system of this image that
seedtool can write.

What is understood (fstab(5); libmount, util-linux, parses it for mount(8) and
systemd-fstab-generator): whitespace-separated fields with octal escapes (`\\040`),
`#` comment lines, the source forms `UUID=`, `LABEL=`, `PARTUUID=`, `PARTLABEL=` (values
optionally quoted), `/dev/disk/by-uuid|by-label|by-partuuid|by-partlabel/...` (udev
escapes other characters as `\\xNN`) and kernel device names of the first disk
(`/dev/vda3`, `/dev/sda3`, `/dev/xvda3`, `/dev/nvme0n1p3`, `/dev/mmcblk0p3`), bind
mounts (resolved through the same table), swap (ignored). A `noauto` mount still
counts: the guest's early unit has `RequiresMountsFor=/var/lib/seedtool`, which pulls in
noauto mounts too (systemd.unit(5), RequiresMountsFor=).

Refused, naming the mount: tmpfs and ramfs (the seed would vanish), network file
systems, device-mapper and md devices (LVM, LUKS, RAID), a source that names no file
system of this image (another disk, a UUID not found), a source several file systems
answer to, bind mounts that loop, and two entries for one mount point.

Only reads what it is given; never touches an image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..shared.errors import DeliveryError

#: more than this is not a real fstab (the usual one is a few hundred bytes)
FSTAB_MAX = 1 << 20
#: bind mounts of bind mounts: a longer chain is a loop
BIND_DEPTH_MAX = 16

_TMPFS = frozenset({"tmpfs", "ramfs"})
_NETWORK = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p",
                      "virtiofs", "sshfs", "fuse.sshfs", "davfs", "ncpfs", "afs", "lustre",
                      "ocfs2", "gfs2", "fuse.glusterfs", "fuse.s3fs", "fuse.rclone"})
_SWAP = frozenset({"swap"})
#: types that hold no file system of a partition (virtual, stacked or pseudo)
_VIRTUAL = frozenset({"overlay", "aufs", "proc", "sysfs", "devtmpfs", "devpts", "cgroup",
                      "cgroup2", "debugfs", "tracefs", "securityfs", "efivarfs",
                      "squashfs", "fuse", "autofs"})
_ESCAPE = re.compile(r"\\([0-7]{3})")
_UDEV_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
# kernel names of whole disks and their partitions (drivers/block/virtio_blk.c vdX,
# drivers/scsi/sd.c sdX, xen-blkfront xvdX, nvme nvmeXnY[pN], mmc mmcblkX[pN])
_DISK_NAME = re.compile(
    r"^/dev/(?:(?P<sd>(?:s|v|xv|h)d)(?P<letter>[a-z]+)(?P<n1>[0-9]*)"
    r"|nvme(?P<ctrl>[0-9]+)n(?P<ns>[0-9]+)(?:p(?P<n2>[0-9]+))?"
    r"|mmcblk(?P<mmc>[0-9]+)(?:p(?P<n3>[0-9]+))?)$")


class MountRefused(DeliveryError):
    """The image's fstab puts the seed's path somewhere seedtool cannot write to."""


@dataclass(frozen=True)
class MountEntry:
    source: str  # as written (unescaped): "UUID=...", "/dev/vda3", "tmpfs", ...
    point: str  # normalised: "/var"
    fstype: str
    options: tuple[str, ...]
    line: int  # 1-based line in /etc/fstab

    @property
    def bind(self) -> bool:
        return any(o in ("bind", "rbind") for o in self.options)


@dataclass(frozen=True)
class Volume:
    """A file system of the image, with every name fstab may use for it."""

    number: int | None  # partition number, None for a whole-disk file system
    offset: int  # bytes from the start of the image
    kind: str | None  # filesystem_at(): "ext", "xfs", "btrfs", "lvm", "luks" or None
    fs_uuid: str = ""  # lower case
    fs_label: str = ""
    part_uuid: str = ""  # lower case
    part_label: str = ""

    @property
    def name(self) -> str:
        return f"partition {self.number}" if self.number is not None else "the whole disk"


@dataclass(frozen=True)
class Placement:
    volume: Volume  # the file system the booted system reads the path from
    path: str  # the path inside that file system
    mount: MountEntry | None  # the fstab entry that puts it there; None: the root itself

    @property
    def where(self) -> str:
        """For the user: "partition 3 (mounted at /var)"."""
        if self.mount is None:
            return self.volume.name
        return f"{self.volume.name} (mounted at {self.mount.point})"


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _normal(point: str) -> str:
    parts = [p for p in point.split("/") if p and p != "."]
    return "/" + "/".join(parts)


def parse_fstab(text: str) -> list[MountEntry]:
    """The entries of an fstab (fstab(5)); lines that are not entries are skipped."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) < 2:
            continue
        source, point = _unescape(fields[0]), _unescape(fields[1])
        fstype = _unescape(fields[2]) if len(fields) > 2 else "auto"
        options = tuple(_unescape(fields[3]).split(",")) if len(fields) > 3 else ()
        if fstype in _SWAP or not point.startswith("/"):
            continue  # swap, or "none": nothing is mounted in the tree
        out.append(MountEntry(source, _normal(point), fstype, options, number))
    return out


def _covers(point: str, path: str) -> bool:
    return point == "/" or path == point or path.startswith(point + "/")


def _below(point: str, path: str) -> str:
    """`path` relative to the mount point `point`, as an absolute path in that fs."""
    if point == "/":
        return path
    return "/" + path[len(point):].lstrip("/") if path != point else "/"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _udev(value: str) -> str:
    return _UDEV_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)


_BY = {"by-uuid": "UUID", "by-label": "LABEL", "by-partuuid": "PARTUUID",
       "by-partlabel": "PARTLABEL"}


class _Refuse(Exception):
    """Why one source cannot be resolved; turned into a MountRefused naming the mount."""

    def __init__(self, why: str, fix: str) -> None:
        super().__init__(why)
        self.why, self.fix = why, fix


_OTHER_WAY = "deliver the seed in user-data instead (seedtool userdata or nocloud)"


def _resolve_device(source: str, volumes: Sequence[Volume]) -> Volume:
    tag, _, value = source.partition("=")
    if source.startswith("/dev/disk/"):
        kind, _, name = source[len("/dev/disk/"):].partition("/")
        if kind not in _BY or not name or "/" in name:
            raise _Refuse(f"{source} names the device by a path seedtool cannot map to a "
                          "partition of this image",
                          "name it in the image's fstab by UUID=, LABEL= or PARTUUID=")
        tag, value = _BY[kind], _udev(name)
    elif tag in ("UUID", "LABEL", "PARTUUID", "PARTLABEL") and value:
        value = _unquote(value)
    elif source.startswith("/dev/"):
        return _resolve_kernel_name(source, volumes)
    else:
        raise _Refuse(f"{source} is not a device of this image",
                      "name the device by UUID=, LABEL=, PARTUUID= or PARTLABEL=")
    key = value.lower() if tag in ("UUID", "PARTUUID") else value
    found = [v for v in volumes if key and key == {
        "UUID": v.fs_uuid, "LABEL": v.fs_label, "PARTUUID": v.part_uuid,
        "PARTLABEL": v.part_label}[tag]]
    if len(found) > 1:
        names = ", ".join(v.name for v in found)
        raise _Refuse(f"{tag}={value} names several file systems of this image ({names})",
                      "give them distinct UUIDs (tune2fs -U random) or name the device "
                      "by PARTUUID=")
    if not found:
        hidden = [f"{v.name} ({v.kind.upper()})" for v in volumes if v.kind in ("lvm", "luks")]
        inside = (f"; it may be inside {', '.join(hidden)}, which seedtool's fast path does "
                  "not open" if hidden else "")
        raise _Refuse(f"no file system of this image has {tag}={value}{inside}",
                      "use --backend libguestfs for LVM, seed the disk that holds it, or "
                      + _OTHER_WAY)
    return found[0]


def _resolve_kernel_name(source: str, volumes: Sequence[Volume]) -> Volume:
    m = _DISK_NAME.match(source)
    if m is None:
        if source.startswith(("/dev/mapper/", "/dev/dm-", "/dev/md")) or \
                source.count("/") == 3:  # /dev/<vg>/<lv>
            raise _Refuse(f"{source} is a device-mapper or md device (LVM, LUKS or RAID), "
                          "which seedtool's fast path does not open",
                          "use --backend libguestfs for LVM, or " + _OTHER_WAY)
        raise _Refuse(f"{source} is not a disk device seedtool can map to this image",
                      "name it in the image's fstab by UUID=, LABEL= or PARTUUID=")
    first = (m.group("letter") == "a" if m.group("sd") else
             (m.group("ctrl"), m.group("ns")) == ("0", "1") if m.group("ctrl") is not None
             else m.group("mmc") == "0")
    if not first:
        raise _Refuse(f"{source} is on another disk than the boot disk this image becomes",
                      "seed the disk that holds it, or " + _OTHER_WAY)
    number = m.group("n1") or m.group("n2") or m.group("n3")
    want = int(number) if number else None
    for v in volumes:
        if v.number == want:
            return v
    raise _Refuse(f"this image has no {'partition ' + number if number else 'whole-disk'} "
                  f"file system for {source}",
                  "check the image's fstab, or seed the disk that holds it")


def place(path: str, entries: Sequence[MountEntry], volumes: Sequence[Volume],
          root: Volume, image: str) -> Placement:
    """Which file system of the image holds `path` once it has booted, and where in it.

    `root` is the file system /etc/fstab was read from; `image` names the image in
    messages. Raises `MountRefused` naming the fstab entry when that is not a file
    system of `volumes`.
    """
    return _place(_normal(path), entries, volumes, root, image, 0)


def _covering(path: str, entries: Sequence[MountEntry], image: str) -> MountEntry | None:
    """The entry the booted system reads `path` from (the deepest mount point on it), or
    None for the root; refuses what no backend can write to, naming the entry."""
    covering = [e for e in entries if e.point != "/" and _covers(e.point, path)]
    if not covering:
        return None
    deepest = max(len(e.point) for e in covering)
    at = [e for e in covering if len(e.point) == deepest]
    entry = at[0]
    if len(at) > 1:
        raise _refusal(entry, path, image, f"line {at[1].line} mounts {entry.point} too",
                       "keep one entry for it in the image's fstab")
    if entry.fstype in _TMPFS:
        raise _refusal(entry, path, image,
                       "a seed written there would vanish at boot (it starts empty)",
                       _OTHER_WAY)
    if entry.fstype in _NETWORK or "_netdev" in entry.options or \
            entry.source.startswith("//") or re.match(r"^[^/=]+:", entry.source):
        raise _refusal(entry, path, image,
                       "that is a network file system, not part of this image", _OTHER_WAY)
    if entry.fstype in _VIRTUAL and not entry.bind:
        raise _refusal(entry, path, image,
                       f"{entry.fstype} is not a file system seedtool can write to",
                       _OTHER_WAY)
    return entry


def _refusal(entry: MountEntry, path: str, image: str, why: str, fix: str) -> MountRefused:
    return MountRefused(
        f"{image}: its /etc/fstab (line {entry.line}) mounts {entry.point} from "
        f"{entry.source} ({entry.fstype}), where the booted system reads {path}, and "
        f"{why}; {fix}"
    )


def _place(path: str, entries: Sequence[MountEntry], volumes: Sequence[Volume],
           root: Volume, image: str, depth: int) -> Placement:
    entry = _covering(path, entries, image)
    if entry is None:
        return Placement(root, path, None)
    if entry.bind:
        if depth >= BIND_DEPTH_MAX or not entry.source.startswith("/"):
            raise _refusal(entry, path, image,
                           "its bind mounts do not end in a file system of this image "
                           "(a cycle?)", "check the image's fstab")
        # the source is itself a path of the booted system: resolve it through the same
        # table (a cycle, or a source under its own mount point, ends at the bound)
        rest = _below(entry.point, path)
        src = _normal(entry.source) + ("" if rest == "/" else rest)
        return _place(_normal(src), entries, volumes, root, image, depth + 1)
    try:
        volume = _resolve_device(entry.source, volumes)
    except _Refuse as r:
        raise _refusal(entry, path, image, r.why, r.fix) from None
    return Placement(volume, _below(entry.point, path), entry)


def check_mounted(path: str, entries: Sequence[MountEntry], mounted: set[str],
                  image: str) -> MountEntry | None:
    """For a backend that mounts the image's file systems itself (libguestfs, whose
    inspection reads the same fstab): the fstab entry the booted system reads `path`
    from, which must be one of the `mounted` mount points, or None for the root.

    Refuses what `place` refuses, bind mounts (libguestfs's inspection does not make
    them), and a mount the backend did not make (an encrypted or missing device, or
    a root named with --partition, when nothing else is mounted).
    """
    path = _normal(path)
    entry = _covering(path, entries, image)
    if entry is None:
        return None
    if entry.bind:
        raise _refusal(entry, path, image, "libguestfs does not make bind mounts",
                       "convert the image to raw (qemu-img convert -O raw) for the debugfs "
                       "path, which follows them")
    if entry.point not in mounted:
        raise _refusal(entry, path, image,
                       "libguestfs did not mount it (encrypted, missing, or the root was "
                       "named with --partition)", "leave out --partition, or " + _OTHER_WAY)
    return entry
