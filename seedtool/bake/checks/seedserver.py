"""Check: the image's seed-server configuration, when it has one, is one the guest
accepts (the guest's own parser, `seedtool.guest.netseed.config_from_mapping`: https
URLs, a timeout of 1 to 60 s, a known identity) and its CA file holds PEM certificates.
A broken one means the guest asks no server at boot."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ...guest import netseed
from ...shared.errors import UsageError
from ..findings import Finding
from ..install import SEED_SERVERS, ca_certificates
from ..tree import is_file

if TYPE_CHECKING:
    from . import Context

CONFIG = "/" + SEED_SERVERS
_FIX = "rerun seedtool bake --seed-server URL --seed-server-ca CA.pem"


def seed_servers_valid(ctx: Context) -> list[Finding]:
    fs = ctx.fs
    if fs.stat(CONFIG) is None:
        return []
    if not is_file(fs, CONFIG):
        return [Finding(CONFIG, "is not a regular file, so the guest asks no seed server", _FIX)]
    raw = fs.read(CONFIG)
    if len(raw) > netseed.MAX_CONFIG_SIZE:
        return [Finding(CONFIG, f"is larger than {netseed.MAX_CONFIG_SIZE} bytes", _FIX)]
    try:
        config = netseed.config_from_mapping(json.loads(raw.decode("utf-8")), CONFIG)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return [Finding(CONFIG, "is not valid JSON, so the guest asks no seed server", _FIX)]
    except netseed.ConfigError as e:
        return [Finding(CONFIG, f"the guest refuses it ({str(e).split(';')[0]}), so it asks "
                        "no seed server", _FIX)]
    if not is_file(fs, config.ca):
        return [Finding(config.ca, "the seed servers' CA certificate is missing, so the guest "
                        "trusts no seed server", _FIX)]
    try:
        ca_certificates(fs.read(config.ca), config.ca)
    except UsageError:
        return [Finding(config.ca, "holds no PEM certificate, so the guest trusts no seed "
                        "server", _FIX)]
    return []
