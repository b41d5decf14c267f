"""Check: every systemd unit that makes SSH host keys runs after seedtool has credited.

cloud-init's ssh module is not the only maker of host keys. openssh-server ships
`sshd-keygen.service` (`ssh-keygen -A` on a first boot, wanted by ssh.service) in
Debian 13 and unstable, Fedora-family images have `sshd-keygen@.service`, and an image
pipeline may add its own. A unit like that which runs before the cloud-init stage
holding seedtool makes its keys before a user-data seed is credited, and nothing in
cloud-init's own module order shows it.

A unit counts as ordered after the credit when the image says so directly:

* it has `After=` the credit unit (or a cloud-init unit or target that comes later);
* the credit unit has `Before=` it;
* or it keeps systemd's default dependencies (`After=sysinit.target`, systemd.unit(5)
  "Default Dependencies") while the credit unit is `Before=sysinit.target`.

The credit unit is the one running cloud-init's `cloud_init_modules`: cloud-init.service
up to 24.3, cloud-init-network.service from 24.4 (cloud-init's systemd/ directory in
those releases), or seedtool-early.service in an image without cloud-init. Orderings
through a chain of other units are not followed: such a unit is reported, and an
explicit `After=` in a drop-in settles it. Masked units never run and are skipped.
"""

from __future__ import annotations

import re
import stat
from typing import TYPE_CHECKING

from ...image.fs import TargetFS
from ..findings import Finding
from ..install import UNIT_NAME
from ..tree import is_file, real, uses_systemd

if TYPE_CHECKING:
    from . import Context

#: systemd's unit search path for system units, highest precedence first
#: (systemd.unit(5) "Unit File Load Path"); /lib is /usr/lib on merged-/usr systems
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")
#: the stages of cloud-init that run cloud_init_modules, newest name first
CLOUD_INIT_STAGES = ("cloud-init-network.service", "cloud-init.service")
#: what comes after that stage in every cloud-init release that has it
LATER = ("cloud-config.service", "cloud-final.service", "cloud-config.target",
         "cloud-init.target")
_EXEC = re.compile(r"^\s*Exec(?:Start|StartPre|StartPost)\s*=(.*)$", re.M)
_KEYGEN = re.compile(r"\bsshd?-keygen\b")


def _unit_file(fs: TargetFS, name: str) -> str | None:
    """The file systemd loads for unit `name` ('' when masked), None when absent."""
    for d in UNIT_DIRS:
        path = f"{d}/{name}"
        st = fs.stat(path)
        if st is None:
            continue
        if stat.S_ISLNK(st.mode) and fs.readlink(path) == "/dev/null":
            return ""
        target = real(fs, path)
        if target is not None and is_file(fs, target):
            return target
    return None


def _text(fs: TargetFS, name: str, main: str | None = None) -> str:
    """Unit `name`'s file and its drop-ins (`name.d/*.conf`, and `template@.service.d`
    for an instance), concatenated; directives are read by name, so the order of
    files matters only for DefaultDependencies (the last setting wins). `main` is the
    unit's file when the caller has already found it."""
    parts = []
    main = _unit_file(fs, name) if main is None else main
    if main:
        parts.append(fs.read(main).decode("utf-8", "replace"))
    dirs = [f"{name}.d"]
    if "@" in name and not name.split("@", 1)[1].startswith("."):
        dirs.append(name.split("@", 1)[0] + "@." + name.rsplit(".", 1)[1] + ".d")
    confs: dict[str, str] = {}
    for d in reversed(UNIT_DIRS):  # a drop-in of the same name in /etc wins
        for sub in dirs:
            path = f"{d}/{sub}"
            st = fs.stat(path)
            if st is None or not stat.S_ISDIR(st.mode):
                continue
            for conf in fs.listdir(path):
                if conf.endswith(".conf") and is_file(fs, f"{path}/{conf}"):
                    confs[conf] = f"{path}/{conf}"
    parts += [fs.read(confs[c]).decode("utf-8", "replace") for c in sorted(confs)]
    return "\n".join(parts)


def _values(text: str, key: str) -> set[str]:
    out: set[str] = set()
    for m in re.finditer(rf"^\s*{key}\s*=(.*)$", text, re.M):
        out.update(m.group(1).split())
    return out


def _default_dependencies(text: str) -> bool:
    found = re.findall(r"^\s*DefaultDependencies\s*=\s*(\S+)", text, re.M)
    return not found or found[-1].lower() not in ("no", "false", "0", "off")


def _key_makers(fs: TargetFS) -> list[str]:
    """Names of the (unmasked) service units whose Exec lines run ssh-keygen."""
    return [name for name, _, _ in _key_making_units(fs)]


def _key_making_units(fs: TargetFS) -> list[tuple[str, str, str]]:
    """(name, file, text with drop-ins) of those units, each unit file found and read once."""
    names: set[str] = set()
    for d in UNIT_DIRS:
        st = fs.stat(d)
        if st is None or not stat.S_ISDIR(st.mode):
            continue
        names.update(n for n in fs.listdir(d) if n.endswith(".service"))
    makers = []
    for name in sorted(names):
        main = _unit_file(fs, name)
        if not main:
            continue
        text = _text(fs, name, main)
        if any(_KEYGEN.search(cmd) for cmd in _EXEC.findall(text)):
            makers.append((name, main, text))
    return makers


def keygen_after_credit(ctx: Context) -> list[Finding]:
    """Units that make SSH host keys are ordered after the unit where seedtool credits."""
    fs = ctx.fs
    if not uses_systemd(fs):
        return []
    credit = next((n for n in CLOUD_INIT_STAGES if _unit_file(fs, n)), None)
    if credit is None:
        credit = UNIT_NAME
        if _unit_file(fs, credit) is None:
            return []  # the guest is missing: guest_installed says so
    credit_text = _text(fs, credit)
    credit_before = _values(credit_text, "Before")
    after_credit = {credit, *LATER} if credit != UNIT_NAME else {credit}
    findings = []
    for name, where, text in _key_making_units(fs):
        template = name.split("@", 1)[0] + "@.service" if "@" in name else name
        if (_values(text, "After") & after_credit or {name, template} & credit_before
                or _default_dependencies(text) and "sysinit.target" in credit_before):
            continue
        findings.append(Finding(
            where, f"{name} makes SSH host keys and is not ordered after {credit}, where "
            "seedtool credits the seed, so its keys can come from an uncredited pool",
            f"add a drop-in /etc/systemd/system/{name}.d/seedtool.conf with [Unit] and "
            f"After={credit}"))
    return findings
