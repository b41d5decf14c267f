"""Launchers: one module per cloud or hypervisor, each giving every instance its own seed.

`LAUNCHERS` is the one registry of them: name -> its `Launcher` class (seedtool.launch.base),
imported only when used, so listing launchers or `seedtool launch --help` imports no
cloud SDK. `seedtool launch NAME` runs the class's `command`, and `seedtool userdata
--target NAME` applies the class's user-data `target` limit. Adding a cloud: a
per-cloud module in seedtool/clouds/, a launcher module here, its command module in
seedtool/commands/, and one line below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Launcher

LAUNCHERS: Registry[type[Launcher]] = Registry("launcher", {
    "aws": ("seedtool.launch.aws:AwsLauncher", "EC2 instances, each with its own seed."),
    "gce": ("seedtool.launch.gce:GceLauncher", "Compute Engine instances, each with its own seed."),
    "openstack": ("seedtool.launch.openstack:OpenStackLauncher",
                  "OpenStack servers, each with its own seed."),
    "qemu": ("seedtool.launch.qemu:QemuLauncher", "Boot local QEMU VMs, each with its own seed."),
})
