"""The guest core against a temporary root and this machine's real kernel RNG.

Every outcome of `credit_seed`: verified credit (a real RNDADDENTROPY as root),
unsigned, wrong key, untrusted key, expired, not yet valid, the clock-skew edges,
replay through the ledger, malformed, no trusted keys, no `cryptography` (the
pure-Python verifier needs none), not permitted (capabilities dropped), read-only
/var, missing /dev/kmsg, unwritable status, invalid policy, datasource seeds; and
that no form of the seed bytes ever reaches the status, the kernel-log line, the
ledger or a log.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from seedtool.generate import SeedFactory
from seedtool.guest import core, decision, kernel
from seedtool.guest.core import Paths, credit_seed
from seedtool.guest.policy import Policy
from seedtool.keys import generate_keypair, load_private_key, public_of
from seedtool.shared import envelope
from seedtool.shared.pubkeys import key_id
from tests.guest.audit import recording

REPO = Path(__file__).resolve().parents[2]
LINE_CREDITED = re.compile(
    r"^seedtool: credited (\d+) bits from seed ([0-9a-f]{32}|-) signed by key ([0-9a-f]{16}|-) "
    r"\(([a-z:-]+), crng (ready|not-ready|unknown)->(ready|not-ready|unknown)\)$"
)
LINE_MIXED = re.compile(r"^seedtool: mixed seed ([0-9a-f]{32}|-) uncredited \(([a-z:-]+)\): (.+)$")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="RNDADDENTROPY needs root")


@dataclass
class Guest:
    root: Path
    devices: Path
    paths: Paths
    private_key: Any
    tmp: Path

    def kmsg_text(self) -> str:
        return Path(self.paths.kmsg).read_text() if Path(self.paths.kmsg).exists() else ""

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(Path(self.paths.status).read_text())
        return data

    def ledger(self) -> str:
        return Path(self.paths.ledger).read_text() if Path(self.paths.ledger).exists() else ""


def make_devices(base: Path) -> Path:
    """A /dev + /proc stand-in: the real urandom and boot id, a kmsg we can read, and an
    hwrng the guest must never read (it can block a boot: core.local_inputs)."""
    dev = base / "dev"
    dev.mkdir(parents=True)
    (dev / "urandom").symlink_to("/dev/urandom")
    (dev / "hwrng").write_bytes(b"\x5a" * 64)
    (dev / "kmsg").touch()
    rnd = base / "proc/sys/kernel/random"
    rnd.mkdir(parents=True)
    for name in ("boot_id", "poolsize", "entropy_avail"):
        (rnd / name).symlink_to(f"/proc/sys/kernel/random/{name}")
    return base


@pytest.fixture
def guest(tmp_path: Path) -> Guest:
    root = tmp_path / "root"
    keys = root / "etc/seedtool/trusted-keys"
    keys.mkdir(parents=True)
    generate_keypair(tmp_path / "signing.key", keys / "signing.pub")
    devices = make_devices(tmp_path / "devices")
    return Guest(
        root=root,
        devices=devices,
        paths=Paths.under(root, devices),
        private_key=load_private_key(tmp_path / "signing.key"),
        tmp=tmp_path,
    )


def forms(seed: bytes) -> list[bytes]:
    """Every way seed bytes could be written out."""
    return [
        seed,
        seed.hex().encode(),
        seed.hex().upper().encode(),
        base64.b64encode(seed),
        base64.b64encode(seed).rstrip(b"="),
        base64.urlsafe_b64encode(seed).rstrip(b"="),
    ]


def assert_no_seed(seed: bytes, *texts: str | bytes) -> None:
    for text in texts:
        blob = text.encode() if isinstance(text, str) else text
        for form in forms(seed):
            assert form not in blob


def all_outputs(g: Guest) -> list[bytes]:
    files = [p for p in g.root.rglob("*") if p.is_file()] + [Path(g.paths.kmsg)]
    return [p.read_bytes() for p in files if p.exists()]


def seed_of(raw: bytes) -> bytes:
    return envelope.parse(raw).uncredited_seed


# ---- verified credit -------------------------------------------------------------------


@needs_root
def test_verified_seed_is_credited_once_with_a_real_ioctl(guest: Guest) -> None:
    new = SeedFactory(guest.private_key).new()
    out = credit_seed(new.text, "user-data", stage=core.STAGE_CLOUD_INIT, instance_id="i-0abc",
                      paths=guest.paths)
    assert out.credited and out.verified and out.reason == ""
    assert out.credited_bits == 8 * envelope.SEED_DEFAULT
    assert out.seed_id == new.seed_id
    assert out.key_id == key_id(public_of(guest.private_key).raw).hex()
    line = guest.kmsg_text()
    assert line.startswith("<5>") and line.endswith("\n") and line.count("\n") == 1
    m = LINE_CREDITED.match(line[3:-1])
    assert m, line
    assert m.group(1) == "512" and m.group(2) == new.seed_id and m.group(3) == out.key_id
    assert m.group(4) == "user-data" and m.group(6) == "ready"
    st = guest.status()
    assert set(st) >= {"version", "origin", "stage", "seed_id", "key_id", "verified",
                       "credited_bits", "crng_before", "crng_after", "reason", "time"}
    assert st["credited_bits"] == 512 and st["verified"] is True and st["reason"] is None
    assert st["stage"] == "cloud-init" and st["origin"] == "user-data"
    assert oct(Path(guest.paths.status).stat().st_mode & 0o777) == "0o644"
    assert any(i.startswith("instance-id:") for i in st["local_inputs"])
    assert guest.ledger().startswith(new.seed_id + " ")
    assert_no_seed(seed_of(new.raw), *all_outputs(guest))

    again = credit_seed(new.text, "user-data", stage=core.STAGE_CLOUD_INIT, paths=guest.paths)
    assert not again.credited and again.reason == "already consumed" and not again.verified
    assert guest.ledger().count(new.seed_id) == 1
    assert LINE_MIXED.match(guest.kmsg_text().splitlines()[-1][3:])


@needs_root
def test_status_reports_the_kernel_pool_it_observed(guest: Guest) -> None:
    # this machine's kernel, through the real /proc files: its pool size says which
    # generation of drivers/char/random.c it runs (256 from Linux 5.18, and in stable
    # kernels that took the rewrite; 4096 for the old driver)
    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    out = credit_seed(SeedFactory(guest.private_key).new().text, "user-data",
                      stage=core.STAGE_CLOUD_INIT, paths=guest.paths)
    st = guest.status()
    assert st["pool_bits"] in (256, 4096) and st["pool_bits"] == out.pool_bits
    if release >= (5, 18):
        assert st["pool_bits"] == 256
    assert isinstance(st["entropy_avail_before"], int)
    if st["pool_bits"] == 256:  # ready: the count stays at the 256 bits readiness needs
        assert st["entropy_avail_after"] == 256
    # a 4096-bit pool (before 5.18) and a kernel whose /proc shows neither file
    rnd = Path(guest.paths.proc_random)
    for name in ("poolsize", "entropy_avail"):
        (rnd / name).unlink()
    (rnd / "poolsize").write_text("4096\n")
    Path(guest.paths.status).unlink()  # else "no seed offered" keeps the earlier status
    credit_seed(None, "user-data", stage=core.STAGE_CLOUD_INIT, paths=guest.paths)
    st = guest.status()
    assert (st["pool_bits"], st["entropy_avail_before"], st["entropy_avail_after"]) == \
        (4096, None, None)


@needs_root
def test_add_entropy_ioctl_returns_zero_on_this_kernel() -> None:
    # add_entropy raises unless the ioctl returned 0; a bad size is refused up front
    kernel.add_entropy("/dev/urandom", os.urandom(32), 256)
    with pytest.raises(ValueError):
        kernel.add_entropy("/dev/urandom", b"\x00" * 4, 33)


@needs_root
def test_raw_envelope_bytes_are_accepted(guest: Guest) -> None:
    new = SeedFactory(guest.private_key).new()
    out = credit_seed(new.raw, "disk", stage=core.STAGE_EARLY, paths=guest.paths)
    assert out.credited and out.origin == "disk"


# ---- refusals --------------------------------------------------------------------------


def reason_of(g: Guest, data: bytes | str | None, **kw: Any) -> core.Outcome:
    out = credit_seed(data, "user-data", stage=core.STAGE_CLOUD_INIT, paths=g.paths, **kw)
    assert not out.credited and out.credited_bits == 0
    line = g.kmsg_text().splitlines()[-1]
    m = LINE_MIXED.match(line[3:])
    assert m, line
    assert m.group(3) == out.reason
    assert g.status()["reason"] == out.reason and g.status()["credited_bits"] == 0
    return out


def test_altered_signature_does_not_verify(guest: Guest) -> None:
    raw = bytearray(SeedFactory(guest.private_key).new().raw)
    raw[-1] ^= 1
    out = reason_of(guest, bytes(raw))
    assert out.reason == "signature does not verify" and not out.verified
    assert out.seed_id is not None and guest.ledger() == ""


def test_altered_seed_does_not_verify(guest: Guest) -> None:
    raw = bytearray(SeedFactory(guest.private_key).new().raw)
    raw[60] ^= 0x80  # inside the seed
    assert reason_of(guest, bytes(raw)).reason == "signature does not verify"


def test_envelope_signed_by_another_key_claiming_a_trusted_id(guest: Guest) -> None:
    other = guest.tmp / "other.key"
    generate_keypair(other, guest.tmp / "other.pub")
    forged = envelope.build(
        os.urandom(64),
        private_key=load_private_key(other),
        key_id=key_id(public_of(guest.private_key).raw),  # the trusted key's id
        seed_id=os.urandom(16),
        provenance={},
        ttl=600,
    )
    assert reason_of(guest, forged).reason == "signature does not verify"


def test_untrusted_key_is_named(guest: Guest) -> None:
    generate_keypair(guest.tmp / "other.key", guest.tmp / "other.pub")
    other = load_private_key(guest.tmp / "other.key")
    out = reason_of(guest, SeedFactory(other).new().text)
    assert out.reason == f"signed by untrusted key {key_id(public_of(other).raw).hex()}"


def test_no_trusted_keys_installed(guest: Guest) -> None:
    for p in (guest.root / "etc/seedtool/trusted-keys").glob("*.pub"):
        p.unlink()
    assert reason_of(guest, SeedFactory(guest.private_key).new().text).reason == (
        "no trusted keys installed"
    )


def test_an_invalid_key_file_is_skipped_not_fatal(guest: Guest) -> None:
    (guest.root / "etc/seedtool/trusted-keys/broken.pub").write_text("ssh-ed25519 AAAA x\n")
    new = SeedFactory(guest.private_key).new()
    out = credit_seed(new.text, "user-data", stage="cloud-init", paths=guest.paths, policy=Policy())
    assert out.verified
    assert "ignored invalid trusted key file broken.pub" in out.notes


@pytest.mark.parametrize(
    "text, expect",
    [
        ("not base64 at all!!", "malformed: not a seedtool envelope"),
        (base64.b64encode(b"SDTL" + b"\x01\x00" + b"\x00" * 10).decode(),
         "malformed: envelope is truncated"),
        (base64.b64encode(b"hello world, this is not it").decode(),
         "malformed: not a seedtool envelope"),
    ],
)
def test_malformed(guest: Guest, text: str, expect: str) -> None:
    out = reason_of(guest, text)
    assert out.reason.startswith(expect) and out.seed_id is None


def test_truncated_envelope(guest: Guest) -> None:
    raw = SeedFactory(guest.private_key).new().raw
    assert reason_of(guest, raw[:-10]).reason.startswith("malformed: envelope is truncated")


def test_no_seed_offered(guest: Guest) -> None:
    out = reason_of(guest, None)
    assert out.reason == "no seed offered" and out.seed_id is None
    assert guest.kmsg_text().splitlines()[-1] == (
        "<5>seedtool: mixed seed - uncredited (user-data): no seed offered"
    )


# ---- validity period and clock skew ----------------------------------------------------

T0 = 1_900_000_000
TTL = 3600


@pytest.mark.parametrize(
    "skew, now_offset, expect",
    [
        (300, -300, ""),  # exactly skew seconds before issue: still valid
        (300, -301, "not yet valid"),
        (0, -1, "not yet valid"),
        (0, 0, ""),
        (300, TTL + 300, ""),  # exactly skew seconds after not-after: still valid
        (300, TTL + 301, "expired"),
        (0, TTL + 1, "expired"),
        (0, TTL, ""),
    ],
)
def test_validity_period_with_clock_skew(guest: Guest, skew: int, now_offset: int,
                                         expect: str) -> None:
    new = SeedFactory(guest.private_key, ttl=TTL).new(now=T0)
    out = credit_seed(new.raw, "user-data", stage="cloud-init", paths=guest.paths,
                      policy=Policy(clock_skew=skew), now=T0 + now_offset)
    assert out.reason == expect
    assert out.verified == (expect == "")
    if expect:
        assert not out.credited and guest.ledger() == ""
    elif os.geteuid() == 0:
        assert out.credited


def test_clock_skew_comes_from_the_policy_file(guest: Guest) -> None:
    Path(guest.paths.policy).write_text(json.dumps({"clock_skew": 10}))
    new = SeedFactory(guest.private_key, ttl=TTL).new(now=T0)
    out = credit_seed(new.raw, "user-data", stage="cloud-init", paths=guest.paths, now=T0 - 11)
    assert out.reason == "not yet valid"


# ---- policy ----------------------------------------------------------------------------


def test_invalid_policy_credits_nothing_and_says_so(guest: Guest) -> None:
    Path(guest.paths.policy).write_text(json.dumps({"clock_skew": "five minutes"}))
    out = reason_of(guest, SeedFactory(guest.private_key).new().text)
    assert out.reason == "policy invalid"
    assert any("clock_skew" in n for n in out.notes)


@pytest.mark.parametrize("text, detail", [
    # says fail_closed: false, but the file is invalid: never read as "false"
    (json.dumps({"fail_closed": False, "clock_skew": "five minutes"}), "'clock_skew' must be"),
    ('{"fail_closed": tru', "is not valid JSON"),
    (json.dumps({"fail_closd": True}), "unknown setting 'fail_closd'"),
])
def test_invalid_policy_is_an_error_never_a_quiet_fail_open(guest: Guest, text: str,
                                                            detail: str) -> None:
    Path(guest.paths.policy).write_text(text)
    new = SeedFactory(guest.private_key).new()
    out = reason_of(guest, new.text)
    assert out.reason == "policy invalid" and not out.verified and guest.ledger() == ""
    assert out.fail_closed and detail in out.policy_error
    failure = out.failure()
    assert guest.paths.policy in failure and detail in failure
    assert "rebuild the image with `seedtool bake` or fix the JSON in /etc/seedtool/policy.json" \
        in failure
    with pytest.raises(core.PolicyInvalid) as raised:
        out.raise_if_fail_closed()
    assert str(raised.value) == failure
    assert isinstance(raised.value, core.SeedNotCredited)
    assert core.policy_failure(guest.paths) == failure
    # a datasource seed from a platform the broken file may have meant to trust: mixed only
    out = reason_of(guest, None, platform_seed=os.urandom(64), platform="openstack")
    assert out.reason == "policy invalid" and out.failure() == failure


def test_valid_or_absent_policy_is_no_failure(guest: Guest) -> None:
    assert core.policy_failure(guest.paths) == ""  # absent: the defaults
    out = credit_seed(None, "user-data", stage="cloud-init", paths=guest.paths)
    assert out.policy_error == "" and not out.fail_closed and out.failure() == ""
    out.raise_if_fail_closed()
    Path(guest.paths.policy).write_text(json.dumps({"fail_closed": False}))
    assert core.policy_failure(guest.paths) == ""


def test_fail_closed_raises_only_when_not_credited(guest: Guest) -> None:
    out = credit_seed(None, "user-data", stage="cloud-init", paths=guest.paths,
                      policy=Policy(fail_closed=True))
    with pytest.raises(core.SeedNotCredited, match="no seed offered"):
        out.raise_if_fail_closed()
    ok = core.Outcome(origin="x", stage="y", credited_bits=256, fail_closed=True)
    ok.raise_if_fail_closed()


# ---- datasource seeds ------------------------------------------------------------------


def test_datasource_seed_is_mixed_not_credited_by_default(guest: Guest) -> None:
    out = credit_seed(None, "datasource:openstack", stage="cloud-init", paths=guest.paths,
                      platform_seed=os.urandom(512), platform="openstack")
    assert not out.credited
    assert out.reason == "datasource seeds are not credited by policy"


def test_datasource_seed_from_an_untrusted_platform(guest: Guest) -> None:
    pol = Policy(credit_datasource=True, trusted_platforms=("azure",))
    out = credit_seed(None, "datasource:openstack", stage="cloud-init", paths=guest.paths,
                      platform_seed=os.urandom(512), platform="openstack", policy=pol)
    assert out.reason == "platform openstack not trusted" and not out.credited


@needs_root
def test_datasource_seed_from_a_trusted_platform_is_credited(guest: Guest) -> None:
    seed = os.urandom(512)  # nova's random_seed: 512 bytes, credited for 512 bits only
    pol = Policy(credit_datasource=True, trusted_platforms=("openstack",))
    out = credit_seed(None, "datasource:openstack", stage="cloud-init", paths=guest.paths,
                      platform_seed=seed, platform="OpenStack", policy=pol)
    assert out.credited_bits == 512 and out.seed_id is None
    assert guest.kmsg_text() == (
        f"<5>seedtool: credited 512 bits from seed - signed by key - (datasource:openstack, "
        f"crng {out.crng_before}->{out.crng_after})\n"
    )
    assert_no_seed(seed, *all_outputs(guest))


def oem0(payload: bytes) -> bytes:
    from tests.guest.test_platform_seed import oem0_table

    return oem0_table(payload)


@needs_root
def test_azure_seed_is_credited_for_its_payload_only(guest: Guest) -> None:
    pol = Policy(credit_datasource=True, trusted_platforms=("azure",))
    table = oem0(os.urandom(32))  # 36-byte header + 32 random bytes
    out = credit_seed(None, "datasource:azure", stage="cloud-init", paths=guest.paths,
                      platform_seed=base64.b64encode(table).decode(), platform="azure",
                      policy=pol)
    assert out.credited_bits == 256  # 8 x 32, not 8 x 68
    assert_no_seed(table[36:], *all_outputs(guest))


@pytest.mark.parametrize("platform, value, why", [
    ("openstack", "text of 33 characters, not base64", "text, not strict base64"),
    ("azure", base64.b64encode(b"\x00" * 100).decode(), "OEM0 table not an OEM0 ACPI table"),
    ("azure", "zeroed", "text, not strict base64"),
    ("nocloud", base64.b64encode(b"\x01\x02" * 32).decode(), "format unknown"),
    ("openstack", b"\x00" * 512, "all its bytes are equal"),
])
def test_trusted_platform_seed_that_carries_nothing_is_mixed_only(
        guest: Guest, platform: str, value: str | bytes, why: str) -> None:
    pol = Policy(credit_datasource=True, trusted_platforms=(platform,))
    out = reason_of(guest, None, platform_seed=value, platform=platform, policy=pol)
    assert out.reason == f"platform {platform} seed not creditable: {why}"


@needs_root
def test_azure_table_the_kernel_already_consumed_credits_nothing(guest: Guest) -> None:
    # Linux 6.9+ zeroes OEM0's payload after crediting it (drivers/hv/hv_common.c)
    pol = Policy(credit_datasource=True, trusted_platforms=("azure",))
    out = reason_of(guest, None, platform_seed=base64.b64encode(oem0(b"\x00" * 64)).decode(),
                    platform="azure", policy=pol)
    assert out.reason == "platform azure seed not creditable: all its bytes are equal"


@needs_root
@pytest.mark.parametrize("size, bits", [(16, 128), (64, 512), (512, 512)])
def test_envelope_credit_is_capped_at_what_the_seed_holds(guest: Guest, size: int,
                                                          bits: int) -> None:
    new = SeedFactory(guest.private_key, nbytes=size).new()
    out = credit_seed(new.text, "user-data", stage="cloud-init", paths=guest.paths)
    assert out.credited and out.credited_bits == bits
    assert guest.status()["credited_bits"] == bits
    assert LINE_CREDITED.match(guest.kmsg_text()[3:-1]).group(1) == str(bits)  # type: ignore[union-attr]


@needs_root
def test_an_envelope_wins_over_a_datasource_seed(guest: Guest) -> None:
    new = SeedFactory(guest.private_key).new()
    pol = Policy(credit_datasource=True, trusted_platforms=("openstack",))
    out = credit_seed(new.text, "user-data", stage="cloud-init", paths=guest.paths,
                      platform_seed=os.urandom(64), platform="openstack", policy=pol)
    assert out.credited_bits == 512 and out.seed_id == new.seed_id


# ---- the environment fails -------------------------------------------------------------


@needs_root
def test_missing_kmsg_is_recorded_and_the_seed_still_credited(guest: Guest) -> None:
    Path(guest.paths.kmsg).unlink()
    out = credit_seed(SeedFactory(guest.private_key).new().text, "user-data",
                      stage="cloud-init", paths=guest.paths)
    assert out.credited and not out.kmsg_written
    assert guest.status()["notes"] == ["kmsg unavailable: No such file or directory"]


@needs_root
def test_unwritable_status_is_reported_but_the_seed_is_credited(guest: Guest) -> None:
    Path(guest.paths.status).mkdir(parents=True)  # a directory where the file should go
    out = credit_seed(SeedFactory(guest.private_key).new().text, "user-data",
                      stage="cloud-init", paths=guest.paths)
    assert out.credited and not out.status_written
    assert any(n.startswith("status not written") for n in out.notes)
    assert LINE_CREDITED.match(guest.kmsg_text()[3:-1])


def run_guest_subprocess(g: Guest, text: str, prefix: list[str], extra_code: str = "",
                         python_flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run credit_seed in a child process (other privileges, mounts or sys.path)."""
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
{extra_code}
from seedtool.guest import core
paths = core.Paths.under({str(g.root)!r}, {str(g.devices)!r})
out = core.credit_seed({text!r}, "disk", stage="early-boot", paths=paths)
print(json.dumps({{**out.status(), "status_written": out.status_written,
                   "line": out.line()}}))
