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
no python3, a private key or a seedtool envelope anywhere in the image (seedtool.bake.imagescan).

Why each item is shared state, and where that is written down:
* `/etc/machine-id` and `/var/lib/systemd/random-seed`: systemd's "Building Images
  Safely" (docs/BUILDING_IMAGES.md): reset the first, remove the second, or "every
  instance will seed its random pool with the same random data"; machine-id(5) "First
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
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..guest.policy import DEFAULT_TRUSTED_KEYS, MAX_POLICY_SIZE, Policy, PolicyError, load_policy
from ..image.fs import FileStat, SymlinkLoop, TargetFS, resolve
from ..shared.errors import DeliveryError, SigningKeyError
from ..shared.pubkeys import parse_public_keys
from . import install
from .imagescan import Hit, ScanBounds, ScanReport, scan
from .install import _canonical as canonical_module_name
from .install import install_guest

# --- what is shared state ---------------------------------------------------------------

SSH_DIR = "/etc/ssh"
SSH_HOST_PREFIX = "ssh_host_"
MACHINE_ID = "/etc/machine-id"
DBUS_MACHINE_ID = "/var/lib/dbus/machine-id"
MACHINE_ID_FORMS = ("uninitialized", "empty")
#: seed files some init system or boot loader loads at boot, then credits or mixes
RANDOM_SEEDS = (
    "/var/lib/systemd/random-seed",
    "/var/lib/random-seed",
    "/var/lib/urandom/random-seed",
    "/var/lib/misc/random-seed",
    "/etc/random-seed",
    "/boot/efi/loader/random-seed",
    "/efi/loader/random-seed",
    "/boot/loader/random-seed",
)
CREDENTIAL_SECRET = "/var/lib/systemd/credential.secret"
SEEDTOOL_STATE = "/" + install.STATE_DIR
CLOUD_STATE = "/var/lib/cloud"
CLOUD_KEEP = ("seed",)  # the NoCloud seed directory a builder may ship on purpose
LOG_DIR = "/var/log"
RANDOM_SEED_SERVICE = "systemd-random-seed.service"

# --- what "installed" means: exactly what install_guest writes ------------------------------

CC_MODULE = "/" + install.CC_MODULE
LAUNCHER = "/" + install.LAUNCHER
UNIT = f"/{install.UNIT_DIR}/{install.UNIT_NAME}"
WANTS_LINK = f"/{install.WANTS_DIR}/{install.UNIT_NAME}"
MASK = f"/etc/systemd/system/{install.UNIT_NAME}"
GUEST_CODE_DIR = f"/{install.PRIVATE_DIR}/seedtool"
GUEST_CORE = f"{GUEST_CODE_DIR}/guest/core.py"
KEYS_DIR = "/" + install.KEYS_DIR
POLICY = "/" + install.POLICY
CLOUD_CFG = "/" + install.CLOUD_CFG
CLOUD_CFG_D = "/" + install.CLOUD_CFG_D
PYTHON = "/usr/bin/python3"

# --- secrets bake does not own: found by the whole-image scan (imagescan) ---------------------

#: dropbear's host keys (Debian's dropbear: /etc/dropbear/dropbear_TYPE_host_key) and
#: dropbear-initramfs's, which Debian moved from /etc/dropbear-initramfs (bullseye) to
#: /etc/dropbear/initramfs (bookworm, dropbear 2022.82-1); both are dropbear's binary format
DROPBEAR_DIR = "/etc/dropbear"
DROPBEAR_INITRAMFS_DIRS = ("/etc/dropbear/initramfs", "/etc/dropbear-initramfs")
CLOUD_SEED = "/var/lib/cloud/seed"
#: bound on the scan; `check(bounds=...)` and the CLI's --scan-max-* options change it
SCAN_BOUNDS = ScanBounds()


ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Change:
    """One change bake makes (or would make, in a dry run)."""

    path: str
    #: write, remove, rmdir, mkdir, symlink or stop
    action: str
    #: what the path is, in a few words (never its contents)
    what: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "action": self.action, "what": self.what}


