"""What a disk image file holds, read from its bytes: the format, the file system at an
offset, an ext file system's identity, and every volume an fstab may name.

Reads only (no debugfs, no mounts): `seedtool.image.open` uses it to choose a backend
and find the root, `seedtool.deliver.disk` to follow the image's /etc/fstab.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid

from .fstab import Volume
from .partitions import PartitionTable

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


def ext_needs_recovery(path: str, offset: int) -> bool:
    sb = _read_at(path, offset + 1024, 0x64)
    return len(sb) >= 0x64 and bool(struct.unpack_from("<I", sb, 0x60)[0]
                                    & _EXT_INCOMPAT_RECOVER)

