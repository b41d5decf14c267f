"""Checks: cloud-init is there, and its effective `cloud_init_modules` list runs seedtool
after seed_random and before ssh (so a seed in user-data is credited before SSH host
keys are made)."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING, Any

from ...image.fs import TargetFS
from .. import install
from ..findings import WARNING, CloudConfigError, Finding
from ..install import canonical_module_name
from ..layout import CLOUD_CFG, CLOUD_CFG_D
from ..tree import is_dir

if TYPE_CHECKING:
    from . import Context


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
    later file's list replaces an earlier one: lists are not merged (cloud-init 22.4 and
    25.1, cloudinit/util.py read_conf_with_confd and mergemanydict). None if no file
    sets it. Raises CloudConfigError naming a file that is not valid YAML.
    """
    import yaml

    files = [CLOUD_CFG] if fs.stat(CLOUD_CFG) is not None else []
    if is_dir(fs, CLOUD_CFG_D):
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


def module_list(ctx: Context) -> list[Finding]:
    """cloud-init is installed and its effective list runs seedtool after seed_random,
    before ssh."""
    fs = ctx.fs
    if fs.stat(CLOUD_CFG) is None:
        return [Finding(CLOUD_CFG, "cloud-init is not installed, so seeds in user-data are "
                        "never credited (only disk-image seeds are)",
                        "install cloud-init in the image if VMs get their seed through "
                        "user-data", WARNING)]
    try:
        eff = effective_modules(fs)
    except CloudConfigError as e:
        return [Finding(e.path, "is not valid YAML, so cloud-init cannot read it",
                        "fix the file and rerun seedtool bake")]
    if eff is None:
        return [Finding(CLOUD_CFG, "no cloud_init_modules list is set",
                        "restore the distribution's cloud.cfg, then seedtool bake")]
    source, names = eff
    if "seedtool" not in names:
        return [Finding(source, "the effective cloud_init_modules list (set last here) has "
                        "no seedtool, so seeds in user-data are never verified or credited",
                        "rerun seedtool bake; if this file must set the list, add "
                        f"'- {install.MODULE_ENTRY}' after seed_random")]
    findings = []
    at = names.index("seedtool")
    if "seed_random" in names and names.index("seed_random") > at:
        findings.append(Finding(source, "seedtool runs before seed_random in "
                                "cloud_init_modules",
                                "move seedtool right after seed_random (seedtool bake does)"))
    if "ssh" in names and names.index("ssh") < at:
        findings.append(Finding(source, "seedtool runs after ssh in cloud_init_modules, so "
                                "host keys are made before the seed is credited",
                                "move seedtool right after seed_random (seedtool bake does)"))
    return findings
