"""What `seedtool launch qemu` reads from a VM's console, against the lines the guest
core really writes (seedtool.guest.core.Outcome.line) and kernel/cloud-init output."""

from __future__ import annotations

from seedtool.guest.core import Outcome
from seedtool.launch.qemu import crng_init_time, host_keys, seedtool_lines


def _console(*lines: str) -> str:
    # as a serial console shows kmsg: time stamp, carriage returns, an escape sequence
    return "".join(f"\x1b[0m[   {12.5 + i:.6f}] {ln}\r\n" for i, ln in enumerate(lines))


def test_credit_from_user_data_is_parsed() -> None:
    out = Outcome("user-data", "cloud-init", seed_id="ab" * 16, key_id="cd" * 8,
                  credited_bits=512, crng_before="not-ready", crng_after="ready")
    [line] = seedtool_lines(_console("random: crng init done", out.line()))
    assert line.credited and line.bits == 512 and line.seed_id == "ab" * 16
    assert line.key_id == "cd" * 8 and line.origin == "user-data"
    assert (line.crng_before, line.crng_after) == ("not-ready", "ready")
    assert line.kernel_time == 13.5


def test_datasource_credit_without_seed_id_or_key_is_parsed() -> None:
    out = Outcome("datasource:openstack", "cloud-init", credited_bits=4096,
                  crng_before="ready", crng_after="ready")
    assert "from seed - signed by key -" in out.line()
    [line] = seedtool_lines(_console(out.line()))
    assert line.credited and line.bits == 4096
    assert (line.seed_id, line.key_id, line.origin) == ("-", "-", "datasource:openstack")


def test_refusals_are_parsed_with_their_reason() -> None:
    outs = [Outcome("user-data", "cloud-init", seed_id="ef" * 16, reason="expired"),
            Outcome("disk", "early-boot", reason="malformed: not a seedtool envelope")]
    lines = seedtool_lines(_console(*(o.line() for o in outs)))
    assert [(ln.credited, ln.seed_id, ln.origin, ln.reason) for ln in lines] == [
        (False, "ef" * 16, "user-data", "expired"),
        (False, "-", "disk", "malformed: not a seedtool envelope")]


def test_crng_time_and_host_keys() -> None:
    text = _console("random: crng init done") + (
        "-----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n"
        "256 SHA256:abcDEF0123+/xyz root@debian (ECDSA)\r\n"
        "256 SHA256:zzzz root@debian (ED25519)\r\n"
        "-----END SSH HOST KEY FINGERPRINTS-----\r\n")
    assert crng_init_time(text) == 12.5
    keys = host_keys(text)
    assert keys is not None and [(k.type, k.fingerprint) for k in keys] == [
        ("ECDSA", "SHA256:abcDEF0123+/xyz"), ("ED25519", "SHA256:zzzz")]
    assert host_keys(_console("no keys yet")) is None
