"""The checks `seedtool bake --check` runs: `CHECKS`, in the order their findings print.

A check is a function from the `Context` (the target, the scan bounds, what earlier
checks found) to a list of `Finding`s; a new lint rule is one function in the module of
its group and one line in `CHECKS`. The groups:

* `shared_state`: what bake removes (the scrub plan of `seedtool.bake.scrub`);
* `guest`: the guest installed as `install_guest` lays it out, and what it runs on;
* `cloudinit`: cloud-init's effective module list runs seedtool after seed_random and
  before ssh;
* `keygen`: every systemd unit that makes SSH host keys runs after the unit where
  seedtool credits;
* `policy`: the image's seed policy is one the guest accepts, and names trusted keys;
* `secrets`: the whole-image scan for private keys and envelopes (last, as it skips
  the paths earlier checks named).

Checks only read the target, and never put a file's contents in a finding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from ...guest.policy import Policy
from ...image.fs import TargetFS
from ..findings import Finding
from ..imagescan import ScanBounds
from . import cloudinit, guest, keygen, policy, secrets, seedserver, shared_state


@dataclass
class Context:
    """What a check is given."""

    fs: TargetFS
    bounds: ScanBounds
    #: the findings of the checks before this one
    findings: list[Finding] = field(default_factory=list)

    @cached_property
    def image_policy(self) -> tuple[Policy | None, str | None]:
        """`policy.read_policy(fs)`, read once for the checks that need it."""
        return policy.read_policy(self.fs)


Check = Callable[[Context], list[Finding]]

#: every check, in the order of its findings in the output
CHECKS: tuple[Check, ...] = (
    shared_state.shared_state,
    guest.guest_installed,
    guest.early_unit_enabled,
    guest.early_unit_not_overridden,
    guest.guest_module_current,
    cloudinit.module_list,
    keygen.keygen_after_credit,
    policy.policy_valid,
    policy.trusted_keys,
    seedserver.seed_servers_valid,
    guest.python_present,
    secrets.no_secrets,
)


def run_checks(fs: TargetFS, bounds: ScanBounds, checks: tuple[Check, ...] = CHECKS
               ) -> list[Finding]:
    """Every check's findings, in order; an empty list means clean."""
    ctx = Context(fs, bounds)
    for check in checks:
        ctx.findings += check(ctx)
    return ctx.findings
