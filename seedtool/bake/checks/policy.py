"""Checks: the image's seed policy is one the guest accepts, and the trusted keys it
names are there. An invalid policy is a misbuilt image: the guest credits nothing and,
as docs/guest.md says, reports the error."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ...guest.policy import DEFAULT_TRUSTED_KEYS, MAX_POLICY_SIZE, Policy, PolicyError, load_policy
from ...image.fs import TargetFS
from ...shared.errors import SigningKeyError
from ...shared.pubkeys import parse_public_keys
from ..findings import Finding
from ..layout import POLICY
from ..tree import is_dir, is_file, real

if TYPE_CHECKING:
    from . import Context


def read_policy(fs: TargetFS) -> tuple[Policy | None, str | None]:
    """(the image's policy, None), (None, None) if there is none, or (None, the reason it
    is invalid) as the guest itself would give it.

    The guest loads the policy with `load_policy(path)`; so does this, on a copy of the
    image's file at the same path under a temporary directory, so the reason (size, JSON,
    each setting) comes from the guest's own validator, never from a second one here."""
    where = real(fs, POLICY)
    if where is None:
        return None, f"seed policy {POLICY} goes through a symlink loop; fix it or remove it"
    st = fs.stat(where)
    if st is None:
        return None, None
    with tempfile.TemporaryDirectory(prefix="seedtool-policy-") as tmp:
        local = Path(tmp) / POLICY.lstrip("/")
        local.parent.mkdir(parents=True)
        if stat.S_ISDIR(st.mode):
            local.mkdir()
        elif stat.S_ISREG(st.mode):
            data = b""
            for _, piece in fs.read_chunks([where], MAX_POLICY_SIZE + 1):
                if piece is None:
                    return None, (f"cannot read seed policy {POLICY}: permission denied; "
                                  "run the check as root")
                data += piece
                if len(data) > MAX_POLICY_SIZE:
                    break
            local.write_bytes(data)
        else:
            return None, f"seed policy {POLICY} is not a regular file; replace it with one"
        try:
            return load_policy(local), None
        except PolicyError as e:
            return None, str(e).replace(tmp, "")


def policy_valid(ctx: Context) -> list[Finding]:
    _pol, invalid = ctx.image_policy
    if invalid is None:
        return []
    return [Finding(POLICY, f"the guest refuses this policy ({invalid}), so it credits no "
                    "seed at all",
                    "rerun seedtool bake with a valid --policy FILE, or fix the file")]


def trusted_keys(ctx: Context) -> list[Finding]:
    """The keys the policy names (or the default place) hold a seedtool public key."""
    fs = ctx.fs
    pol, invalid = ctx.image_policy
    trusted = pol.trusted_keys if pol is not None and invalid is None else DEFAULT_TRUSTED_KEYS
    findings = []
    nkeys = 0
    key_files = ([f"{trusted}/{n}" for n in fs.listdir(trusted) if n.endswith(".pub")]
                 if is_dir(fs, trusted) else [trusted] if is_file(fs, trusted) else [])
    for path in key_files:
        try:
            nkeys += len(parse_public_keys(fs.read(path).decode("utf-8"), path))
        except (SigningKeyError, UnicodeDecodeError):
            findings.append(Finding(path, "is not a seedtool public key file",
                                    "replace it with the .pub from seedtool keygen"))
    if nkeys == 0:
        findings.append(Finding(trusted, "no trusted public keys are installed, so no seed "
                                "can ever be credited",
                                "run seedtool bake --trusted-key KEY.pub"))
    return findings
