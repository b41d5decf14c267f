"""Bake a base image: install seedtool's guest side and remove what no two VMs may share.

`bake(fs, trusted_keys, policy)` works on any `TargetFS` (a directory, `/` in a Packer
build, a disk image): it installs the guest exactly as `seedtool.bake.install` does
(staged in a temporary directory, then copied into the target, so disk images get the
same files), and removes SSH host keys, machine ids, random seeds, seedtool's own
per-boot state and cloud-init's instance state and logs. Every change is planned
first and returned as a `Change`; with `dry_run` nothing is changed. Running it again
changes nothing.

`check(fs)` lints the same target and returns one `Finding` (path, problem, fix) per
thing that is wrong: shared state left behind, the guest not installed or not able to
run before cloud-init's `ssh` module, no trusted keys, the early unit not enabled,
no python3, a private key or a seedtool envelope anywhere in the image. It runs the
checks of `seedtool.bake.checks.CHECKS`, one function each.

The modules: `layout` (the paths), `findings` (Change, Finding, errors), `tree`
(helpers over TargetFS), `scrub` (the shared-state plan bake applies and the check
reports), `stage` (the guest install as steps), `checks/` (the lint rules),
`imagescan` (the whole-image secret scan), `install` (the guest's files).

Why each item is shared state, and where that is written down:
* `/etc/machine-id` and `/var/lib/systemd/random-seed`: systemd's "Building Images
  Safely" (systemd's docs/BUILDING_IMAGES.md): reset the first, remove the second, or
  "every instance will seed its random pool with the same random data"; machine-id(5) "First
  Boot Semantics": a missing file or one holding `uninitialized` means first boot; an
  empty file is filled at boot too, but is *not* a first boot.
* `/var/lib/systemd/credential.secret`: the host key of systemd-creds(1); a copy in
  every VM lets each decrypt the others' host-bound credentials.
* other random-seed files: the seed files of Debian's `urandom` init script
  (`/var/lib/urandom/random-seed`), of other inits and distributions, and
  systemd-boot's `loader/random-seed` on the ESP (bootctl(1) `random-seed`).
* cloud-init's `/var/lib/cloud/*` except `seed/`, and its logs: what `cloud-init clean
  --logs` removes (cloudinit/cmd/clean.py); a copied instance directory holds an old
  user-data (and maybe seed) and its semaphores make per-instance modules skip.

Never reads a file's contents into a message: findings and changes name paths and
kinds only. Never prints (the CLI does).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..image.fs import TargetFS
from .checks import CHECKS, run_checks
from .checks.policy import read_policy
from .checks.secrets import SCAN_BOUNDS, scan_findings
from .findings import ERROR, WARNING, BakeError, BakeResult, Change, CloudConfigError, Finding
from .imagescan import ScanBounds
from .layout import (
    CC_MODULE,
    CLOUD_CFG,
    CLOUD_CFG_D,
    CREDENTIAL_SECRET,
    DBUS_MACHINE_ID,
    GUEST_CODE_DIR,
    GUEST_CORE,
    LAUNCHER,
    MACHINE_ID,
    MACHINE_ID_FORMS,
    MASK,
    POLICY,
    RANDOM_SEED_SERVICE,
    RANDOM_SEEDS,
    SSH_DIR,
    UNIT,
    WANTS_LINK,
)
from .scrub import scrub_steps
from .stage import install_steps
from .tree import uses_systemd

__all__ = [
    "CC_MODULE", "CHECKS", "CLOUD_CFG", "CLOUD_CFG_D", "CREDENTIAL_SECRET", "DBUS_MACHINE_ID",
    "ERROR", "GUEST_CODE_DIR", "GUEST_CORE", "LAUNCHER", "MACHINE_ID", "MACHINE_ID_FORMS",
    "MASK", "POLICY", "RANDOM_SEEDS", "RANDOM_SEED_SERVICE", "SCAN_BOUNDS", "SSH_DIR", "UNIT",
    "WANTS_LINK", "WARNING", "BakeError", "BakeResult", "Change", "CloudConfigError",
    "Finding", "ScanBounds", "bake", "check", "is_live_root", "read_policy", "scan_findings",
    "stop_random_seed_service", "summary", "systemd_running", "uses_systemd",
]


def is_live_root(root: str | os.PathLike[str]) -> bool:
    """True if `root` is the running system's own root directory."""
    try:
        return os.path.samefile(root, "/")
    except OSError:
        return False


