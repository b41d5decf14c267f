"""The GPT/MBR reader against tables written by util-linux's sfdisk (an independent
producer), damaged tables, and arbitrary bytes."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seedtool.image.partitions import (
    GUID_ESP,
    GUID_LINUX_DATA,
    GUID_ROOT_ARM64,
    GUID_ROOT_X86_64,
    PartitionTableError,
    parse_bytes,
    read_partitions,
)

pytestmark = pytest.mark.skipif(shutil.which("sfdisk") is None,
                                reason="sfdisk (Debian package fdisk) is not installed")

MiB = 1 << 20


def sfdisk(img: Path, size: int, script: str) -> list[dict[str, object]]:
    """Partition `img` with sfdisk and return sfdisk's own view of the result."""
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "-q", str(img)], input=script.encode(), check=True,
                   capture_output=True)
    out = subprocess.run(["sfdisk", "-J", str(img)], check=True, capture_output=True).stdout
    parts: list[dict[str, object]] = json.loads(out)["partitiontable"]["partitions"]
    return parts


def _number(node: object) -> int:
    return int(str(node).rsplit("img", 1)[1])


def test_gpt_matches_sfdisk(tmp_path: Path) -> None:
    img = tmp_path / "gpt.img"
    theirs = sfdisk(img, 64 * MiB, f"label: gpt\nsize=8M, type=U, name=esp\n"
                    f"size=16M, type={GUID_ROOT_X86_64}\nsize=8M, type={GUID_ROOT_ARM64}\n"
                    "type=L, name=data\n")
    table = read_partitions(img)
    assert table.scheme == "gpt" and table.sector_size == 512 and table.warnings == ()
    assert [(p.number, p.start, p.size, p.type) for p in table.partitions] == [
        (_number(t["node"]), int(str(t["start"])) * 512, int(str(t["size"])) * 512,
         str(t["type"]).lower()) for t in theirs]
    kinds = [p.kind for p in table.partitions]
    assert kinds == ["esp", "root-x86-64", "root-arm64", "linux"]
    assert table.partitions[0].type == GUID_ESP and table.partitions[3].type == GUID_LINUX_DATA
    assert table.partitions[0].name == "esp" and table.partitions[3].name == "data"


def test_mbr_with_logical_partitions_matches_sfdisk(tmp_path: Path) -> None:
    img = tmp_path / "mbr.img"
    theirs = sfdisk(img, 24 * MiB, "label: dos\n,4M,83\n,4M,83\n,,E\n,2M,83\n,2M,8e\n,,83\n")
    table = read_partitions(img)
    assert table.scheme == "mbr"
    assert [(p.number, p.start, p.size, p.type) for p in table.partitions] == [
        (_number(t["node"]), int(str(t["start"])) * 512, int(str(t["size"])) * 512,
         f"0x{int(str(t['type']), 16):02x}") for t in theirs]
    assert [p.kind for p in table.partitions] == ["linux", "linux", "extended", "linux",
                                                  "lvm", "linux"]
    assert [p.number for p in table.partitions] == [1, 2, 3, 5, 6, 7]


def _sfdisk_table(img: Path) -> dict[str, object]:
    out = subprocess.run(["sfdisk", "-J", str(img)], check=True, capture_output=True).stdout
    table: dict[str, object] = json.loads(out)["partitiontable"]
    return table


def test_gpt_partuuids_and_partlabels_match_sfdisk(tmp_path: Path) -> None:
    img = tmp_path / "gpt.img"
    sfdisk(img, 32 * MiB, "label: gpt\nlabel-id: 1B2C3D4E-0000-4000-8000-0123456789AB\n"
           "size=8M, type=L, name=var, uuid=6A9E1C1F-2B33-4C44-9D55-E66F77A88B99\n"
           "type=L, name=root\n")
    theirs = _sfdisk_table(img)
    table = read_partitions(img)
    assert table.disk_id == "1b2c3d4e-0000-4000-8000-0123456789ab" == \
        str(theirs["id"]).lower()
    parts = theirs["partitions"]
    assert isinstance(parts, list)
    assert [(p.uuid, p.name) for p in table.partitions] == [
        (str(t["uuid"]).lower(), t["name"]) for t in parts]
    assert table.partitions[0].uuid == "6a9e1c1f-2b33-4c44-9d55-e66f77a88b99"