@dataclass(frozen=True)
class Finding:
    """One problem `check` found: where, what is wrong, and what to do."""

    path: str
    problem: str
    fix: str
    severity: str = ERROR

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "problem": self.problem, "fix": self.fix,
                "severity": self.severity}


@dataclass
class BakeResult:
    target: str
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    #: secrets the scan found that bake does not own, so left in place (and reported)
    left: list[Finding] = field(default_factory=list)
    #: False on the running system, where bake does not run the whole-image scan
    scanned: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "dry_run": self.dry_run,
                "changes": [c.to_json() for c in self.changes],
                "left": [f.to_json() for f in self.left], "scanned": self.scanned}


class BakeError(DeliveryError):
    """The target cannot be baked as asked."""


class CloudConfigError(BakeError):
    """A cloud-init config file in the target is not valid YAML."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is not valid YAML, so cloud-init cannot read it; fix it")
        self.path = path


# --- small helpers over TargetFS ---------------------------------------------------------------


def _real(fs: TargetFS, path: str, follow_final: bool = True) -> str | None:
    """`path` with symlinks resolved inside the target (`fs.resolve`); None for a loop."""
    try:
        return resolve(fs, path, follow_final)
    except SymlinkLoop:
        return None


def _is_dir(fs: TargetFS, path: str) -> bool:
    st = fs.stat(path)
    return st is not None and stat.S_ISDIR(st.mode)


def _is_file(fs: TargetFS, path: str) -> bool:
    st = fs.stat(path)
    return st is not None and stat.S_ISREG(st.mode)


def _walk(fs: TargetFS, top: str) -> Iterator[tuple[str, FileStat]]:
    """(path, stat) of everything below `top`, children before their directory.

    Symlinks are listed, never followed, so a walk stays inside the tree it was given.
    """
    for name, st in fs.scandir(top):
        path = f"{top.rstrip('/')}/{name}"
        if stat.S_ISDIR(st.mode):
            yield from _walk(fs, path)
        yield path, st


def uses_systemd(fs: TargetFS) -> bool:
    """True if the target boots systemd as its init (/sbin/init is systemd)."""
    init = fs.stat("/sbin/init")
    if init is not None and stat.S_ISLNK(init.mode):
        return os.path.basename(fs.readlink("/sbin/init")) == "systemd"
    if init is not None:
        return False  # a real /sbin/init binary: sysvinit, busybox, runit ...
    return _is_file(fs, "/usr/lib/systemd/systemd") or _is_file(fs, "/lib/systemd/systemd")


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


# --- the scrub plan (shared by bake and check) -------------------------------------------------


@dataclass(frozen=True)
class _Step:
    change: Change
    finding: Finding | None
    apply: Callable[[], None]


def _machine_id_text(form: str) -> bytes:
    return b"uninitialized\n" if form == "uninitialized" else b""


def _scrub_steps(fs: TargetFS, machine_id: str | None) -> list[_Step]:
    """Every change that removes shared state; `machine_id` None accepts either reset form."""
    steps: list[_Step] = []

    def remove(path: str, what: str, problem: str, fix: str) -> None:
        steps.append(_Step(Change(path, "remove", what), Finding(path, problem, fix),
                           partial(fs.remove, path)))

    # SSH host keys (and their certificates), also behind a symlinked /etc/ssh: the
    # directory as the booted image resolves it, never outside the image
    ssh_dir = _real(fs, SSH_DIR)
    if ssh_dir is not None and _is_dir(fs, ssh_dir):
        via = "" if ssh_dir == SSH_DIR else f" (in {SSH_DIR} -> {ssh_dir})"
        for name, est in fs.scandir(ssh_dir):
            path = f"{ssh_dir.rstrip('/')}/{name}"
            if name.startswith(SSH_HOST_PREFIX) and not stat.S_ISDIR(est.mode):
                remove(path, "SSH host key" + via,
                       "SSH host key every VM made from this image would share",
                       "remove it (seedtool bake does); each VM makes its own at first boot "
                       "(cloud-init's ssh module or sshd-keygen)")

    # /etc/machine-id: reset, never removed, so a read-only /etc still gets an id
    st = fs.stat(MACHINE_ID)
    if st is not None and not stat.S_ISDIR(st.mode):
        current = fs.read(MACHINE_ID) if stat.S_ISREG(st.mode) else None
        reset = current is not None and current.strip() in (b"uninitialized", b"")
        form = machine_id or "uninitialized"
        want = _machine_id_text(form)
        if (machine_id is None and not reset) or (machine_id is not None and current != want):
            mode = stat.S_IMODE(st.mode) if stat.S_ISREG(st.mode) else 0o444
            uid, gid = st.uid, st.gid
            steps.append(_Step(
                Change(MACHINE_ID, "write", f"machine id reset ({form})"),
                None if reset else Finding(
                    MACHINE_ID, "holds a machine id every VM made from this image would share",
                    "write 'uninitialized' into it (seedtool bake does); systemd makes a new "
                    "id at first boot"),
                partial(fs.write, MACHINE_ID, want, mode, uid, gid)))

    # /var/lib/dbus/machine-id: a copy, or a symlink to /etc/machine-id (kept as one)
    st = fs.stat(DBUS_MACHINE_ID)
    if st is not None and stat.S_ISLNK(st.mode):
        if fs.readlink(DBUS_MACHINE_ID) != MACHINE_ID:
            steps.append(_Step(
                Change(DBUS_MACHINE_ID, "symlink", f"D-Bus machine id (now -> {MACHINE_ID})"),
                Finding(DBUS_MACHINE_ID, "is a symlink to something other than /etc/machine-id",
                        f"make it a symlink to {MACHINE_ID} (seedtool bake does)"),
                partial(fs.symlink, MACHINE_ID, DBUS_MACHINE_ID)))
    elif st is not None and not stat.S_ISDIR(st.mode):
        remove(DBUS_MACHINE_ID, "D-Bus machine id",
               "a copy of the machine id every VM made from this image would share",
               "remove it (seedtool bake does); dbus or systemd recreates it at boot")

    # random seeds and systemd's credential key
    for known in RANDOM_SEEDS:
        path = _real(fs, known, follow_final=False) or known
        st = fs.stat(path)
        if st is not None and not stat.S_ISDIR(st.mode):
            remove(path, "random seed",
                   "random seed every VM made from this image would load at boot",
                   "remove it (seedtool bake does; on a running system stop "
                   f"{RANDOM_SEED_SERVICE} first, or shutdown writes a new one)")
    secret = _real(fs, CREDENTIAL_SECRET, follow_final=False) or CREDENTIAL_SECRET
    st = fs.stat(secret)
    if st is not None and not stat.S_ISDIR(st.mode):
        remove(secret, "systemd credential key",
               "systemd-creds host key every VM made from this image would share",
               "remove it (seedtool bake does); systemd makes a new one when first needed")

    # seedtool's own per-boot state: a seed, the ledger, status files
    state = _real(fs, SEEDTOOL_STATE)
    if state is not None and _is_dir(fs, state):
        for path, st in _walk(fs, state):
            if not stat.S_ISDIR(st.mode):
                remove(path, "seedtool state",
                       "seedtool seed, ledger or status left from a boot or seeding of this "
                       "image", "remove it (seedtool bake does)")

    # cloud-init's instance state (all but seed/) and logs, as `cloud-init clean --logs`
    cloud = _real(fs, CLOUD_STATE)
    if cloud is not None and _is_dir(fs, cloud):
        for name in fs.listdir(cloud):
            if name in CLOUD_KEEP:
                continue
            top = f"{cloud.rstrip('/')}/{name}"
            st = fs.stat(top)
            if st is None:
                continue
            entries = list(_walk(fs, top)) if stat.S_ISDIR(st.mode) else []
            entries.append((top, st))
            for path, est in entries:
                if not stat.S_ISDIR(est.mode):
                    remove(path, "cloud-init state",
                           "cloud-init instance state from a boot of this image (old "
                           "user-data, semaphores that make per-instance modules skip)",
                           "run 'cloud-init clean --logs' before capturing the image, or "
                           "seedtool bake")
                else:
                    steps.append(_Step(Change(path, "rmdir", "cloud-init state directory"),
                                       None, partial(fs.rmdir, path)))
    logs = _real(fs, LOG_DIR)
    if logs is not None and _is_dir(fs, logs):
        for name, lst in fs.scandir(logs):
            path = f"{logs.rstrip('/')}/{name}"
            if name.startswith("cloud-init") and ".log" in name and not stat.S_ISDIR(lst.mode):
                remove(path, "cloud-init log",
                       "cloud-init log from a boot of this image",
                       "run 'cloud-init clean --logs' before capturing the image, or "
                       "seedtool bake")
    return steps


# --- the guest install, staged then copied ---------------------------------------------------


def _stage_bytecode(fs: TargetFS, staging: Path) -> list[str]:
    """Byte code for the staged guest code when this Python makes the image's (same magic
    number as the image's own standard library); the paths made, or none.

    Without it the guest compiles its sources on its first boot, seconds under emulation
    before the credit. Only this Python is used: the staged copy has no interpreter to
    run, and running the image's needs its whole root.
    """
    tag = sys.implementation.cache_tag
    if not tag or fs.stat(PYTHON) is None:
        return []
    marker = None
    # /usr/lib/python3.N, where host_compile looks for the image's standard library
    for name in fs.listdir("/usr/lib") if _is_dir(fs, "/usr/lib") else []:
        pyc = f"/usr/lib/{name}/__pycache__/os.{tag}.pyc"
        if re.fullmatch(r"python3\.\d+", name) and _is_file(fs, pyc):
            marker = pyc
            break
    if marker is None:
        return []
    try:
        head = fs.read(marker)[:16]
    except OSError:
        return []
    # host_compile compares this magic number with ours and compiles only on a match
    local = staging / marker.lstrip("/")
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(head)
    try:
        if not install.host_compile(staging, install.GUEST_SOURCES):
            return []
    except OSError:
        return []
    return install.bytecode_files(staging, install.GUEST_SOURCES)


def _stage(fs: TargetFS, staging: Path) -> None:
    """Copy what install_guest reads from the target (its cloud config) into `staging`."""
    if not _is_dir(fs, "/etc/cloud"):
        return
    (staging / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    if fs.stat(CLOUD_CFG) is not None:
        (staging / install.CLOUD_CFG).write_bytes(fs.read(CLOUD_CFG))
    if _is_dir(fs, CLOUD_CFG_D):
        for name in fs.listdir(CLOUD_CFG_D):
            if name.endswith(".cfg") and fs.stat(f"{CLOUD_CFG_D}/{name}") is not None:
                data = fs.read(f"{CLOUD_CFG_D}/{name}")
                (staging / install.CLOUD_CFG_D / name).write_bytes(data)


def _install_steps(fs: TargetFS, trusted_keys: Sequence[str | os.PathLike[str]],
                   policy: Mapping[str, Any] | None) -> list[_Step]:
    steps: list[_Step] = []
    with tempfile.TemporaryDirectory(prefix="seedtool-bake-") as tmp:
        staging = Path(tmp)
        _stage(fs, staging)
        written = install_guest(staging, trusted_keys, policy, bytecode=False)
        written += _stage_bytecode(fs, staging)
        what = {
            CC_MODULE: "cloud-init module",
            LAUNCHER: "early-boot launcher",
            UNIT: "early-boot unit",
            WANTS_LINK: "early-boot unit enabled",
            POLICY: "seed policy",
            f"{CLOUD_CFG_D}/{install.DROPIN_NAME}": "cloud-init module list with seedtool",
        }
        made_dirs: set[str] = set()

        def parents(path: str) -> None:
            missing: list[str] = []
            for up in Path(path).parents:
                if str(up) in made_dirs or _is_dir(fs, str(up)):
                    break
                missing.append(str(up))
            for parent in reversed(missing):  # outermost first, as mkdir -p makes them
                made_dirs.add(parent)
                steps.append(_Step(Change(parent, "mkdir", "directory"), None,
                                   partial(fs.mkdir, parent, 0o755)))

        for path in written:
            local = staging / path.lstrip("/")
            label = what.get(path) or (
                "trusted public key" if path.startswith(KEYS_DIR + "/") else "guest code")
            if local.is_symlink():
                target = os.readlink(local)
                st = fs.stat(path)
                if st is not None and stat.S_ISLNK(st.mode) and fs.readlink(path) == target:
                    continue
                parents(path)
                steps.append(_Step(Change(path, "symlink", f"{label} (-> {target})"), None,
                                   partial(fs.symlink, target, path)))
                continue
            data = local.read_bytes()
            mode = stat.S_IMODE(local.stat().st_mode)
            st = fs.stat(path)
            if (st is not None and stat.S_ISREG(st.mode) and stat.S_IMODE(st.mode) == mode
                    and st.size == len(data) and fs.read(path) == data):
                continue
            parents(path)
            steps.append(_Step(Change(path, "write", label), None,
                               partial(fs.write, path, data, mode, 0, 0)))
        # what install_guest would have deleted: older guest code, keys no longer given
        keep = set(written)
        for top, pattern in ((GUEST_CODE_DIR, None), (KEYS_DIR, ".pub")):
            if not _is_dir(fs, top):
                continue
            entries = (
                (p, st.mode) for p, st in _walk(fs, top)) if pattern is None else (
                (f"{top}/{n}", 0) for n in fs.listdir(top) if n.endswith(pattern))
            for path, mode in entries:
                if path in keep or stat.S_ISDIR(mode):
                    continue
                kind = "old guest code" if pattern is None else "trusted key no longer given"
                steps.append(_Step(Change(path, "remove", kind), None,
                                   partial(fs.remove, path)))
        state = "/" + install.STATE_DIR
        if not _is_dir(fs, state):
            parents(state + "/x")
    return steps


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
) -> BakeResult:
    """Install the guest into `fs` and remove its shared state; the changes made.

    `live` means `fs` is the running system's own root: systemd-random-seed.service
    is stopped first (when systemd runs), or shutdown would save a new seed. With
    `dry_run` the changes are planned and returned, nothing is touched. Secrets bake
    does not own (keys elsewhere, dropbear's keys, envelopes) are never touched: the
    whole-image scan reports them in `left` (not on a live root).
    Without `policy`, the image's valid policy is kept and an invalid one refused.
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
    steps = _install_steps(fs, trusted_keys, policy)
    form = machine_id if uses_systemd(fs) else "empty"
    steps += _scrub_steps(fs, form)
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


# --- check -------------------------------------------------------------------------------------


def _module_name(entry: Any) -> str:
    if isinstance(entry, str):
        return canonical_module_name(entry)
    if isinstance(entry, list) and entry:
        return canonical_module_name(str(entry[0]))
    if isinstance(entry, dict) and "name" in entry:
        return canonical_module_name(str(entry["name"]))
    return ""


def effective_modules(fs: TargetFS) -> tuple[str, list[str]] | None:
    """(file that sets it, module names) of cloud-init's effective `cloud_init_modules`.

    cloud-init reads /etc/cloud/cloud.cfg, then cloud.cfg.d/*.cfg in name order, and a
    later file's list replaces an earlier one (FACTS "cloud-init"). None if no file
    sets it. Raises BakeError naming a file that is not valid YAML.
    """
    import yaml

    files = [CLOUD_CFG] if fs.stat(CLOUD_CFG) is not None else []
    if _is_dir(fs, CLOUD_CFG_D):
        files += [f"{CLOUD_CFG_D}/{n}" for n in fs.listdir(CLOUD_CFG_D) if n.endswith(".cfg")]
    found: tuple[str, list[str]] | None = None
    for path in files:
        st = fs.stat(path)
        if st is None or stat.S_ISDIR(st.mode):
            continue
        try:
            data = yaml.safe_load(fs.read(path))
        except yaml.YAMLError:
            raise CloudConfigError(path) from None
        if isinstance(data, dict) and "cloud_init_modules" in data:
            mods = data["cloud_init_modules"]
            names = [_module_name(m) for m in mods] if isinstance(mods, list) else []
            found = (path, names)
    return found


def read_policy(fs: TargetFS) -> tuple[Policy | None, str | None]:
    """(the image's policy, None), (None, None) if there is none, or (None, the reason it
    is invalid) as the guest itself would give it.

    The guest loads the policy with `load_policy(path)`; so does this, on a copy of the
    image's file at the same path under a temporary directory, so the reason (size, JSON,
    each setting) comes from the guest's own validator, never from a second one here."""
    real = _real(fs, POLICY)
    if real is None:
        return None, f"seed policy {POLICY} goes through a symlink loop; fix it or remove it"
    st = fs.stat(real)
    if st is None:
        return None, None
    with tempfile.TemporaryDirectory(prefix="seedtool-policy-") as tmp:
        local = Path(tmp) / POLICY.lstrip("/")
        local.parent.mkdir(parents=True)
        if stat.S_ISDIR(st.mode):
            local.mkdir()
        elif stat.S_ISREG(st.mode):
            data = b""
            for _, piece in fs.read_chunks([real], MAX_POLICY_SIZE + 1):
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


_ELSEWHERE = ("remove it from the image and rotate it if it was ever secret; a VM needs "
              "only the public key (--trusted-key) and makes its own keys at first boot")
_KIND = {
    "seedtool-key": "an Ed25519 private key (the format of seedtool's signing key) in the "
                    "image: anyone with the image could sign seeds",
    "encrypted": "an encrypted PEM private key in the image, shared by every VM (if it is "
                 "seedtool's signing key, anyone could try to crack it)",
    "openssh": "an OpenSSH private key in the image (a host key under another name or a "
               "user's key), shared by every VM made from it",
    "pem": "a PEM private key in the image, shared by every VM made from it",
    "putty": "a PuTTY private key in the image, shared by every VM made from it",
    "dropbear": "a dropbear private key in the image, shared by every VM made from it",
    "envelope": "a seedtool envelope in the image: every VM made from it would find the "
                "same seed",
}


def _hit_finding(hit: Hit) -> Finding:
    problem = _KIND[hit.kind] + (" (inside gzip data)" if hit.inside else "")
    fix = _ELSEWHERE
    parent = hit.path.rpartition("/")[0]
    if hit.kind == "envelope":
        fix = ("remove it; seeds go to each VM when it is launched (seedtool userdata, or "
               "seedtool image seed on each VM's own disk), never into a base image")
    if hit.kind == "dropbear" and parent == DROPBEAR_DIR:
        problem = "dropbear SSH host key every VM made from this image would share"
        fix = ("remove it and let each VM make its own: add -R to DROPBEAR_EXTRA_ARGS in "
               "/etc/default/dropbear (dropbear then creates missing host keys); seedtool bake "
               "leaves it, as Debian's dropbear.service starts without -R and would fail")
    elif hit.kind == "dropbear" and parent in DROPBEAR_INITRAMFS_DIRS:
        problem = ("dropbear-initramfs host key every VM made from this image would share "
                   "(the initramfs images in /boot hold a copy too)")
        fix = ("remove it, and on each VM's first boot make new keys (dropbearkey -t ed25519 "
               "-f THIS-PATH) and rebuild the initramfs (update-initramfs -u); seedtool bake "
               "leaves it, as the initramfs already built would keep the old key")
    elif hit.path.startswith(CLOUD_SEED + "/"):
        problem += (f"; {CLOUD_SEED} is kept on purpose by bake and cloud-init clean, so "
                    "every instance reads it")
        fix = ("take it out of this seed directory (a NoCloud seed in a base image is the "
               "same for every VM) and give each VM its own at launch")
    elif hit.path.startswith("/etc/cloud/"):
        problem += "; system cloud config is the same in every VM"
        fix = ("remove it from the system cloud config (e.g. a random_seed.data there) and "
               "give each VM its seed in its own user-data (seedtool userdata)")
    return Finding(hit.path, problem, fix)


def _dropbear_named(fs: TargetFS) -> list[str]:
    """Host key files by dropbear's naming (dropbear_TYPE_host_key), behind symlinks too."""
    found = []
    for known in (DROPBEAR_DIR, *DROPBEAR_INITRAMFS_DIRS):
        d = _real(fs, known)
        if d is None or not _is_dir(fs, d):
            continue
        for name, st in fs.scandir(d):
            if (name.startswith("dropbear_") and name.endswith("_host_key")
                    and stat.S_ISREG(st.mode) and st.size > 0):
                found.append(f"{d.rstrip('/')}/{name}")
    return found


def scan_findings(fs: TargetFS, bounds: ScanBounds | None = None,
                  skip: frozenset[str] = frozenset()) -> list[Finding]:
    """The whole-image secret scan as findings: one per secret, plus a warning when the
    scan met a bound (naming where it stopped) or could not read or list something."""
    report: ScanReport = scan(fs, bounds or SCAN_BOUNDS, lambda p: p in skip)
    findings = [_hit_finding(h) for h in report.hits]
    hit_paths = {h.path for h in report.hits}
    for path in _dropbear_named(fs):
        if path not in hit_paths and path not in skip:
            parent = path.rpartition("/")[0]
            findings.append(_hit_finding(Hit(path, "dropbear")) if parent in (
                DROPBEAR_DIR, *DROPBEAR_INITRAMFS_DIRS) else Finding(
                path, _KIND["dropbear"], _ELSEWHERE))
    for known in (SSH_DIR, DROPBEAR_DIR, *DROPBEAR_INITRAMFS_DIRS, CLOUD_STATE, LOG_DIR,
                  SEEDTOOL_STATE):
        if _real(fs, known) is None:
            findings.append(Finding(known, "goes through a symlink loop, so what it should "
                                    "hold could not be checked", "fix the links in the image",
                                    WARNING))
    if report.stopped is not None:
        path, bound = report.stopped
        findings.append(Finding(
            path, f"the secret scan stopped here at {bound} ({report.files} files, "
            f"{report.bytes} bytes searched): this file and the rest were not searched",
            "remove build leftovers from the image, or raise the bound "
            "(--scan-max-files, --scan-max-bytes, --scan-max-seconds)", WARNING))
    for top, n in sorted(report.unreadable.items()):
        findings.append(Finding(
            top, f"{n} file(s) here could not be read, so they were not scanned for "
            "private keys or seeds", "run the check as root", WARNING))
    for d, why in report.unlisted:
        findings.append(Finding(d, f"could not be listed, so it was not scanned ({why})",
                                "run the check as root, or fix the directory", WARNING))
    return findings


def check(fs: TargetFS, bounds: ScanBounds | None = None) -> list[Finding]:
    """Lint a baked target; an empty list means clean. `bounds` limits the secret scan."""
    findings: list[Finding] = [s.finding for s in _scrub_steps(fs, None) if s.finding]

    # the guest, exactly as install_guest lays it out
    for path, what in ((CC_MODULE, "seedtool's cloud-init module"),
                       (GUEST_CORE, "seedtool's guest code"),
                       (LAUNCHER, "seedtool's early-boot launcher"),
                       (UNIT, "seedtool's early-boot unit")):
        if not _is_file(fs, path):
            findings.append(Finding(path, f"{what} is not installed",
                                    "run seedtool bake --trusted-key KEY.pub on the image"))
    st = fs.stat(WANTS_LINK)
    if st is None:
        findings.append(Finding(WANTS_LINK, "the early-boot unit is not enabled, so a seed "
                                "written into the disk image is never credited",
                                "run seedtool bake (or systemctl enable seedtool-early.service "
                                "in the image)"))
    mask = fs.stat(MASK)
    if mask is not None and stat.S_ISLNK(mask.mode) and fs.readlink(MASK) == "/dev/null":
        findings.append(Finding(MASK, "the early-boot unit is masked",
                                "remove the mask (systemctl unmask seedtool-early.service)"))
    elif mask is not None and not stat.S_ISDIR(mask.mode):
        findings.append(Finding(MASK, "a file in /etc overrides seedtool's early-boot unit",
                                "remove it unless you meant to replace the unit", WARNING))
    if fs.stat(CC_MODULE) is not None and fs.read(CC_MODULE) != install._data("cc_seedtool.py"):
        findings.append(Finding(CC_MODULE, "differs from this seedtool's guest module",
                                "rerun seedtool bake with this version", WARNING))

    # the module list: seedtool after seed_random, before ssh
    if fs.stat(CLOUD_CFG) is None:
        findings.append(Finding(CLOUD_CFG, "cloud-init is not installed, so seeds in "
                                "user-data are never credited (only disk-image seeds are)",
                                "install cloud-init in the image if VMs get their seed through "
                                "user-data", WARNING))
    else:
        try:
            eff = effective_modules(fs)
            broken = False
        except CloudConfigError as e:
            findings.append(Finding(e.path, "is not valid YAML, so cloud-init cannot read it",
                                    "fix the file and rerun seedtool bake"))
            eff, broken = None, True
        if eff is None and not broken:
            findings.append(Finding(CLOUD_CFG, "no cloud_init_modules list is set",
                                    "restore the distribution's cloud.cfg, then seedtool bake"))
        elif eff is not None:
            source, names = eff
            if "seedtool" not in names:
                findings.append(Finding(
                    source, "the effective cloud_init_modules list (set last here) has no "
                    "seedtool, so seeds in user-data are never verified or credited",
                    "rerun seedtool bake; if this file must set the list, add "
                    f"'- {install.MODULE_ENTRY}' after seed_random"))
            else:
                at = names.index("seedtool")
                if "seed_random" in names and names.index("seed_random") > at:
                    findings.append(Finding(
                        source, "seedtool runs before seed_random in cloud_init_modules",
                        "move seedtool right after seed_random (seedtool bake does)"))
                if "ssh" in names and names.index("ssh") < at:
                    findings.append(Finding(
                        source, "seedtool runs after ssh in cloud_init_modules, so host keys "
                        "are made before the seed is credited",
                        "move seedtool right after seed_random (seedtool bake does)"))

    # the policy and the keys it names: an invalid policy is a misbuilt image (the guest
    # credits nothing and, as docs/guest.md says, reports the error)
    trusted = DEFAULT_TRUSTED_KEYS
    pol, invalid = read_policy(fs)
    if invalid is not None:
        findings.append(Finding(POLICY, f"the guest refuses this policy ({invalid}), so it "
                                "credits no seed at all",
                                "rerun seedtool bake with a valid --policy FILE, or fix the file"))
    elif pol is not None:
        trusted = pol.trusted_keys
    nkeys = 0
    key_files = ([f"{trusted}/{n}" for n in fs.listdir(trusted) if n.endswith(".pub")]
                 if _is_dir(fs, trusted) else [trusted] if _is_file(fs, trusted) else [])
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

    # what the guest runs on
    if fs.stat(PYTHON) is None:
        findings.append(Finding(PYTHON, "there is no python3, which the guest needs",
                                "install python3 in the image"))

    findings += scan_findings(fs, bounds, frozenset(f.path for f in findings))
    return findings


def summary(findings: Sequence[Finding]) -> tuple[int, int]:
    """(errors, warnings)."""
    errors = sum(1 for f in findings if f.severity == ERROR)
    return errors, len(findings) - errors

