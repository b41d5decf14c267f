"""examples/libvirt: the `<rng>` device with libvirt's EGD backend on seedtool serve's
socket, alone and inside a minimal complete domain, validated against libvirt's own
schema by `virt-xml-validate` (Debian libvirt-clients); the README's `virt-install
--rng` spelling yields the same element when virt-install (Debian virtinst) is here."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from seedtool.launch.qemu import RNG_MAX_BYTES, RNG_PERIOD_MS

LIBVIRT = Path(__file__).resolve().parent.parent / "examples" / "libvirt"


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None:
        pytest.skip("virt-xml-validate is not installed "
                    "(apt-get install libvirt-clients libxml2-utils)")
    return subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                          text=True, timeout=120)


def _canonical(el: ET.Element) -> str:
    """The element with whitespace-only text dropped and children in a fixed order."""
    for e in el.iter():
        if e.text is not None and not e.text.strip():
            e.text = None
        e.tail = None
        e[:] = sorted(e, key=lambda c: c.tag)
    return ET.tostring(el, encoding="unicode")


def _rng_of_domain(text: str) -> ET.Element:
    rngs = ET.fromstring(text).findall("./devices/rng")
    assert len(rngs) == 1
    return rngs[0]


def test_the_domain_validates_against_libvirts_schema() -> None:
    p = _validate(LIBVIRT / "domain.xml")
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_validator_refuses_a_broken_rng_backend(tmp_path: Path) -> None:
    broken = tmp_path / "domain.xml"
    broken.write_text((LIBVIRT / "domain.xml").read_text().replace("model='egd'",
                                                                 "model='eggs'"))
    p = _validate(broken)
    assert p.returncode != 0 and "fails to validate" in p.stdout + p.stderr


def test_the_fragment_is_the_domains_rng_device_with_egd_reconnect_and_rate() -> None:
    fragment = ET.fromstring((LIBVIRT / "rng-egd.xml").read_text())
    in_domain = _rng_of_domain((LIBVIRT / "domain.xml").read_text())
    assert _canonical(fragment) == _canonical(in_domain)
    backend = fragment.find("backend")
    assert backend is not None and backend.attrib == {"model": "egd", "type": "unix"}
    source = backend.find("source")
    assert source is not None and source.get("mode") == "connect"
    assert source.get("path") == "/run/seedtool/egd.sock"
    reconnect = source.find("reconnect")
    assert reconnect is not None and reconnect.get("enabled") == "yes"
    # the same rate limit as `seedtool launch qemu --rng egd:PATH` gives by default
    rate = fragment.find("rate")
    assert rate is not None
    assert (int(rate.attrib["bytes"]), int(rate.attrib["period"])) == (RNG_MAX_BYTES,
                                                                      RNG_PERIOD_MS)


def test_the_readmes_virt_install_option_gives_the_same_element(tmp_path: Path) -> None:
    m = re.search(r"--rng (egd,\S+)", (LIBVIRT / "README.md").read_text())
    assert m, "the README names no virt-install --rng option"
    if shutil.which("virt-install") is None:
        pytest.skip("virt-install is not installed (apt-get install virtinst)")
    # libvirt's test driver: no hypervisor, nothing defined, the XML printed only
    p = subprocess.run(
        ["virt-install", "--connect", "test:///default", "--print-xml", "--name", "t",
         "--memory", "1024", "--disk", "none", "--boot", "hd",
         "--osinfo", "detect=off,require=off", "--rng", m[1]],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    printed = _rng_of_domain(p.stdout)
    fragment = ET.fromstring((LIBVIRT / "rng-egd.xml").read_text())
    assert _canonical(printed) == _canonical(fragment)
    (tmp_path / "printed.xml").write_text(p.stdout)
    v = _validate(tmp_path / "printed.xml")
    assert v.returncode == 0, v.stdout + v.stderr
