"""Reading a raw disk image's partition table (GPT or MBR) without any tool or privilege.

`seedtool image seed` must find the Linux root inside a raw image to write to it with
debugfs at a byte offset; it reads the table itself rather than asking the kernel
(that would need a loop device and root). Only reading: nothing here writes.

Formats, from their specifications:

* GPT (UEFI Specification 2.10, section 5.3): a protective MBR (an entry of type 0xEE),
  a header at LBA 1 ("EFI PART", CRC32 of the header with its CRC field zeroed), the
  entry array (its own CRC32 in the header) and a backup header at the last LBA that
  points to a backup array. The primary copy is used when it is intact; the backup when
  only it is; a disagreement is reported as a warning, both damaged is an error.
* MBR: four 16-byte entries at byte 446, signature 55 AA at 510; an extended
  partition (type 0x05, 0x0F or 0x85) holds a chain of EBRs, each with one logical
  partition (relative to that EBR) and a link to the next (relative to the extended
  partition's start). Linux numbers primaries 1-4 by slot and logicals from 5.
* Partition type GUIDs: the UAPI Group's Discoverable Partitions Specification
  (Linux filesystem data, root for x86-64 and arm64, ESP, LVM).
* What an fstab's `PARTUUID=` and `PARTLABEL=` name, as the kernel and udev report
  them: a GPT entry's unique partition GUID and its name; on MBR disks the 32-bit disk
  signature at byte 440 and the partition number, `%08x-%02x` (the kernel's
  block/partitions/msdos.c, msdos_partition).

Every input, however malformed, gives a `PartitionTable` or `PartitionTableError`;
sizes and counts read from the image are bounded before they are used.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..shared.errors import DeliveryError

#: reads `length` bytes at `offset`; may return fewer at the end of the image
ReadAt = Callable[[int, int], bytes]

GPT_SIGNATURE = b"EFI PART"
GPT_HEADER_MIN = 92
#: the spec allows 128 * 2**n; anything this large is not a real table
GPT_ENTRY_SIZE_MAX = 4096
#: bytes of entry array we are willing to read (the usual array is 16 KiB)
GPT_ARRAY_MAX = 1 << 20
MBR_SIGNATURE = b"\x55\xaa"
MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})
MBR_PROTECTIVE = 0xEE
MBR_LINUX = 0x83
MBR_LINUX_LVM = 0x8E
MBR_ESP = 0xEF
#: an EBR chain longer than this is a loop or garbage
MBR_LOGICAL_MAX = 128

GUID_LINUX_DATA = "0fc63daf-8483-4772-8e79-3d69d8477de4"
GUID_ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
GUID_ROOT_ARM64 = "b921b045-1df0-41c3-af44-4c6f280d3fae"
GUID_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GUID_LINUX_LVM = "e6d6d379-f507-4295-a23c-f4d2d80e0e6a"

#: type GUID -> what it is, for the partitions we care about
GPT_KINDS: dict[str, str] = {
    GUID_LINUX_DATA: "linux",
    GUID_ROOT_X86_64: "root-x86-64",
    GUID_ROOT_ARM64: "root-arm64",
    GUID_ESP: "esp",
    GUID_LINUX_LVM: "lvm",
}
MBR_KINDS: dict[int, str] = {MBR_LINUX: "linux", MBR_LINUX_LVM: "lvm", MBR_ESP: "esp"}

_GPT_HEADER = struct.Struct("<8sIIII QQQQ 16s QIII")
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
_MBR_ENTRY = struct.Struct("<B3sB3sII")


class PartitionTableError(DeliveryError):
    """The image's partition table is damaged or not something we can read."""