"""
    res = subprocess.run([*prefix, sys.executable, *python_flags, "-c", code],
                         capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 0, res.stderr
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    assert_no_seed(seed_of(envelope.decode_text(text)), res.stdout, res.stderr)
    return result


@needs_root
def test_not_permitted_without_cap_sys_admin(guest: Guest) -> None:
    new = SeedFactory(guest.private_key).new()
    res = run_guest_subprocess(
        guest, new.text, ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
    )
    assert res["reason"] == "not permitted" and res["credited_bits"] == 0
    assert res["verified"] is True
    # consumed before the credit was tried: never credited later, by anyone
    assert new.seed_id in guest.ledger()
    assert res["line"].endswith("uncredited (disk): not permitted")


@needs_root
def test_read_only_var_records_and_credits_nothing(guest: Guest) -> None:
    var = guest.root / "var"
    (var / "lib/seedtool").mkdir(parents=True)
    new = SeedFactory(guest.private_key).new()
    mount = f"""
import subprocess
subprocess.run(["mount", "--bind", {str(var)!r}, {str(var)!r}], check=True)
subprocess.run(["mount", "-o", "remount,ro,bind", {str(var)!r}], check=True)
"""
    res = run_guest_subprocess(guest, new.text, ["unshare", "-m", "--propagation", "private"],
                               extra_code=mount)
    assert res["reason"] == "ledger not writable" and res["credited_bits"] == 0
    assert res["verified"] is False
    assert res["status_written"] is False
    assert any("Read-only file system" in n for n in res["notes"]), res["notes"]
    assert guest.ledger() == "" and not Path(guest.paths.status).exists()
    assert LINE_MIXED.match(guest.kmsg_text()[3:-1])


def test_without_cryptography_the_signature_is_still_checked(guest: Guest) -> None:
    hide = "import importlib.util; assert importlib.util.find_spec('cryptography') is None"
    new = SeedFactory(guest.private_key).new()
    # -S: no site-packages, so only the standard library and the repository are importable
    res = run_guest_subprocess(guest, new.text, [], extra_code=hide, python_flags=("-S",))
    assert res["verified"] is True and new.seed_id in guest.ledger()
    # and an altered one is still refused
    raw = bytearray(envelope.decode_text(SeedFactory(guest.private_key).new().text))
    raw[60] ^= 1  # inside the seed
    res = run_guest_subprocess(guest, envelope.encode_text(bytes(raw)), [], extra_code=hide,
                               python_flags=("-S",))
    assert res["verified"] is False and res["credited_bits"] == 0
    assert res["reason"] == "signature does not verify"


# ---- status.json across stages -----------------------------------------------------------


@needs_root
def test_a_later_stage_without_a_seed_keeps_the_earlier_status(guest: Guest) -> None:
    new = SeedFactory(guest.private_key).new()
    credit_seed(new.raw, "disk", stage=core.STAGE_EARLY, paths=guest.paths)
    credit_seed(None, "user-data", stage=core.STAGE_CLOUD_INIT, paths=guest.paths)
    assert guest.status()["seed_id"] == new.seed_id and guest.status()["stage"] == "early-boot"
    per_stage = json.loads((Path(guest.paths.status).parent / "status-cloud-init.json").read_text())
    assert per_stage["reason"] == "no seed offered"
    # a seed offered later does replace it
    credit_seed("garbage!", "user-data", stage=core.STAGE_CLOUD_INIT, paths=guest.paths)
    assert guest.status()["stage"] == "cloud-init"


def test_a_status_from_another_boot_is_replaced(guest: Guest) -> None:
    Path(guest.paths.status).parent.mkdir(parents=True)
    Path(guest.paths.status).write_text(json.dumps({"boot_id": "other", "seed_id": "ab" * 16}))
    credit_seed(None, "user-data", stage=core.STAGE_CLOUD_INIT, paths=guest.paths)
    assert guest.status()["reason"] == "no seed offered"


# ---- what goes into the pool -------------------------------------------------------------


def test_local_inputs_are_labelled_and_vary(guest: Guest) -> None:
    a = dict(core.local_inputs("i-1", guest.paths))
    b = dict(core.local_inputs("i-1", guest.paths))
    assert a["instance-id"] == b"i-1" and a["clocks"] != b["clocks"]
    assert len(a["boot-id"]) >= 36
    assert "hwrng" not in a  # make_devices put a readable dev/hwrng there: never read


def test_random_seed_file_is_refreshed_0600(guest: Guest) -> None:
    rs = Path(guest.paths.random_seed)
    rs.parent.mkdir(parents=True)
    rs.write_bytes(b"\x00" * 32)
    credit_seed(None, "user-data", stage="cloud-init", paths=guest.paths)
    assert kernel.crng_state() == "ready"  # this machine's CRNG is long initialised
    data = rs.read_bytes()
    assert len(data) == 32 and data != b"\x00" * 32
    assert oct(rs.stat().st_mode & 0o777) == "0o600"


def test_no_systemd_dir_no_random_seed_file(guest: Guest) -> None:
    credit_seed(None, "user-data", stage="cloud-init", paths=guest.paths)
    assert not Path(guest.paths.random_seed).exists()


def test_paths_under_root() -> None:
    p = Paths.under("/r")
    assert p.ledger == "/r/var/lib/seedtool/ledger"
    assert p.kmsg == "/r/dev/kmsg" and p.in_root("/etc/x") == "/r/etc/x"
    assert p.replace(kmsg="/k").kmsg == "/k" and p.replace(kmsg="/k").ledger == p.ledger


# ---- the effects alone, and their order ------------------------------------------------


def test_record_in_ledger_gives_the_ledgers_answer(tmp_path: Path) -> None:
    path, sid = str(tmp_path / "ledger"), "ab" * 16
    assert core.record_in_ledger(path, sid, "disk", 1_800_000_000) == (decision.LEDGER_FRESH, "")
    assert Path(path).read_text() == f"{sid} 1800000000 disk\n"
    assert core.record_in_ledger(path, sid, "disk", 1_800_000_001) == (
        decision.LEDGER_REPLAY, "")
    Path(path).write_text("not a record\n")
    state, note = core.record_in_ledger(path, sid, "disk", 0)
    assert state == decision.LEDGER_INVALID and "line 1 is not a seedtool ledger record" in note
    (tmp_path / "file").write_text("")
    state, note = core.record_in_ledger(str(tmp_path / "file/ledger"), sid, "disk", 0)
    assert state == decision.LEDGER_UNWRITABLE and note.startswith("cannot write ledger")


def a_decision(credit: bytes | None, reason: str = "") -> decision.Decision:
    return decision.Decision(seed_id=None, key_id=None, verified=False, credit=credit,
                             bits=8 * len(credit) if credit else 0, mix=os.urandom(32),
                             reason=reason)


@needs_root
def test_credit_or_mix_carries_out_a_decision_on_the_real_pool() -> None:
    digest = os.urandom(core.LOCAL_DIGEST_LEN)
    assert core.credit_or_mix(a_decision(os.urandom(32)), digest, "/dev/urandom") == (
        256, "", [])
    assert core.credit_or_mix(a_decision(None, "expired"), digest, "/dev/urandom") == (
        0, "expired", [])


def test_credit_or_mix_without_the_device_says_so(tmp_path: Path) -> None:
    missing = str(tmp_path / "urandom")
    note = f"could not mix into {missing}: No such file or directory"
    digest = os.urandom(core.LOCAL_DIGEST_LEN)
    assert core.credit_or_mix(a_decision(os.urandom(32)), digest, missing) == (
        0, f"no {missing}", [note])
    assert core.credit_or_mix(a_decision(None, "expired"), digest, missing) == (
        0, "expired", [note])


@needs_root
def test_the_seed_id_is_in_the_ledger_before_the_kernel_is_given_the_seed(guest: Guest) -> None:
    new = SeedFactory(guest.private_key).new()
    with recording() as seen:
        out = credit_seed(new.text, "user-data", stage=core.STAGE_CLOUD_INIT, paths=guest.paths)
    assert out.credited
    events = [(e, a[0]) for e, a in seen if e in ("open", "fcntl.ioctl")]
    first_device_use = events.index(("open", guest.paths.urandom))
    ledger_writes = [i for i, (e, a) in enumerate(events)
                     if e == "open" and a == guest.paths.ledger]
    # the ledger was opened (and, by Ledger.consume, written and fsynced) before it
    assert ledger_writes and max(ledger_writes) < first_device_use
    assert guest.ledger().startswith(new.seed_id + " ")
