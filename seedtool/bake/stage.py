"""The guest install as bake steps: `install_guest` runs into a temporary staging
directory (with the target's cloud config copied in), and each file it wrote that the
target lacks or holds differently becomes a write, symlink or mkdir step; older guest
code and keys no longer given become remove steps. Disk images and directories get the
same files."""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..image.fs import TargetFS
from . import install
from .findings import Change
from .install import install_guest
from .layout import (
    CC_MODULE,
    CLOUD_CFG,
    CLOUD_CFG_D,
    GUEST_CODE_DIR,
    KEYS_DIR,
    LAUNCHER,
    POLICY,
    PYTHON,
    UNIT,
    WANTS_LINK,
)
from .scrub import Step
from .tree import is_dir, is_file, walk


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
    for name in fs.listdir("/usr/lib") if is_dir(fs, "/usr/lib") else []:
        pyc = f"/usr/lib/{name}/__pycache__/os.{tag}.pyc"
        if re.fullmatch(r"python3\.\d+", name) and is_file(fs, pyc):
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
    if not is_dir(fs, "/etc/cloud"):
        return
    (staging / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    if fs.stat(CLOUD_CFG) is not None:
        (staging / install.CLOUD_CFG).write_bytes(fs.read(CLOUD_CFG))
    if is_dir(fs, CLOUD_CFG_D):
        for name in fs.listdir(CLOUD_CFG_D):
            if name.endswith(".cfg") and fs.stat(f"{CLOUD_CFG_D}/{name}") is not None:
                data = fs.read(f"{CLOUD_CFG_D}/{name}")
                (staging / install.CLOUD_CFG_D / name).write_bytes(data)


def install_steps(fs: TargetFS, trusted_keys: Sequence[str | os.PathLike[str]],
                   policy: Mapping[str, Any] | None,
                   seed_servers: Mapping[str, bytes] | None = None) -> list[Step]:
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="seedtool-bake-") as tmp:
        staging = Path(tmp)
        _stage(fs, staging)
        written = install_guest(staging, trusted_keys, policy, bytecode=False,
                                seed_servers=seed_servers)
        written += _stage_bytecode(fs, staging)
        what = {
            CC_MODULE: "cloud-init module",
            LAUNCHER: "early-boot launcher",
            UNIT: "early-boot unit",
            WANTS_LINK: "early-boot unit enabled",
            POLICY: "seed policy",
            "/" + install.SEED_SERVERS: "seed-server configuration",
            "/" + install.SEED_SERVER_CA: "seed servers' CA certificate",
            f"{CLOUD_CFG_D}/{install.DROPIN_NAME}": "cloud-init module list with seedtool",
        }
        made_dirs: set[str] = set()

        def parents(path: str) -> None:
            missing: list[str] = []
            for up in Path(path).parents:
                if str(up) in made_dirs or is_dir(fs, str(up)):
                    break
                missing.append(str(up))
            for parent in reversed(missing):  # outermost first, as mkdir -p makes them
                made_dirs.add(parent)
                steps.append(Step(Change(parent, "mkdir", "directory"), None,
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
                steps.append(Step(Change(path, "symlink", f"{label} (-> {target})"), None,
                                   partial(fs.symlink, target, path)))
                continue
            data = local.read_bytes()
            mode = stat.S_IMODE(local.stat().st_mode)
            st = fs.stat(path)
            if (st is not None and stat.S_ISREG(st.mode) and stat.S_IMODE(st.mode) == mode
                    and st.size == len(data) and fs.read(path) == data):
                continue
            parents(path)
            steps.append(Step(Change(path, "write", label), None,
                               partial(fs.write, path, data, mode, 0, 0)))
        # what install_guest would have deleted: older guest code, keys no longer given
        keep = set(written)
        for top, pattern in ((GUEST_CODE_DIR, None), (KEYS_DIR, ".pub")):
            if not is_dir(fs, top):
                continue
            entries = (
                (p, st.mode) for p, st in walk(fs, top)) if pattern is None else (
                (f"{top}/{n}", 0) for n in fs.listdir(top) if n.endswith(pattern))
            for path, mode in entries:
                if path in keep or stat.S_ISDIR(mode):
                    continue
                kind = "old guest code" if pattern is None else "trusted key no longer given"
                steps.append(Step(Change(path, "remove", kind), None,
                                   partial(fs.remove, path)))
        state = "/" + install.STATE_DIR
        if not is_dir(fs, state):
            parents(state + "/x")
    return steps
