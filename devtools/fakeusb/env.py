"""Build a fake backend from the environment, for tests that run the CLI as a subprocess.

    SEEDTOOL_USB_BACKEND=devtools.fakeusb.env:backend
    FAKEUSB_DEVICES="truerng;serial=A1,chaoskey;kernel_drivers=none"

Devices are separated by commas; each is a short name from
`devtools.fakeusb.devices.DEVICES` or `package.module:Class` (any `FakeDevice`
subclass whose constructor takes keyword options), followed by `;key=value`
options:

    serial=TEXT            the serial-number string
    open_errno=EACCES      errno name raised on open
    other_claims=0/1       interfaces claimed by another program
    kernel_drivers=none | 0:chaoskey/1:cdc_acm
    unplug_after=N, timeout_after=N, max_transfer=N   (see devtools.fakeusb)
    stuck=V                the device repeats byte V (a failed noise source)
"""

from __future__ import annotations

import errno
import importlib
import os
from typing import Any

from . import FakeBackend, FakeDevice
from .devices import DEVICES, Stuck


def _options(items: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        if key == "serial":
            opts[key] = value
        elif key == "open_errno":
            opts[key] = getattr(errno, value)
        elif key == "other_claims":
            opts[key] = {int(v) for v in value.split("/") if v}
        elif key == "kernel_drivers":
            drivers: dict[int, str] = {}
            if value != "none":
                for pair in value.split("/"):
                    n, _, name = pair.partition(":")
                    drivers[int(n)] = name
            opts[key] = drivers
        elif key in ("unplug_after", "timeout_after", "max_transfer"):
            opts[key] = int(value, 0)
        elif key == "stuck":
            opts["stream"] = Stuck(int(value, 0))
        else:
            raise ValueError(f"unknown fake device option {key!r}")
    return opts


def devices_from_spec(spec: str) -> list[FakeDevice]:
    out: list[FakeDevice] = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, *items = entry.split(";")
        if ":" in name:
            module, _, cls_name = name.partition(":")
            cls = getattr(importlib.import_module(module), cls_name)
        else:
            cls = DEVICES[name]
        out.append(cls(**_options(items)))
    return out


def backend() -> FakeBackend:
    """The callable named by SEEDTOOL_USB_BACKEND in subprocess tests."""
    return FakeBackend(devices_from_spec(os.environ.get("FAKEUSB_DEVICES", "")))
