"""Fuzz target: GPT and MBR partition tables (`seedtool.image.partitions`).

A partition table is spread over a disk (MBR at 0, GPT header at LBA 1, entries at
LBA 2.., backup at the last LBA, EBRs anywhere), so a plain byte string would need
tens of kilobytes to reach the GPT backup. The input describes a sparse image
instead: a first byte 0 means "the rest is the image"; otherwise

    u32 size in 512-byte sectors, then repeated (u32 sector, u16 length, bytes)

writes those bytes at those sectors of an otherwise zero image. With a first byte
of 2 the harness then recomputes the CRC32s of the GPT headers and entry arrays
(at LBA 1 and the last LBA, for 512- and 4096-byte sectors), as fuzzers do for
checksummed formats: otherwise nearly every mutation of a GPT header only tests
the CRC check. The seeds are real tables written by sfdisk (when it is installed)
and by hand, in this form.

Each input is parsed twice: in memory (`parse_partitions` over the sparse image)
and from a real sparse file of that size (`read_partitions`). Invariants: only
`PartitionTableError` ends a parse; both readings agree; every partition lies
inside the image and, for GPT, inside the usable area; numbers are unique.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator

from seedtool.image import partitions as pt

from ._scratch import scratch_path
from ._script import Script

INSTRUMENT = ["seedtool"]
MAX_LEN = 4096
SECTOR = 512
#: largest sparse image, in sectors (2 TiB, an MBR's limit); files are sparse
MAX_SECTORS = 1 << 32

_PATH = scratch_path("disk.img")


class SparseImage:
    def __init__(self, size: int, chunks: list[tuple[int, bytes]]) -> None:
        self.size = size
        self.chunks = chunks  # (byte offset, data), later ones win

    @classmethod
    def from_input(cls, data: bytes) -> SparseImage:
        if not data or data[0] == 0:
            return cls(len(data) - 1 if data else 0, [(0, data[1:])])
        script = Script(data[1:])
        size = (script.u32() % MAX_SECTORS) * SECTOR
        chunks: list[tuple[int, bytes]] = []
        while script.remaining:
            lba, length = script.u32(), script.u16()
            chunks.append((lba * SECTOR, script.take(length)))
        image = cls(size, chunks)
        if data[0] == 2:
            image.fix_gpt_crcs()
        return image

    def fix_gpt_crcs(self) -> None:
        """Make the CRCs of every GPT header (and its entry array) right, so that
        mutations of the fields behind the CRCs reach the code that uses them."""
        for sector in (512, 4096):
            lbas = {1, self.size // sector - 1}
            for lba in sorted(lbas):
                if lba <= 0:
                    continue
                raw = bytearray(self.read_at(lba * sector, 92))
                if len(raw) < 92 or raw[:8] != pt.GPT_SIGNATURE:
                    continue
                ent_lba, n, esize = struct.unpack_from("<QII", raw, 72)
                if 0 < n * esize <= pt.GPT_ARRAY_MAX:
                    array = self.read_at(ent_lba * sector, n * esize)
                    struct.pack_into("<I", raw, 88, zlib.crc32(array) & 0xFFFFFFFF)
                (hsize,) = struct.unpack_from("<I", raw, 12)
                if 92 <= hsize <= sector:
                    header = bytearray(self.read_at(lba * sector, hsize))
                    header[: len(raw)] = raw
                    header[16:20] = bytes(4)
                    struct.pack_into("<I", header, 16, zlib.crc32(header) & 0xFFFFFFFF)
                    raw = header
                self.chunks.append((lba * sector, bytes(raw)))

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset >= self.size:
            return b""
        length = min(length, self.size - offset)
        out = bytearray(length)
        for start, blob in self.chunks:
            lo, hi = max(start, offset), min(start + len(blob), offset + length)
            if lo < hi:
                out[lo - offset : hi - offset] = blob[lo - start : hi - start]
        return bytes(out)

    def write_file(self, path: str) -> None:
        with open(path, "wb") as f:
            f.truncate(self.size)
            for start, blob in self.chunks:
                end = min(start + len(blob), self.size)
                if start < end:
                    f.seek(start)
                    f.write(blob[: end - start])


def encode(size_sectors: int, image: bytes, min_run: int = 1) -> bytes:
    """The sparse form of `image` (its non-zero sectors) in an image of that size."""
    out = bytearray(b"\x01" + struct.pack("<I", size_sectors))
    for lba in range(0, len(image) // SECTOR):
        sector = image[lba * SECTOR : (lba + 1) * SECTOR]
        if sector.strip(b"\x00"):
            out += struct.pack("<IH", lba, SECTOR) + sector
    return bytes(out)


def _sfdisk_seeds() -> Iterator[bytes]:
    sfdisk = shutil.which("sfdisk")
    if sfdisk is None:
        return
    scripts = [
        (64, "label: gpt\nsize=8M, type=U, name=esp\nsize=16M, type=L, name=root\n"
             "type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709\n"),
        (24, "label: dos\n,4M,83\n,4M,83\n,,E\n,2M,83\n,2M,8e\n,,83\n"),
        (16, "label: dos\n,8M,ef\n,,83,*\n"),
    ]
    with tempfile.TemporaryDirectory(prefix="seedtool-fuzz-sfdisk-") as tmp:
        img = os.path.join(tmp, "disk.img")
        for mib, script in scripts:
            with open(img, "wb") as f:
                f.truncate(mib << 20)
            done = subprocess.run([sfdisk, "-q", img], input=script.encode(),
                                  capture_output=True, check=False)
            if done.returncode != 0:
                continue
            with open(img, "rb") as f:
                data = f.read()
            yield encode((mib << 20) // SECTOR, data)
            yield b"\x02" + encode((mib << 20) // SECTOR, data)[1:]


def _hand_gpt() -> bytes:
    """A minimal valid GPT on a 128-sector disk: one Linux partition, both copies."""
    n, esize, last = 4, 128, 127
    entry = (bytes.fromhex("af3dc60f838472478e793d69d8477de4") + b"\x11" * 16
             + struct.pack("<QQQ", 34, 40, 0) + "r".encode("utf-16-le").ljust(72, b"\x00"))
    array = entry + b"\x00" * (esize * (n - 1))

    def header(my: int, alt: int, entries: int) -> bytes:
        h = struct.pack("<8sIIII QQQQ 16s QIII", b"EFI PART", 0x10000, 92, 0, 0, my, alt,
                        34, last - 33, b"\x22" * 16, entries, n, esize,
                        zlib.crc32(array) & 0xFFFFFFFF)
        crc = zlib.crc32(h) & 0xFFFFFFFF
        return h[:16] + struct.pack("<I", crc) + h[20:]

    mbr = bytearray(SECTOR)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, last)
    mbr[510:512] = pt.MBR_SIGNATURE
    image = bytearray((last + 1) * SECTOR)
    image[0:SECTOR] = mbr
    image[SECTOR : SECTOR + 92] = header(1, last, 2)
    image[2 * SECTOR : 2 * SECTOR + len(array)] = array
    image[(last - 32) * SECTOR : (last - 32) * SECTOR + len(array)] = array
    image[last * SECTOR : last * SECTOR + 92] = header(last, 1, last - 32)
    return bytes(image)


def seeds() -> Iterator[bytes]:
    gpt = _hand_gpt()
    yield encode(len(gpt) // SECTOR, gpt)
    yield b"\x02" + encode(len(gpt) // SECTOR, gpt)[1:]
    yield b"\x00" + gpt[:SECTOR]
    yield from _sfdisk_seeds()
    yield b"\x00" + bytes(510) + pt.MBR_SIGNATURE


def _check(table: pt.PartitionTable, size: int) -> None:
    numbers = [p.number for p in table.partitions]
    assert len(set(numbers)) == len(numbers), "two partitions share a number"
    for p in table.partitions:
        assert p.size > 0 and p.start > 0, "an empty partition or one at the MBR"
        assert p.start + p.size <= size, "a partition extends past the end of the image"


def test_one_input(data: bytes) -> None:
    image = SparseImage.from_input(data)
    try:
        table: pt.PartitionTable | None = pt.parse_partitions(image.read_at, image.size)
    except pt.PartitionTableError:
        table = None
    if table is not None:
        _check(table, image.size)
    image.write_file(_PATH)
    try:
        from_file: pt.PartitionTable | None = pt.read_partitions(_PATH)
    except pt.PartitionTableError:
        from_file = None
    assert from_file == table, "reading the file and reading the bytes disagree"
