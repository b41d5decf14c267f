"""A datasource's own `random_seed`: what it is on each platform, and what of it may be credited.

cloud-init hands every module the datasource's `metadata["random_seed"]` in the form
the datasource made it, which differs per platform (cloud-init 22.4.2 and 25.1.4,
the same in both):

* OpenStack and ConfigDrive (`sources/helpers/openstack.py`, `BaseReader.read_v2`)
  and IBMCloud (`sources/DataSourceIBMCloud.py`, `metadata_from_dir`): the
  platform sends base64 text in `meta_data.json`; cloud-init base64-decodes it
  itself (without validation) and keeps only the resulting bytes.
* Azure (`sources/DataSourceAzure.py`, `_get_random_seed`): the whole ACPI table
  `/sys/firmware/acpi/tables/OEM0`, base64-encoded by cloud-init into text. The
  table starts with the 36-byte ACPI "System Description Table Header" (signature,
  length, revision, checksum, OEM id, OEM table id, OEM revision, creator id,
  creator revision: ACPI 6.5 section 5.2.6), which is fixed and predictable; only
  the bytes after it come from the host's RNG. Linux 6.9+ consumes those bytes
  itself and zeroes them (drivers/hv/hv_common.c, `ms_hyperv_late_init`).
* Every other datasource (NoCloud, LXD, ...) sets no `random_seed` of its own; one
  that appears there was written by whoever wrote the meta-data, in no defined
  format.

`decode()` turns the value into a `DatasourceSeed`: all of its bytes (strictly
decoded where the platform sends base64) are mixed into the pool; at most
`8 x (bytes that can carry entropy)` bits, and never more than
`envelope.MAX_CREDIT_BITS`, may be credited, and none at all for text that is not
strict base64, a malformed or zeroed OEM0 table, bytes that are all equal, or a
platform whose format is unknown. Whether the platform is trusted is the policy's
business, not this module's. Standard library only; nothing here logs or shows
seed bytes.
"""

from __future__ import annotations

import base64
import binascii
import struct

from ..shared.envelope import MAX_CREDIT_BITS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the largest decoded datasource seed that is mixed (OpenStack sends 512 bytes;
#: Hyper-V's OEM0 payload is at most 4 KiB by the kernel's own check)
PLATFORM_SEED_MAX = 4096
#: a longer value is not decoded at all (it is no seed any platform sends)
VALUE_MAX = 4 * PLATFORM_SEED_MAX

OPENSTACK = "openstack-base64"
AZURE = "azure-oem0"
#: cloud-init platform_type -> the format its datasource leaves in metadata["random_seed"]
FORMATS = {
    "openstack": OPENSTACK,
    "configdrive": OPENSTACK,
    "ibmcloud": OPENSTACK,
    "azure": AZURE,
}

#: ACPI "System Description Table Header": signature, length, revision, checksum,
#: OEM id, OEM table id, OEM revision, creator id, creator revision (little endian)
ACPI_HEADER = struct.Struct("<4sIBB6s8sI4sI")
#: the OEM table id Hyper-V puts on its OEM0 seed table, as the kernel checks it
#: (drivers/hv/hv_common.c: strncmp(header->oem_table_id, "MICROSFT", 8))
HYPERV_OEM_TABLE_ID = b"MICROSFT"
#: the payload bounds the kernel accepts (same file): 8 bytes to 4 KiB
OEM0_PAYLOAD_MIN, OEM0_PAYLOAD_MAX = 8, 4096


class DatasourceSeed(bytes):
    """The bytes a datasource's seed decodes to (all of them are mixed), knowing what
    of them may be credited: `creditable_bits` (0 when nothing) and, when 0, `reason`.

    A `bytes` so that the cloud-init module can search, scrub and parse it like the
    seed it always was; its repr never shows the bytes.
    """

    platform: str
    creditable_bits: int
    reason: str

    def __new__(cls, data: bytes, platform: str, creditable_bits: int,
                reason: str = "") -> DatasourceSeed:
        self = super().__new__(cls, data)
        self.platform = platform
        self.creditable_bits = creditable_bits
        self.reason = "" if creditable_bits else (reason or "carries nothing creditable")
        return self

    def __repr__(self) -> str:
        return (f"DatasourceSeed(platform={self.platform!r}, {len(self)} bytes, "
                f"creditable_bits={self.creditable_bits}, reason={self.reason!r})")

    __str__ = __repr__


def _bits(carrier: bytes) -> tuple[int, str]:
    """What `carrier` (bytes that may carry entropy) can be credited, and why not."""
    if not carrier:
        return 0, "empty"
    if carrier.count(carrier[:1]) == len(carrier):
        # e.g. an OEM0 table whose payload the kernel already consumed and zeroed
        return 0, "all its bytes are equal"
    return min(8 * len(carrier), MAX_CREDIT_BITS), ""


def _strict_base64(text: str | bytes) -> bytes | None:
    try:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
        return base64.b64decode(raw, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None


def oem0_payload(table: bytes) -> tuple[bytes, str]:
    """The host-random part of a Hyper-V OEM0 ACPI table, or (b"", why it is not one)."""
    if len(table) < ACPI_HEADER.size:
        return b"", "shorter than an ACPI table header"
    sig, length, _rev, _checksum, _oem, table_id, _orev, _cid, _crev = (
        ACPI_HEADER.unpack_from(table))
    if sig != b"OEM0":
        return b"", "not an OEM0 ACPI table"
    if length != len(table):
        return b"", "its ACPI length field does not match its size"
    if sum(table) % 256:
        return b"", "its ACPI checksum is wrong"
    if table_id != HYPERV_OEM_TABLE_ID:
        return b"", "not Hyper-V's OEM0 table"
    payload = table[ACPI_HEADER.size:]
    if len(payload) < OEM0_PAYLOAD_MIN:
        return b"", "holds no random bytes (consumed by the kernel)"
    if len(payload) > OEM0_PAYLOAD_MAX:
        return b"", "its payload is larger than Hyper-V's"
    return payload, ""


def decode(platform: str, value: Any) -> DatasourceSeed | None:
    """The datasource seed `value` (as `metadata["random_seed"]` holds it) of `platform`
    (cloud-init's platform_type); None when there is none."""
    if not value or not isinstance(value, (str, bytes)):
        return None
    platform = (platform or "").lower()
    kind = FORMATS.get(platform)
    if len(value) > VALUE_MAX:
        raw = value.encode("utf-8", "replace") if isinstance(value, str) else value
        return DatasourceSeed(raw[:PLATFORM_SEED_MAX], platform, 0, "larger than any platform's")
    if isinstance(value, str):
        decoded = _strict_base64(value)
        if decoded is None:
            # text that is not strict base64: mixed as it is, never credited (a
            # character of text is not 8 bits of entropy)
            text = value.encode("utf-8", "replace")[:PLATFORM_SEED_MAX]
            return DatasourceSeed(text, platform, 0, "text, not strict base64")
    else:
        decoded = bytes(value)
    mixed = decoded[:PLATFORM_SEED_MAX]
    if kind is None:
        return DatasourceSeed(mixed, platform, 0, "format unknown")
    if kind == AZURE:
        carrier, why = oem0_payload(decoded)
        if not carrier:
            return DatasourceSeed(mixed, platform, 0, f"OEM0 table {why}")
    else:
        carrier = decoded
    bits, why = _bits(carrier[:PLATFORM_SEED_MAX])
    return DatasourceSeed(mixed, platform, bits, why)
