"""The image's seed policy: what the guest trusts, read from system config only.

The policy lives in `/etc/seedtool/policy.json`, written when the image is built
(`seedtool.bake.install`). It is never read from user-data: whoever can write
user-data must not be able to decide which keys or platforms are trusted.

This is a parser of outside input, so it is strict: an unknown setting, a wrong
type or an out-of-range value is refused with a sentence naming the setting. An
absent file means the defaults. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from ..shared.errors import UsageError
from ..shared.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # read at boot: no typing, pathlib or dataclasses (docs/guest.md "Boot time")
    from typing import Any

DEFAULT_POLICY_PATH = "/etc/seedtool/policy.json"
DEFAULT_TRUSTED_KEYS = "/etc/seedtool/trusted-keys"
#: the seed servers the image asks at boot (seedtool.guest.netseed; written by bake)
SEED_SERVERS_PATH = "/etc/seedtool/seed-servers.json"
DEFAULT_CLOCK_SKEW = 300
#: a day: more than any sane clock error, less than an envelope's longest life
MAX_CLOCK_SKEW = 86400
#: policy files are tiny; anything bigger is not one
MAX_POLICY_SIZE = 64 * 1024
_PLATFORM = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class PolicyError(UsageError):
    """The seed policy file is unreadable or invalid."""


class Policy(Record):
    """What the guest trusts. See docs/guest.md for each setting."""

    __slots__ = ("trusted_keys", "trusted_platforms", "clock_skew", "fail_closed",
                 "credit_datasource")
    FIELDS = __slots__
    DEFAULTS = {"trusted_keys": DEFAULT_TRUSTED_KEYS, "trusted_platforms": (),
                "clock_skew": DEFAULT_CLOCK_SKEW, "fail_closed": False,
                "credit_datasource": False}
    #: directory (or single file) of `*.pub` trusted envelope-signing keys (absolute)
    trusted_keys: str
    #: datasource platforms whose own `random_seed` may be credited (cloud-init's
    #: `platform_type`, lower case, e.g. "openstack", "azure")
    trusted_platforms: tuple[str, ...]
    #: seconds of clock error allowed at both ends of an envelope's validity period
    clock_skew: int
    #: make an uncredited outcome an error (cloud-init module raises, unit fails)
    fail_closed: bool
    #: master switch for crediting datasource seeds (also needs trusted_platforms)
    credit_datasource: bool

    def trusts_platform(self, platform: str) -> bool:
        return self.credit_datasource and platform.lower() in self.trusted_platforms

    def to_json(self) -> dict[str, Any]:
        return {
            "trusted_keys": self.trusted_keys,
            "trusted_platforms": list(self.trusted_platforms),
            "clock_skew": self.clock_skew,
            "fail_closed": self.fail_closed,
            "credit_datasource": self.credit_datasource,
        }


def _bool(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{where}: '{key}' must be true or false, not {json.dumps(value)[:40]}")
    return value


def policy_from_mapping(data: Mapping[str, Any], where: str = "seed policy") -> Policy:
    """Validate a policy given as a mapping (from JSON, or from the image builder)."""
    if not isinstance(data, Mapping):
        raise PolicyError(f"{where} must be a JSON object of settings; see docs/guest.md")
    known = {"trusted_keys", "trusted_platforms", "clock_skew", "fail_closed", "credit_datasource"}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise PolicyError(
            f"{where}: unknown setting '{unknown[0][:40]}'; the settings are "
            f"{', '.join(sorted(known))} (see docs/guest.md)"
        )
    kwargs: dict[str, Any] = {}
    if "trusted_keys" in data:
        tk = data["trusted_keys"]
        if not isinstance(tk, str) or not tk.startswith("/") or "\x00" in tk or len(tk) > 4096:
            raise PolicyError(f"{where}: 'trusted_keys' must be an absolute path in the image")
        kwargs["trusted_keys"] = tk
    if "trusted_platforms" in data:
        tp = data["trusted_platforms"]
        if not isinstance(tp, list) or not all(isinstance(p, str) for p in tp):
            raise PolicyError(
                f"{where}: 'trusted_platforms' must be a list of platform names such as "
                '["openstack"]'
            )
        for p in tp:
            if not _PLATFORM.fullmatch(p.lower()):  # fuzz finding P1: match() let "name\n" through
                raise PolicyError(
                    f"{where}: trusted platform {json.dumps(p)[:40]} is not a platform name "
                    "(letters, digits, '.', '_', '-'), e.g. openstack"
                )
        kwargs["trusted_platforms"] = tuple(dict.fromkeys(p.lower() for p in tp))
    if "clock_skew" in data:
        cs = data["clock_skew"]
        if isinstance(cs, bool) or not isinstance(cs, int) or not 0 <= cs <= MAX_CLOCK_SKEW:
            raise PolicyError(
                f"{where}: 'clock_skew' must be a whole number of seconds from 0 to "
                f"{MAX_CLOCK_SKEW}"
            )
        kwargs["clock_skew"] = cs
    if "fail_closed" in data:
        kwargs["fail_closed"] = _bool(where, "fail_closed", data["fail_closed"])
    if "credit_datasource" in data:
        kwargs["credit_datasource"] = _bool(where, "credit_datasource", data["credit_datasource"])
    return Policy(**kwargs)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file; an absent file means the defaults."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_POLICY_SIZE + 1)
    except FileNotFoundError:
        return Policy()
    except OSError as e:
        raise PolicyError(
            f"cannot read seed policy {p}: {e.strerror}; fix its permissions or remove it"
        ) from None
    if len(raw) > MAX_POLICY_SIZE:
        raise PolicyError(f"seed policy {p} is larger than {MAX_POLICY_SIZE} bytes; it is not one")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PolicyError(f"seed policy {p} is not valid JSON; fix it or remove it") from None
    return policy_from_mapping(data, str(p))