def test_mbr_partuuid_is_disk_signature_and_number(tmp_path: Path) -> None:
    img = tmp_path / "mbr.img"
    sfdisk(img, 24 * MiB, "label: dos\nlabel-id: 0x5eed0a1b\n,4M,83\n,,E\n,4M,83\n,,83\n")
    assert str(_sfdisk_table(img)["id"]) == "0x5eed0a1b"
    table = read_partitions(img)
    assert table.disk_id == "5eed0a1b"
    # what the kernel reports as PARTUUID (block/partitions/msdos.c: "%08x-%02x")
    assert [p.uuid for p in table.partitions] == [
        "5eed0a1b-01", "5eed0a1b-02", "5eed0a1b-05", "5eed0a1b-06"]


def test_mbr_numbers_primaries_by_slot(tmp_path: Path) -> None:
    img = tmp_path / "mbr.img"
    sfdisk(img, 16 * MiB, "label: dos\n2048,4096,83\n6144,4096,83\n")
    data = bytearray(img.read_bytes())
    data[446:462], data[462:478] = bytes(16), bytes(data[462:478])  # empty slot 1
    table = parse_bytes(bytes(data))
    assert [p.number for p in table.partitions] == [2]


def test_unpartitioned_image_is_none(tmp_path: Path) -> None:
    assert parse_bytes(bytes(MiB)).scheme == "none"
    if shutil.which("mkfs.ext4"):
        img = tmp_path / "fs.img"
        img.write_bytes(b"")
        with open(img, "wb") as f:
            f.truncate(8 * MiB)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
        assert read_partitions(img).scheme == "none"


def _gpt_image(tmp_path: Path) -> bytes:
    img = tmp_path / "gpt.img"
    sfdisk(img, 8 * MiB, "label: gpt\n,1M,U\n,,L\n")
    return img.read_bytes()


def test_damaged_primary_header_falls_back_to_the_backup(tmp_path: Path) -> None:
    data = bytearray(_gpt_image(tmp_path))
    data[512 + 40] ^= 0xFF  # inside the header: its CRC no longer matches
    table = parse_bytes(bytes(data))
    assert [p.number for p in table.partitions] == [1, 2]
    assert any("primary GPT is damaged" in w for w in table.warnings)


def test_damaged_primary_entries_fall_back_to_the_backup(tmp_path: Path) -> None:
    data = bytearray(_gpt_image(tmp_path))
    data[1024 + 40] ^= 0x01  # first entry's start LBA: the entries CRC fails
    table = parse_bytes(bytes(data))
    assert table.partitions[0].start == MiB
    assert any("primary GPT is damaged" in w for w in table.warnings)


def test_damaged_backup_is_a_warning(tmp_path: Path) -> None:
    data = bytearray(_gpt_image(tmp_path))
    data[-512 + 40] ^= 0xFF
    table = parse_bytes(bytes(data))
    assert len(table.partitions) == 2
    assert any("backup GPT is missing or damaged" in w for w in table.warnings)


def test_both_copies_damaged_is_an_error(tmp_path: Path) -> None:
    data = bytearray(_gpt_image(tmp_path))
    data[512 + 40] ^= 0xFF
    data[-512 + 40] ^= 0xFF
    with pytest.raises(PartitionTableError, match="both GPT headers"):
        parse_bytes(bytes(data))


def test_truncated_gpt_image_is_an_error(tmp_path: Path) -> None:
    data = _gpt_image(tmp_path)
    with pytest.raises(PartitionTableError, match="outside|both GPT"):
        parse_bytes(data[: 4 * MiB])


