"""The scrub plan, shared by bake and `bake --check`: one `Step` per path holding state
no two VMs may share (SSH host keys, machine ids, random seeds, systemd's credential
key, seedtool's and cloud-init's per-boot state, cloud-init's logs). bake applies the
steps; the check reports each step's finding."""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from ..image.fs import TargetFS
from .findings import Change, Finding
from .layout import (
    CLOUD_KEEP,
    CLOUD_STATE,
    CREDENTIAL_SECRET,
    DBUS_MACHINE_ID,
    LOG_DIR,
    MACHINE_ID,
    RANDOM_SEED_SERVICE,
    RANDOM_SEEDS,
    SEEDTOOL_STATE,
    SSH_DIR,
    SSH_HOST_PREFIX,
)
from .tree import is_dir, real, walk


@dataclass(frozen=True)
class Step:
    change: Change
    finding: Finding | None
    apply: Callable[[], None]


def _machine_id_text(form: str) -> bytes:
    return b"uninitialized\n" if form == "uninitialized" else b""


def scrub_steps(fs: TargetFS, machine_id: str | None) -> list[Step]:
    """Every change that removes shared state; `machine_id` None accepts either reset form."""
    steps: list[Step] = []

    def remove(path: str, what: str, problem: str, fix: str) -> None:
        steps.append(Step(Change(path, "remove", what), Finding(path, problem, fix),
                           partial(fs.remove, path)))

    # SSH host keys (and their certificates), also behind a symlinked /etc/ssh: the
    # directory as the booted image resolves it, never outside the image
    ssh_dir = real(fs, SSH_DIR)
    if ssh_dir is not None and is_dir(fs, ssh_dir):
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
            steps.append(Step(
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
            steps.append(Step(
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
        path = real(fs, known, follow_final=False) or known
        st = fs.stat(path)
        if st is not None and not stat.S_ISDIR(st.mode):
            remove(path, "random seed",
                   "random seed every VM made from this image would load at boot",
                   "remove it (seedtool bake does; on a running system stop "
                   f"{RANDOM_SEED_SERVICE} first, or shutdown writes a new one)")
    secret = real(fs, CREDENTIAL_SECRET, follow_final=False) or CREDENTIAL_SECRET
    st = fs.stat(secret)
    if st is not None and not stat.S_ISDIR(st.mode):
        remove(secret, "systemd credential key",
               "systemd-creds host key every VM made from this image would share",
               "remove it (seedtool bake does); systemd makes a new one when first needed")

    # seedtool's own per-boot state: a seed, the ledger, status files
    state = real(fs, SEEDTOOL_STATE)
    if state is not None and is_dir(fs, state):
        for path, st in walk(fs, state):
            if not stat.S_ISDIR(st.mode):
                remove(path, "seedtool state",
                       "seedtool seed, ledger or status left from a boot or seeding of this "
                       "image", "remove it (seedtool bake does)")

    # cloud-init's instance state (all but seed/) and logs, as `cloud-init clean --logs`
    cloud = real(fs, CLOUD_STATE)
    if cloud is not None and is_dir(fs, cloud):
        for name in fs.listdir(cloud):
            if name in CLOUD_KEEP:
                continue
            top = f"{cloud.rstrip('/')}/{name}"
            st = fs.stat(top)
            if st is None:
                continue
            entries = list(walk(fs, top)) if stat.S_ISDIR(st.mode) else []
            entries.append((top, st))
            for path, est in entries:
                if not stat.S_ISDIR(est.mode):
                    remove(path, "cloud-init state",
                           "cloud-init instance state from a boot of this image (old "
                           "user-data, semaphores that make per-instance modules skip)",
                           "run 'cloud-init clean --logs' before capturing the image, or "
                           "seedtool bake")
                else:
                    steps.append(Step(Change(path, "rmdir", "cloud-init state directory"),
                                       None, partial(fs.rmdir, path)))
    logs = real(fs, LOG_DIR)
    if logs is not None and is_dir(fs, logs):
        for name, lst in fs.scandir(logs):
            path = f"{logs.rstrip('/')}/{name}"
            if name.startswith("cloud-init") and ".log" in name and not stat.S_ISDIR(lst.mode):
                remove(path, "cloud-init log",
                       "cloud-init log from a boot of this image",
                       "run 'cloud-init clean --logs' before capturing the image, or "
                       "seedtool bake")
    return steps
