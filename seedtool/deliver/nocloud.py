"""NoCloud seed ISOs: a `cidata` ISO 9660 image holding `user-data` and `meta-data`.

cloud-init's NoCloud datasource finds its seed on any block device whose filesystem
label is `cidata` (it looks for the label in upper and lower case; cloud-init docs,
"NoCloud" datasource) and reads the files `user-data`, `meta-data` and optionally
`network-config` and `vendor-data`. Those names are lower case with a hyphen, which
plain ISO 9660 cannot hold, so the image carries Rock Ridge and Joliet names, as
`genisoimage -volid cidata -joliet -rock` would make (the command cloud-init's docs
give). Built in pure Python with pycdlib (the `iso` extra), so no external tool is
needed.

The user-data normally holds a seed envelope: the ISO is as secret as the seed.
Nothing here prints or logs its content; `write_iso` writes atomically with mode 0600.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from collections.abc import Mapping

from ..shared.errors import DeliveryError
from ..shared.fileio import atomic_write

VOLUME_LABEL = "cidata"
#: instance ids become directory names under /var/lib/cloud/instances/
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def new_instance_id() -> str:
    """A fresh instance id: a new one makes cloud-init treat the boot as a first boot."""
    return f"iid-seedtool-{uuid.uuid4().hex}"


def meta_data(instance_id: str, hostname: str | None = None) -> bytes:
    """NoCloud `meta-data` (YAML) with the instance id and optionally a hostname."""
    if not _INSTANCE_ID.match(instance_id):
        raise DeliveryError(
            f"instance id {instance_id!r} is not usable: use letters, digits, '.', '_' "
            "and '-' only (at most 128 characters)"
        )
    lines = [f"instance-id: {instance_id}"]
    if hostname is not None:
        if not _HOSTNAME.match(hostname):
            raise DeliveryError(
                f"hostname {hostname!r} is not a valid host name: use letters, digits and "
                "'-' (at most 63 characters)"
            )
        lines.append(f"local-hostname: {hostname}")
    return ("\n".join(lines) + "\n").encode("ascii")


def build_iso(files: Mapping[str, bytes]) -> bytes:
    """An ISO 9660 image labelled `cidata` holding `files` (name -> content) at its root.

    Names are kept exactly in the Rock Ridge and Joliet trees; the ISO 9660 names
    are derived 8.3 upper-case aliases that nobody reads.
    """
    try:
        import pycdlib
    except ImportError:
        raise DeliveryError(
            "building a NoCloud ISO needs pycdlib; install seedtool with the 'iso' extra "
            "(pip install 'seedtool[iso]')"
        ) from None
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
    used: set[str] = set()
    try:
        for name, content in files.items():
            if not name or "/" in name or len(name) > 64:
                raise DeliveryError(f"cannot put a file named {name!r} on a NoCloud ISO")
            alias = _iso9660_alias(name, used)
            iso.add_fp(
                io.BytesIO(content),
                len(content),
                iso_path=f"/{alias};1",
                rr_name=name,
                joliet_path=f"/{name}",
                file_mode=0o100400,
            )
        out = io.BytesIO()
        iso.write_fp(out)
    except pycdlib.pycdlibexception.PyCdlibException as e:
        raise DeliveryError(f"cannot build the NoCloud ISO: {e}") from None
    finally:
        iso.close()
    return out.getvalue()


def _iso9660_alias(name: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Z0-9_]", "_", name.upper())[:8] or "FILE"
    alias, n = stem, 0
    while alias in used:
        n += 1
        alias = f"{stem[:6]}{n:02d}"
    used.add(alias)
    return alias


def nocloud_iso(
    user_data: bytes,
    *,
    instance_id: str | None = None,
    hostname: str | None = None,
    network_config: bytes | None = None,
    vendor_data: bytes | None = None,
) -> tuple[bytes, str]:
    """A NoCloud seed ISO and the instance id written into its meta-data."""
    iid = instance_id or new_instance_id()
    files: dict[str, bytes] = {"user-data": user_data, "meta-data": meta_data(iid, hostname)}
    if network_config is not None:
        files["network-config"] = network_config
    if vendor_data is not None:
        files["vendor-data"] = vendor_data
    return build_iso(files), iid


def write_iso(
    path: str | os.PathLike[str],
    user_data: bytes,
    *,
    instance_id: str | None = None,
    hostname: str | None = None,
    network_config: bytes | None = None,
) -> str:
    """Write a NoCloud seed ISO atomically with mode 0600; return its instance id."""
    image, iid = nocloud_iso(
        user_data, instance_id=instance_id, hostname=hostname, network_config=network_config
    )
    atomic_write(path, image, mode=0o600)
    return iid