def test_protective_mbr_without_gpt_is_an_error(tmp_path: Path) -> None:
    data = bytearray(_gpt_image(tmp_path))
    data[512:520] = b"NOT PART"
    data[-512:-504] = b"NOT PART"
    with pytest.raises(PartitionTableError, match="no GPT header"):
        parse_bytes(bytes(data))


def test_logical_partition_loop_is_an_error(tmp_path: Path) -> None:
    img = tmp_path / "mbr.img"
    sfdisk(img, 16 * MiB, "label: dos\n,4M,83\n,,E\n,2M,83\n,2M,83\n")
    data = bytearray(img.read_bytes())
    ext_start = struct.unpack_from("<I", data, 446 + 16 + 8)[0]
    # the second EBR's link points back at the first one (relative offset 0 means end,
    # so link the first EBR to itself through the second slot instead)
    first = ext_start * 512
    nxt = struct.unpack_from("<I", data, first + 462 + 8)[0]
    second = (ext_start + nxt) * 512
    struct.pack_into("<I", data, second + 462 + 8, nxt)  # second -> itself
    data[second + 462 + 4] = 0x05
    with pytest.raises(PartitionTableError, match="loops"):
        parse_bytes(bytes(data))


def test_partition_beyond_the_image_is_an_error(tmp_path: Path) -> None:
    img = tmp_path / "mbr.img"
    sfdisk(img, 16 * MiB, "label: dos\n,,83\n")
    with pytest.raises(PartitionTableError, match="outside the image"):
        parse_bytes(img.read_bytes()[: 8 * MiB])


# ---- any input: a table or our own error, never anything else ---------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=4096))
def test_arbitrary_bytes_give_a_table_or_our_error(data: bytes) -> None:
    try:
        table = parse_bytes(data)
    except PartitionTableError:
        return
    for p in table.partitions:
        assert 0 < p.start and p.start + p.size <= len(data)


def _mbr_with(entries: list[tuple[int, int, int, int]]) -> bytes:
    sector = bytearray(512)
    for slot, (status, ptype, lba, count) in enumerate(entries[:4]):
        struct.pack_into("<B3sB3sII", sector, 446 + 16 * slot, status, b"\0" * 3, ptype,
                         b"\0" * 3, lba, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 0x80]),
                          st.sampled_from([0x83, 0x05, 0x0F, 0x8E, 0xEE, 0x07, 0]),
                          st.integers(0, 80), st.integers(0, 80)), max_size=4),
       st.binary(min_size=0, max_size=64 * 512))
def test_structured_mbrs_give_a_table_or_our_error(
        entries: list[tuple[int, int, int, int]], rest: bytes) -> None:
    data = _mbr_with(entries) + rest
    try:
        table = parse_bytes(data)
    except PartitionTableError:
        return
    for p in table.partitions:
        assert p.start + p.size <= len(data)


@pytest.fixture(scope="module")
def gpt_head(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _gpt_image(tmp_path_factory.mktemp("gpt"))[: 34 * 512]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 34 * 512 - 1), st.integers(0, 255)),
                min_size=1, max_size=8),
       st.booleans())
def test_mutated_gpts_give_a_table_or_our_error(
        gpt_head: bytes, flips: list[tuple[int, int]], fix_crc: bool) -> None:
    data = bytearray(gpt_head)
    for pos, value in flips:
        data[pos] = value
    if fix_crc:
        # recompute the CRCs so the mutation reaches the parser's deeper checks
        n, size = struct.unpack_from("<II", data, 512 + 80)
        if 0 < n * size <= 32 * 512:
            struct.pack_into("<I", data, 512 + 88, zlib.crc32(data[1024:1024 + n * size]))
        hsize = struct.unpack_from("<I", data, 512 + 12)[0]
        if 92 <= hsize <= 512:
            struct.pack_into("<I", data, 512 + 16, 0)
            struct.pack_into("<I", data, 512 + 16, zlib.crc32(data[512:512 + hsize]))
    try:
        table = parse_bytes(bytes(data))
    except PartitionTableError:
        return
    for p in table.partitions:
        assert p.start + p.size <= len(data)
