"""The per-platform decoders of a datasource's own `random_seed` (seedtool.guest.platform_seed).

What each cloud-init datasource leaves in `metadata["random_seed"]`, decoded and
credited for what it carries: strict base64 where the platform sends base64 text,
the bytes cloud-init already decoded (OpenStack, ConfigDrive, IBMCloud), Hyper-V's
OEM0 ACPI table with its 36-byte header checked and never counted (Azure), nothing
for a platform whose format is unknown. The same code run on values made by the
real cloud-init of Debian 12 and 13 is in tests/guest/test_cloudinit_policy.py.
"""

from __future__ import annotations

import base64
import os
import struct

import pytest

from seedtool.guest import platform_seed
from seedtool.guest.platform_seed import DatasourceSeed, decode, oem0_payload
from seedtool.shared.envelope import MAX_CREDIT_BITS


def oem0_table(payload: bytes, *, signature: bytes = b"OEM0", table_id: bytes = b"MICROSFT",
               length: int | None = None, checksum_ok: bool = True) -> bytes:
    """An ACPI OEM0 table as Hyper-V lays it out (ACPI "System Description Table Header")."""
    size = 36 + len(payload) if length is None else length
    head = struct.pack("<4sIBB6s8sI4sI", signature, size, 1, 0, b"VRTUAL", table_id, 1,
                       b"MSFT", 0x01000013)
    table = bytearray(head + payload)
    table[9] = (-sum(table)) % 256  # the checksum byte makes the whole table sum to 0
    if not checksum_ok:
        table[9] ^= 0x55
    return bytes(table)


def zeroed_by_the_kernel(table: bytes) -> bytes:
    """What Linux 6.9+ leaves in the table after consuming it (drivers/hv/hv_common.c):
    the payload zeroed, the checksum fixed up."""
    return oem0_table(b"\x00" * (len(table) - 36))


# ---- OpenStack family: cloud-init decoded the base64 itself ---------------------------


@pytest.mark.parametrize("platform", ["openstack", "configdrive", "ibmcloud", "OpenStack"])
def test_openstack_family_bytes_are_credited_at_most_512_bits(platform: str) -> None:
    seed = decode(platform, os.urandom(512))  # nova's 512 bytes, as cloud-init holds them
    assert isinstance(seed, DatasourceSeed) and len(seed) == 512
    assert seed.creditable_bits == MAX_CREDIT_BITS == 512 and seed.reason == ""
    small = decode(platform, os.urandom(20))
    assert small is not None and small.creditable_bits == 160  # 8 bits a byte below the cap


def test_base64_text_is_decoded_strictly() -> None:
    raw = os.urandom(48)
    seed = decode("openstack", base64.b64encode(raw).decode())
    assert seed == raw and seed is not None and seed.creditable_bits == 384


@pytest.mark.parametrize("text", [
    "this is not a seed, it is text!",
    base64.b64encode(os.urandom(48)).decode()[:-1],  # bad padding
    "QUJD REVG",  # white space inside: b64decode without validate would accept it
    "QUJDREVG\n",
    "QUJD-_EVG",  # url-safe alphabet
    "séed",
])
def test_text_that_is_not_strict_base64_is_mixed_never_credited(text: str) -> None:
    seed = decode("openstack", text)
    assert seed is not None and seed.creditable_bits == 0
    assert seed.reason == "text, not strict base64"
    assert bytes(seed) == text.encode()  # still mixed, as the text it is


def test_bytes_all_alike_carry_nothing() -> None:
    for value in (b"\x00" * 64, b"\xff" * 512, b"a"):
        seed = decode("openstack", value)
        assert seed is not None and seed.creditable_bits == 0
        assert seed.reason == "all its bytes are equal"


def test_no_value_no_seed() -> None:
    for value in (None, "", b"", 0, ["x"], {"a": 1}):
        assert decode("openstack", value) is None


