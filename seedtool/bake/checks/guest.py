"""Checks: the guest is installed exactly as `install_guest` lays it out, its early-boot
unit is enabled and not overridden, and the image has what the guest runs on."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

from .. import install
from ..findings import WARNING, Finding
from ..layout import CC_MODULE, GUEST_CORE, LAUNCHER, MASK, PYTHON, UNIT, WANTS_LINK
from ..tree import is_file

if TYPE_CHECKING:
    from . import Context

_PARTS = ((CC_MODULE, "seedtool's cloud-init module"),
          (GUEST_CORE, "seedtool's guest code"),
          (LAUNCHER, "seedtool's early-boot launcher"),
          (UNIT, "seedtool's early-boot unit"))


def guest_installed(ctx: Context) -> list[Finding]:
    return [Finding(path, f"{what} is not installed",
                    "run seedtool bake --trusted-key KEY.pub on the image")
            for path, what in _PARTS if not is_file(ctx.fs, path)]


def early_unit_enabled(ctx: Context) -> list[Finding]:
    if ctx.fs.stat(WANTS_LINK) is not None:
        return []
    return [Finding(WANTS_LINK, "the early-boot unit is not enabled, so a seed written into "
                    "the disk image is never credited",
                    "run seedtool bake (or systemctl enable seedtool-early.service in the "
                    "image)")]


def early_unit_not_overridden(ctx: Context) -> list[Finding]:
    mask = ctx.fs.stat(MASK)
    if mask is not None and stat.S_ISLNK(mask.mode) and ctx.fs.readlink(MASK) == "/dev/null":
        return [Finding(MASK, "the early-boot unit is masked",
                        "remove the mask (systemctl unmask seedtool-early.service)")]
    if mask is not None and not stat.S_ISDIR(mask.mode):
        return [Finding(MASK, "a file in /etc overrides seedtool's early-boot unit",
                        "remove it unless you meant to replace the unit", WARNING)]
    return []


def guest_module_current(ctx: Context) -> list[Finding]:
    fs = ctx.fs
    if fs.stat(CC_MODULE) is not None and fs.read(CC_MODULE) != install._data("cc_seedtool.py"):
        return [Finding(CC_MODULE, "differs from this seedtool's guest module",
                        "rerun seedtool bake with this version", WARNING)]
    return []


def python_present(ctx: Context) -> list[Finding]:
    if ctx.fs.stat(PYTHON) is not None:
        return []
    return [Finding(PYTHON, "there is no python3, which the guest needs",
                    "install python3 in the image")]