@dataclass(frozen=True)
class Partition:
    number: int  # as Linux numbers it (sdaN, vdaN)
    start: int  # bytes from the start of the image
    size: int  # bytes
    type: str  # GPT type GUID (lower case) or MBR type as "0x83"
    kind: str  # "linux", "root-x86-64", "root-arm64", "esp", "lvm", "extended" or "other"
    name: str = ""  # GPT partition name (PARTLABEL)
    uuid: str = ""  # PARTUUID: GPT unique partition GUID, or MBR "<signature>-<NN>"

    @property
    def linux_candidate(self) -> bool:
        """A partition that may hold a Linux file system (root or data)."""
        return self.kind in ("linux", "root-x86-64", "root-arm64", "lvm")


@dataclass(frozen=True)
class PartitionTable:
    scheme: str  # "gpt", "mbr" or "none"
    sector_size: int
    partitions: tuple[Partition, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    disk_id: str = ""  # GPT disk GUID or MBR disk signature (8 hex digits)

    def get(self, number: int) -> Partition | None:
        for p in self.partitions:
            if p.number == number:
                return p
        return None


def read_partitions(path: str | os.PathLike[str]) -> PartitionTable:
    """Read the partition table of the raw image at `path`."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size

            def read_at(offset: int, length: int) -> bytes:
                # LBAs come from the image: one past 2**63 bytes made seek() raise
                # ValueError (fuzz finding T1, fuzz/README.md)
                if offset < 0 or length < 0 or offset >= size:
                    return b""
                f.seek(offset)
                return f.read(length)

            return parse_partitions(read_at, size)
    except OSError as e:
        raise PartitionTableError(
            f"cannot read the partition table of {os.fspath(path)}: {e.strerror}; "
            "check the path and its permissions"
        ) from None


def parse_bytes(data: bytes) -> PartitionTable:
    """`parse_partitions` over an in-memory image (tests, small images)."""

    def read_at(offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            return b""
        return data[offset : offset + length]

    return parse_partitions(read_at, len(data))


def parse_partitions(read_at: ReadAt, size: int) -> PartitionTable:
    """GPT if the image has one (at 512- or 4096-byte sectors), else MBR, else "none"."""
    mbr = read_at(0, 512)
    if len(mbr) < 512 or mbr[510:512] != MBR_SIGNATURE:
        # no MBR signature: a GPT without a protective MBR is not valid, so this is
        # an unpartitioned image (e.g. a file system written to the whole disk)
        return PartitionTable("none", 512)
    entries = _mbr_entries(mbr)
    if entries is None:
        # 55 AA but nonsense entries: e.g. a FAT or NTFS boot sector, no table
        return PartitionTable("none", 512)
    if any(e[1] == MBR_PROTECTIVE for e in entries):
        for sector in (512, 4096):
            at_end = size >= 2 * sector and read_at(size - sector, 8) == GPT_SIGNATURE
            if read_at(sector, 8) == GPT_SIGNATURE or at_end:
                return _parse_gpt(read_at, size, sector)
        raise PartitionTableError(
            "the image has a protective MBR but no GPT header at either end; the partition "
            "table is damaged: repair it with gdisk or sfdisk"
        )
    return _parse_mbr(read_at, size, entries, struct.unpack_from("<I", mbr, 440)[0])


# ---- GPT ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GptHeader:
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    entries_lba: int
    n_entries: int
    entry_size: int
    entries_crc: int
    disk_guid: str


def _gpt_header(read_at: ReadAt, lba: int, sector: int) -> _GptHeader | None:
    """The header at `lba` if its signature, size and CRC are right, else None."""
    if lba <= 0:
        return None
    raw = read_at(lba * sector, sector)
    if len(raw) < GPT_HEADER_MIN or raw[:8] != GPT_SIGNATURE:
        return None
    (sig, _rev, hsize, hcrc, reserved, my_lba, alt_lba, first, last, guid,
     ent_lba, n_ent, ent_size, ent_crc) = _GPT_HEADER.unpack_from(raw)
    if not GPT_HEADER_MIN <= hsize <= min(sector, len(raw)) or reserved != 0:
        return None
    zeroed = raw[:16] + b"\x00\x00\x00\x00" + raw[20:hsize]
    if zlib.crc32(zeroed) & 0xFFFFFFFF != hcrc or my_lba != lba:
        return None
    if ent_size < 128 or ent_size > GPT_ENTRY_SIZE_MAX or ent_size % 8:
        return None
    if n_ent * ent_size > GPT_ARRAY_MAX or first > last:
        return None
    # The usable area must hold neither sector 0, the headers nor this entry array
    # (UEFI 2.10 5.3.2); else a "partition" could overlay the table itself (fuzz
    # finding T2, fuzz/README.md: first_usable 0 gave a partition at byte 0).
    array_end = ent_lba + -(-n_ent * ent_size // sector)  # one past its last sector
    if first < 1 or first <= my_lba <= last or first <= alt_lba <= last or (
        ent_lba <= last and array_end > first
    ):
        return None
    return _GptHeader(my_lba, alt_lba, first, last, ent_lba, n_ent, ent_size, ent_crc,
                      str(uuid.UUID(bytes_le=guid)))


def _gpt_array(read_at: ReadAt, h: _GptHeader, sector: int) -> bytes | None:
    length = h.n_entries * h.entry_size
    data = read_at(h.entries_lba * sector, length)
    if len(data) != length or zlib.crc32(data) & 0xFFFFFFFF != h.entries_crc:
        return None
    return data


def _parse_gpt(read_at: ReadAt, size: int, sector: int) -> PartitionTable:
    last_lba = size // sector - 1
    warnings: list[str] = []
    primary = _gpt_header(read_at, 1, sector)
    p_array = _gpt_array(read_at, primary, sector) if primary else None
    backup_lba = primary.alternate_lba if primary else last_lba
    if backup_lba > last_lba:
        warnings.append("the GPT backup header lies beyond the end of the image "
                        "(was the image truncated?)")
    backup = _gpt_header(read_at, backup_lba, sector)
    if backup is None and backup_lba != last_lba:
        backup = _gpt_header(read_at, last_lba, sector)
    b_array = _gpt_array(read_at, backup, sector) if backup else None
    if primary and p_array is not None:
        header, array = primary, p_array
        if backup is None or b_array is None:
            warnings.append("the backup GPT is missing or damaged (the primary is intact); "
                            "`sgdisk -e` or `sfdisk --relocate gpt-bak-std` repairs it")
        elif b_array != p_array:
            warnings.append("the backup GPT's partition entries differ from the primary's; "
                            "using the primary")
    elif backup and b_array is not None:
        header, array = backup, b_array
        warnings.append("the primary GPT is damaged; using the backup copy: repair the "
                        "table with gdisk before relying on the image")
    else:
        raise PartitionTableError(
            "both GPT headers or their partition entries fail their CRC checks; the "
            "partition table is damaged: repair it with gdisk, or name the file system "
            "with --partition only once the table is fixed"
        )
    parts: list[Partition] = []
    for i in range(header.n_entries):
        chunk = array[i * header.entry_size : i * header.entry_size + _GPT_ENTRY.size]
        type_le, uniq, first, last, _attrs, name_raw = _GPT_ENTRY.unpack(chunk)
        if type_le == b"\x00" * 16:
            continue
        if first > last or last > last_lba or first < header.first_usable or \
                last > header.last_usable:
            raise PartitionTableError(
                f"GPT partition {i + 1} lies outside the usable area of the disk "
                f"(sectors {first}-{last}); the table is damaged or the image truncated"
            )
        type_guid = str(uuid.UUID(bytes_le=type_le))
        name = name_raw.decode("utf-16-le", "replace").split("\x00", 1)[0]
        parts.append(Partition(
            number=i + 1,
            start=first * sector,
            size=(last - first + 1) * sector,
            type=type_guid,
            kind=GPT_KINDS.get(type_guid, "other"),
            name=name,
            uuid=str(uuid.UUID(bytes_le=uniq)),
        ))
    return PartitionTable("gpt", sector, tuple(parts), tuple(warnings), header.disk_guid)


# ---- MBR ------------------------------------------------------------------------------


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]] | None:
    """(slot, type, first LBA, sectors) of the used entries, or None if not an MBR."""
    out = []
    for slot in range(4):
        status, _chs1, ptype, _chs2, lba, count = _MBR_ENTRY.unpack_from(sector, 446 + 16 * slot)
        if status not in (0x00, 0x80):
            return None
        if ptype == 0 or count == 0:
            continue
        out.append((slot, ptype, lba, count))
    return out


def _parse_mbr(read_at: ReadAt, size: int, entries: list[tuple[int, int, int, int]],
               signature: int) -> PartitionTable:
    sector = 512
    total = size // sector
    parts: list[Partition] = []
    warnings: list[str] = []
    extended: tuple[int, int] | None = None
    for slot, ptype, lba, count in entries:
        if lba == 0 or lba + count > total:
            raise PartitionTableError(
                f"MBR partition {slot + 1} lies outside the image (sectors {lba}-"
                f"{lba + count - 1} of {total}); the table is damaged or the image truncated"
            )
        if ptype in MBR_EXTENDED:
            if extended is not None:
                raise PartitionTableError(
                    "the MBR has two extended partitions; the table is damaged"
                )
            extended = (lba, count)
            kind = "extended"
        else:
            kind = MBR_KINDS.get(ptype, "other")
        parts.append(Partition(slot + 1, lba * sector, count * sector, f"0x{ptype:02x}", kind))
    if extended is not None:
        parts.extend(_logical(read_at, extended, total, warnings))
    # the kernel names MBR partitions by disk signature and number (msdos.c)
    parts = [replace(p, uuid=f"{signature:08x}-{p.number:02x}") for p in parts]
    return PartitionTable("mbr", sector, tuple(parts), tuple(warnings), f"{signature:08x}")


def _logical(read_at: ReadAt, extended: tuple[int, int], total: int,
             warnings: list[str]) -> list[Partition]:
    ext_start, ext_count = extended
    ext_end = ext_start + ext_count
    out: list[Partition] = []
    seen: set[int] = set()
    ebr = ext_start
    number = 5
    while True:
        if ebr in seen or len(seen) >= MBR_LOGICAL_MAX:
            raise PartitionTableError(
                "the chain of logical partitions loops or is implausibly long; the "
                "extended partition is damaged"
            )
        seen.add(ebr)
        raw = read_at(ebr * 512, 512)
        if len(raw) < 512 or raw[510:512] != MBR_SIGNATURE:
            if ebr == ext_start:
                # an empty extended partition (no EBR written yet) holds nothing
                return out
            raise PartitionTableError(
                f"the logical partition record at sector {ebr} has no 55 AA signature; "
                "the extended partition is damaged"
            )
        _s, _c1, ptype, _c2, rel, count = _MBR_ENTRY.unpack_from(raw, 446)
        _s2, _c3, ntype, _c4, nrel, _ncount = _MBR_ENTRY.unpack_from(raw, 462)
        if ptype and count:
            first = ebr + rel
            if rel == 0 or first + count > ext_end or first + count > total:
                raise PartitionTableError(
                    f"logical partition {number} lies outside its extended partition; "
                    "the table is damaged"
                )
            out.append(Partition(number, first * 512, count * 512, f"0x{ptype:02x}",
                                 MBR_KINDS.get(ptype, "other")))
            number += 1
        if ntype == 0 or nrel == 0:
            return out
        if ntype not in MBR_EXTENDED:
            warnings.append(f"the logical partition record at sector {ebr} links to a "
                            f"record of type 0x{ntype:02x}; stopped there")
            return out
        ebr = ext_start + nrel
        if ebr >= ext_end:
            raise PartitionTableError(
                "a logical partition record points outside the extended partition; "
                "the table is damaged"
            )