def systemd_running() -> bool:
    """sd_booted(3): the running system was booted by systemd."""
    return os.path.isdir("/run/systemd/system")


def stop_random_seed_service() -> None:
    """Stop systemd-random-seed.service on the running system.

    Its stop action saves a fresh seed to /var/lib/systemd/random-seed, and so would
    the shutdown that ends the image build: stopping it now, before the file is
    removed, means the image is captured without one (BUILDING_IMAGES.md).
    """
    try:
        out = subprocess.run(
            ["systemctl", "stop", RANDOM_SEED_SERVICE],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BakeError(
            f"cannot run 'systemctl stop {RANDOM_SEED_SERVICE}' ({type(e).__name__}); "
            "stop it by hand before baking, or shutdown writes a new seed into the image"
        ) from None
    if out.returncode != 0:
        raise BakeError(
            f"'systemctl stop {RANDOM_SEED_SERVICE}' exited with {out.returncode}; stop it "
            "by hand before baking, or shutdown writes a new seed into the image"
        )



def bake(
    fs: TargetFS,
    trusted_keys: Sequence[str | os.PathLike[str]],
    policy: Mapping[str, Any] | None = None,
    *,
    dry_run: bool = False,
    machine_id: str = "uninitialized",
    live: bool = False,
    stop_service: Callable[[], None] = stop_random_seed_service,
    bounds: ScanBounds | None = None,
    seed_servers: Mapping[str, bytes] | None = None,
) -> BakeResult:
    """Install the guest into `fs` and remove its shared state; the changes made.

    `live` means `fs` is the running system's own root: systemd-random-seed.service
    is stopped first (when systemd runs), or shutdown would save a new seed. With
    `dry_run` the changes are planned and returned, nothing is touched. Secrets bake
    does not own (keys elsewhere, dropbear's keys, envelopes) are never touched: the
    whole-image scan reports them in `left` (not on a live root).
    Without `policy`, the image's valid policy is kept and an invalid one refused.
    `seed_servers` (`install.seed_server_files`) also installs the seed-server
    configuration; without it the image's own is kept.
    """
    if machine_id not in MACHINE_ID_FORMS:
        raise BakeError(
            f"machine id form {machine_id!r} is not one of {', '.join(MACHINE_ID_FORMS)}"
        )
    result = BakeResult(fs.description, dry_run)
    if live and systemd_running():
        result.changes.append(Change(RANDOM_SEED_SERVICE, "stop",
                                     "so shutdown cannot save a new random seed into the image"))
        if not dry_run:
            stop_service()
    if policy is None:
        # no --policy: keep the image's own, and never replace an invalid one with the
        # defaults, which could quietly turn its fail_closed off
        existing, invalid = read_policy(fs)
        if invalid is not None:
            raise BakeError(f"the image's {POLICY} is invalid ({invalid}); give the policy "
                            "it should have with --policy FILE, or fix the file")
        if existing is not None:
            policy = existing.to_json()
    # plan everything before changing anything: bad keys or policy leave the target as it was
    steps = install_steps(fs, trusted_keys, policy, seed_servers)
    form = machine_id if uses_systemd(fs) else "empty"
    steps += scrub_steps(fs, form)
    for step in steps:
        result.changes.append(step.change)
        if not dry_run:
            step.apply()
    if live:
        # the running system's whole tree (build caches, mounts) is not the image's;
        # `bake --check --root /` runs the scan when asked
        result.scanned = False
    else:
        gone = frozenset(c.path for c in result.changes if c.action == "remove")
        result.left = [f for f in scan_findings(fs, bounds, gone) if f.severity == ERROR]
    return result



def check(fs: TargetFS, bounds: ScanBounds | None = None) -> list[Finding]:
    """Lint a baked target; an empty list means clean. `bounds` limits the secret scan."""
    return run_checks(fs, bounds or SCAN_BOUNDS, CHECKS)


def summary(findings: Sequence[Finding]) -> tuple[int, int]:
    """(errors, warnings)."""
    errors = sum(1 for f in findings if f.severity == ERROR)
    return errors, len(findings) - errors