def test_an_oversized_value_is_not_decoded() -> None:
    seed = decode("openstack", os.urandom(platform_seed.VALUE_MAX + 1))
    assert seed is not None and seed.creditable_bits == 0
    assert len(seed) == platform_seed.PLATFORM_SEED_MAX


# ---- Azure: the OEM0 table ------------------------------------------------------------


def test_azure_oem0_header_is_checked_and_never_counted() -> None:
    payload = os.urandom(64)  # what Hyper-V provides today
    table = oem0_table(payload)
    assert oem0_payload(table) == (payload, "")
    # cloud-init's DataSourceAzure._get_random_seed: base64 text of the whole table
    seed = decode("azure", base64.b64encode(table).decode())
    assert seed == table  # all of it is mixed
    assert seed is not None and seed.creditable_bits == 512  # 64 payload bytes, header not
    short = decode("azure", base64.b64encode(oem0_table(os.urandom(16))).decode())
    assert short is not None and short.creditable_bits == 128  # 16 bytes, not 16 + 36


@pytest.mark.parametrize("table, why", [
    (oem0_table(os.urandom(64), signature=b"OEM1"), "not an OEM0 ACPI table"),
    (oem0_table(os.urandom(64), checksum_ok=False), "its ACPI checksum is wrong"),
    (oem0_table(os.urandom(64), length=99), "its ACPI length field does not match its size"),
    (oem0_table(os.urandom(64), table_id=b"OTHEROEM"), "not Hyper-V's OEM0 table"),
    (oem0_table(b""), "holds no random bytes (consumed by the kernel)"),
    (oem0_table(os.urandom(4097)), "its payload is larger than Hyper-V's"),
    (b"OEM0" + os.urandom(20), "shorter than an ACPI table header"),
    (os.urandom(100), "not an OEM0 ACPI table"),
])
def test_azure_refuses_what_is_not_hyperv_oem0(table: bytes, why: str) -> None:
    seed = decode("azure", base64.b64encode(table).decode())
    assert seed is not None and seed.creditable_bits == 0
    assert seed.reason == f"OEM0 table {why}"
    assert seed == table[:platform_seed.PLATFORM_SEED_MAX]  # still mixed


def test_azure_table_consumed_by_the_kernel_credits_nothing() -> None:
    # Linux 6.9+ zeroes the payload and fixes the checksum: a valid table of zeros
    table = zeroed_by_the_kernel(oem0_table(os.urandom(64)))
    seed = decode("azure", base64.b64encode(table).decode())
    assert seed is not None and seed.creditable_bits == 0
    assert seed.reason == "all its bytes are equal"
    # and the header alone (the kernel's other kexec guard: length reset to 36)
    header_only = decode("azure", base64.b64encode(oem0_table(b"")).decode())
    assert header_only is not None and header_only.creditable_bits == 0


def test_azure_text_is_never_credited_as_text() -> None:
    seed = decode("azure", "OEM0 but as text, not base64!")
    assert seed is not None and seed.creditable_bits == 0
    assert seed.reason == "text, not strict base64"


# ---- platforms whose format is unknown ------------------------------------------------


@pytest.mark.parametrize("platform", ["nocloud", "lxd", "ec2", "gce", "", "vmware"])
def test_unknown_platforms_are_mixed_never_credited(platform: str) -> None:
    raw = os.urandom(64)
    for value in (raw, base64.b64encode(raw).decode()):
        seed = decode(platform, value)
        assert seed == raw and seed is not None  # decoded, mixed
        assert seed.creditable_bits == 0 and seed.reason == "format unknown"


def test_repr_never_shows_the_bytes() -> None:
    raw = os.urandom(64)
    seed = decode("openstack", raw)
    for text in (repr(seed), str(seed), f"{seed}"):
        assert raw.hex() not in text and repr(raw)[2:-1] not in text
        assert "openstack" in text and "512" in text
