"""Verify a seed envelope and credit it to the kernel: the one core both entry points call.

`credit_seed()` is called by the cloud-init module (`cc_seedtool`) and by the
early-boot unit (`seedtool-early`). Given the envelope text (or nothing), where it
came from, the image's policy and its paths, it:

1. parses the envelope and checks its signature against the trusted keys and its
   validity period (with the policy's clock skew), using `seedtool.shared.envelope`;
2. records the seed id in the ledger, durably, before anything is credited, and
   refuses a seed id the ledger already holds;
3. mixes in local unpredictable inputs (instance id, high-resolution clocks, the
   boot id, a few bytes of /dev/hwrng if it has them ready);
4. credits `8 x seed bytes` bits, at most `envelope.MAX_CREDIT_BITS` (512), with
   RNDADDENTROPY only when all of that passed, and otherwise writes everything to
   /dev/urandom uncredited and records why;
5. records the CRNG state before and after, refreshes systemd's random-seed file
   from the now-seeded pool, writes /var/lib/seedtool/status.json and prints one
   line to /dev/kmsg.

It never raises for an environmental problem (not root, read-only /var, no
/dev/kmsg): each is recorded in the outcome. What the entry point must report as an
error (an invalid policy: the image is misbuilt; an uncredited seed under
fail_closed) is `Outcome.failure()`, raised by `Outcome.raise_if_fail_closed()`.
It never logs, prints or stores seed bytes: the status, the kmsg line, the ledger
and every message hold ids only.
Standard library only; signatures are checked by `seedtool.shared.ed25519` (pure Python).
"""

from __future__ import annotations

import errno
import json
import os
import struct
import time

from ..shared import envelope
from ..shared.envelope import (
    BadSignature,
    EnvelopeExpired,
    EnvelopeNotYetValid,
    MalformedEnvelope,
    UntrustedKey,
)
from ..shared.errors import EnvelopeError, SeedtoolError, SigningKeyError
from ..shared.fileio import atomic_write
from ..shared.mix import mix
from ..shared.pubkeys import PublicKey, load_public_keys, trusted_pairs
from ..shared.record import Record
from . import kernel
from .ledger import Ledger, LedgerError, LedgerInvalid
from .platform_seed import DatasourceSeed
from .platform_seed import decode as decode_platform_seed
from .policy import DEFAULT_POLICY_PATH, Policy, PolicyError, load_policy

# This module runs at boot, before the seed is credited, so it imports little: no
# dataclasses, typing or pathlib, and nothing that reads /dev/urandom (no tempfile:
# seedtool.shared.fileio names its own temporary files). docs/guest.md "Boot time".
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATUS_VERSION = 1
STAGE_CLOUD_INIT = "cloud-init"
STAGE_EARLY = "early-boot"
#: bytes of the local-inputs digest appended to what goes into the pool
LOCAL_DIGEST_LEN = 64
HWRNG_BYTES = 32


class SeedNotCredited(EnvelopeError):
    """The policy says fail closed and the seed was not credited."""


class PolicyInvalid(SeedNotCredited):
    """The image's seed policy is invalid: the image is misbuilt and nothing was credited."""


class Paths(Record):
    """Every file the guest touches (as strings); `under(root)` puts them below a test root."""

    __slots__ = ("root", "policy", "ledger", "status", "seed_file", "random_seed", "kmsg",
                 "urandom", "hwrng", "boot_id")
    FIELDS = __slots__
    root: str
    policy: str
    ledger: str
    status: str
    seed_file: str
    random_seed: str
    kmsg: str
    urandom: str
    hwrng: str
    boot_id: str

    @classmethod
    def under(cls, root: str | os.PathLike[str] = "/",
              devices: str | os.PathLike[str] | None = None) -> Paths:
        """Paths below `root`; device and /proc files below `devices` (default `root`)."""
        r = os.fspath(root)
        d = os.fspath(devices) if devices is not None else r
        j = os.path.join
        return cls(
            root=r,
            policy=j(r, DEFAULT_POLICY_PATH.lstrip("/")),
            ledger=j(r, "var/lib/seedtool/ledger"),
            status=j(r, "var/lib/seedtool/status.json"),
            seed_file=j(r, "var/lib/seedtool/seed"),
            random_seed=j(r, "var/lib/systemd/random-seed"),
            kmsg=j(d, "dev/kmsg"),
            urandom=j(d, "dev/urandom"),
            hwrng=j(d, "dev/hwrng"),
            boot_id=j(d, "proc/sys/kernel/random/boot_id"),
        )

    def in_root(self, absolute: str) -> str:
        return os.path.join(self.root, absolute.lstrip("/"))


class Outcome:
    """What happened to one seed. Holds ids and counts only, never seed bytes."""

    def __init__(self, origin: str, stage: str, **facts: Any) -> None:
        self.origin = origin
        self.stage = stage
        self.seed_id: str | None = None
        self.key_id: str | None = None
        #: signature, validity period and ledger all passed (the kernel may still refuse)
        self.verified = False
        self.credited_bits = 0
        self.crng_before = "unknown"
        self.crng_after = "unknown"
        self.reason = ""
        self.time = ""
        self.boot_id = ""
        self.local_inputs: list[str] = []
        #: secondary problems (kmsg missing, status unwritable, ...), short sentences
        self.notes: list[str] = []
        self.status_written = False
        self.kmsg_written = False
        self.fail_closed = False
        #: why the image's policy file is invalid ('' when it is valid or absent); then
        #: nothing is credited and `failure()` is an error whatever fail_closed says
        self.policy_error = ""
        #: seconds spent in each phase, for the boot-time log line (docs/guest.md)
        self.timings: dict[str, float] = {}
        for name, value in facts.items():
            if name not in self.__dict__:
                raise TypeError(f"Outcome() got an unexpected keyword argument {name!r}")
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"Outcome({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"

    @property
    def credited(self) -> bool:
        return self.credited_bits > 0

    def line(self) -> str:
        """The one kernel-log line for this outcome."""
        crng = f"crng {self.crng_before}->{self.crng_after}"
        if self.credited:
            return (
                f"seedtool: credited {self.credited_bits} bits from seed {self.seed_id or '-'} "
                f"signed by key {self.key_id or '-'} ({self.origin}, {crng})"
            )
        return (
            f"seedtool: mixed seed {self.seed_id or '-'} uncredited ({self.origin}): "
            f"{self.reason}"
        )

    def status(self) -> dict[str, Any]:
        return {
            "version": STATUS_VERSION,
            "origin": self.origin,
            "stage": self.stage,
            "seed_id": self.seed_id,
            "key_id": self.key_id,
            "verified": self.verified,
            "credited_bits": self.credited_bits,
            "crng_before": self.crng_before,
            "crng_after": self.crng_after,
            "reason": self.reason or None,
            "time": self.time,
            "boot_id": self.boot_id,
            "local_inputs": list(self.local_inputs),
            "notes": list(self.notes),
        }

    def failure(self) -> str:
        """The error the entry point must report (cloud-init error, failed unit), or ''."""
        if self.policy_error:
            return _misbuilt(self.policy_error)
        if self.fail_closed and not self.credited:
            return (
                f"the seed was not credited ({self.reason}) and the image's seed policy sets "
                "fail_closed; deliver a valid seed signed by a trusted key, or set fail_closed "
                f"to false in {DEFAULT_POLICY_PATH}"
            )
        return ""

    def raise_if_fail_closed(self) -> None:
        """Raise PolicyInvalid or SeedNotCredited when `failure()` says so."""
        message = self.failure()
        if message:
            raise (PolicyInvalid if self.policy_error else SeedNotCredited)(message)


def _misbuilt(policy_error: str) -> str:
    return (
        f"{policy_error}, so the image is misbuilt and no seed was credited; "
        f"rebuild the image with `seedtool bake` or fix the JSON in {DEFAULT_POLICY_PATH}"
    )


def policy_failure(paths: Paths) -> str:
    """The error the image's policy file is when it is invalid, '' when valid or absent."""
    try:
        load_policy(paths.policy)
    except PolicyError as e:
        return _misbuilt(_short(e, 400))
    return ""


def _short(err: BaseException, limit: int = 120) -> str:
    """The first clause of an error message: stable, short, never data."""
    text = str(err).split(";")[0].strip()
    return text[:limit]


def _load_trusted(paths: Paths, policy: Policy, notes: list[str]) -> list[PublicKey]:
    """Every readable trusted key; unreadable files are skipped and noted."""
    where = paths.in_root(policy.trusted_keys)
    if os.path.isdir(where):
        files = [os.path.join(where, n) for n in sorted(os.listdir(where)) if n.endswith(".pub")]
    else:
        files = [where] if os.path.exists(where) else []
    keys: list[PublicKey] = []
    for f in files:
        try:
            keys.extend(load_public_keys([f]))
        except SigningKeyError:
            notes.append(f"ignored invalid trusted key file {os.path.basename(f)}")
    return keys


def _verify(
    env: envelope.UnverifiedEnvelope, paths: Paths, policy: Policy, now: float,
    notes: list[str],
) -> tuple[envelope.VerifiedEnvelope | None, str]:
    keys = _load_trusted(paths, policy, notes)
    if not keys:
        return None, "no trusted keys installed"
    try:
        return envelope.verify(env, trusted_pairs(keys), now=now, skew=policy.clock_skew), ""
    except UntrustedKey:
        return None, f"signed by untrusted key {env.key_id_hex}"
    except BadSignature:
        return None, "signature does not verify"
    except EnvelopeExpired:
        return None, "expired"
    except EnvelopeNotYetValid:
        return None, "not yet valid"
    except EnvelopeError as e:
        return None, f"invalid: {_short(e)}"


def _read_small(path: str, limit: int = 256) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def local_inputs(instance_id: str, paths: Paths) -> list[tuple[str, bytes]]:
    """Unpredictable-to-outsiders local inputs, labelled. None is credited."""
    clocks = struct.pack(
        ">QQQQ",
        time.time_ns(),
        time.monotonic_ns(),
        time.perf_counter_ns(),
        time.clock_gettime_ns(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)),
    )
    inputs = [("clocks", clocks), ("pid", struct.pack(">I", os.getpid()))]
    if instance_id:
        inputs.append(("instance-id", instance_id.encode("utf-8", "replace")[:1024]))
    boot_id = _read_small(paths.boot_id)
    if boot_id:
        inputs.append(("boot-id", boot_id))
    hw = kernel.read_nonblocking(paths.hwrng, HWRNG_BYTES)
    if hw:
        inputs.append(("hwrng", hw))
    return inputs


def refresh_random_seed(path: str) -> str:
    """Replace systemd's saved seed with fresh pool output; '' or a short note.

    Only once the CRNG is ready (else the file would carry weak output into the
    next boot). Keeps the file's size (32 bytes on 5.18+, larger before), 0600.
    """
    if not os.path.isdir(os.path.dirname(path)):
        return ""  # no systemd-random-seed here: nothing to refresh
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0
    size = size if 32 <= size <= 4096 else 32
    try:
        fresh = os.getrandom(size, os.GRND_NONBLOCK)
    except (OSError, AttributeError):
        return "random-seed not refreshed: the CRNG is not ready"
    try:
        # not fsynced: systemd-random-seed rewrites it at shutdown, and a crash before
        # write-back leaves the old file or none, never a partial one
        atomic_write(path, fresh, mode=0o600, durable=False)
    except SeedtoolError:
        return f"random-seed not refreshed: cannot write {os.path.basename(path)}"
    return ""


def _keeps_earlier(path: str, status: dict[str, Any]) -> bool:
    """True when `status` offered no seed and `path` already tells of a seed this boot.

    The early unit and cloud-init both run in one boot; a disk seed credited early
    must not be hidden by cloud-init's "no seed offered" a minute later.
    """
    if status.get("seed_id") or status.get("credited_bits") or status.get("reason") not in (
        "no seed offered",
    ):
        return False
    try:
        with open(path, "rb") as f:
            old = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        return False
    return (
        isinstance(old, dict)
        and bool(status.get("boot_id"))
        and old.get("boot_id") == status.get("boot_id")
        and bool(old.get("seed_id") or old.get("credited_bits"))
    )


def write_status(path: str, status: dict[str, Any]) -> None:
    """Write status.json (0644) and status-<stage>.json atomically; raise OSError/SeedtoolError.

    status.json is the latest outcome, except that an outcome without any seed does
    not replace one with a seed from the same boot; the per-stage file is always written.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    text = (json.dumps(status, indent=1, sort_keys=True) + "\n").encode()
    # not fsynced: a report, not a guarantee (the ledger is what must be durable)
    atomic_write(os.path.join(directory, f"status-{status['stage']}.json"), text, mode=0o644,
                 durable=False)
    if not _keeps_earlier(path, status):
        atomic_write(path, text, mode=0o644, durable=False)


def _now_text(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def credit_seed(
    data: bytes | str | None,
    origin: str,
    *,
    stage: str,
    instance_id: str = "",
    paths: Paths | None = None,
    policy: Policy | None = None,
    platform_seed: bytes | str | None = None,
    platform: str = "",
    now: float | None = None,
    uncreditable: str = "",
) -> Outcome:
    """Verify `data` (an envelope, raw or base64) and credit or mix it; see the module doc.

    `platform_seed` is a datasource's own unsigned `random_seed` (from `platform`),
    as a `platform_seed.DatasourceSeed` or as the datasource holds it (decoded here):
    always mixed, credited for at most what its bytes can carry
    (`DatasourceSeed.creditable_bits`) only when no envelope was offered and the
    policy trusts that platform. `now` overrides the clock for the validity check (tests).
    A non-empty `uncreditable` is the reason the envelope may not be credited
    whatever its signature (e.g. it arrived in a form seedtool does not write): it
    is mixed, never verified for credit nor recorded in the ledger.
    """
    paths = paths or Paths.under("/")
    wall = time.time() if now is None else now
    out = Outcome(origin=origin, stage=stage, time=_now_text(wall))
    clock = [time.monotonic()]

    def mark(phase: str) -> None:
        t = time.monotonic()
        out.timings[phase] = round(t - clock[0], 4)
        clock[0] = t

    out.crng_before = kernel.crng_state()
    policy_ok = True
    if policy is None:
        try:
            policy = load_policy(paths.policy)
        except PolicyError as e:
            # Policy() only to go on mixing: nothing is credited, and the entry points
            # report `failure()` as an error (never as if fail_closed were false)
            policy, policy_ok = Policy(), False
            out.policy_error = _short(e, 400)
            out.notes.append(out.policy_error)
    out.fail_closed = policy.fail_closed or not policy_ok
    mark("policy")

    to_credit: tuple[bytes, int] | None = None
    to_mix: list[bytes] = []
    if not policy_ok:
        out.reason = "policy invalid"
    if data is not None:
        try:
            env = envelope.parse(data)
        except MalformedEnvelope as e:
            out.reason = out.reason or f"malformed: {_short(e)}"
        else:
            out.seed_id, out.key_id = env.seed_id_hex, env.key_id_hex
            to_mix.append(env.uncredited_seed)
            if uncreditable and policy_ok:
                out.reason = uncreditable
            elif policy_ok:
                verified, out.reason = _verify(env, paths, policy, wall, out.notes)
                mark("signature")
                if verified is not None:
                    # the ledger is the last check: `verified` means signature, time
                    # and never seen before all passed, i.e. the seed may be credited
                    try:
                        fresh = Ledger(paths.ledger).consume(env.seed_id_hex, origin, wall)
                    except LedgerError as e:
                        invalid = isinstance(e, LedgerInvalid)
                        out.reason = "ledger invalid" if invalid else "ledger not writable"
                        out.notes.append(_short(e, 400))
                    else:
                        if fresh:
                            out.verified = True
                            to_credit = (verified.seed, verified.creditable_bits)
                        else:
                            out.reason = "already consumed"
    # decided from what the guest observes: the platform's name and the bytes
    pseed = (platform_seed if isinstance(platform_seed, DatasourceSeed)
             and platform_seed.platform == platform.lower()
             else decode_platform_seed(platform, platform_seed))
    if pseed:
        to_mix.append(bytes(pseed))
        if data is None and policy_ok:
            if policy.trusts_platform(platform):
                if pseed.creditable_bits:
                    # the whole decoded seed goes in; only what its carrying bytes can
                    # hold is credited (an OEM0 header is mixed, never counted)
                    to_credit = (bytes(pseed), pseed.creditable_bits)
                else:
                    out.reason = (f"platform {platform.lower() or '-'} seed not creditable: "
                                  f"{pseed.reason}")
            elif not policy.credit_datasource:
                out.reason = "datasource seeds are not credited by policy"
            else:
                out.reason = f"platform {platform or '-'} not trusted"
    if data is None and not pseed and not out.reason:
        out.reason = "no seed offered"
    if to_credit is not None and data is not None and pseed:
        # the envelope is credited; the datasource seed still goes in, uncounted
        to_credit = (to_credit[0] + bytes(pseed), to_credit[1])
    mark("ledger")

    out.boot_id = _read_small(paths.boot_id, 64).decode("ascii", "replace").strip()
    local = local_inputs(instance_id, paths)
    out.local_inputs = [f"{name}:{len(value)}" for name, value in local]
    digest = mix(local, LOCAL_DIGEST_LEN, b"seedtool guest local inputs")
    urandom = paths.urandom
    if to_credit is not None:
        seed, bits = to_credit
        try:
            kernel.add_entropy(urandom, seed + digest, bits)
            out.credited_bits = bits
            out.reason = ""
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EACCES):
                out.reason = "not permitted"
            elif e.errno == errno.ENOENT:
                out.reason = f"no {urandom}"
            else:
                out.reason = f"credit failed: {e.strerror or 'error'}"
    if not out.credited:
        try:
            kernel.write_uncredited(urandom, b"".join(to_mix) + digest)
        except OSError as e:
            out.notes.append(f"could not mix into {urandom}: {e.strerror}")
    kernel.reseed(urandom)
    out.crng_after = kernel.crng_state()
    mark("credit")
    # the kernel log line right away, so its time stamp is the credit's; before the
    # status file, so a failure to write it is recorded there
    try:
        kernel.kmsg(paths.kmsg, out.line())
        out.kmsg_written = True
    except OSError as e:
        out.notes.append(f"kmsg unavailable: {e.strerror}")
    if out.crng_after == "ready":
        note = refresh_random_seed(paths.random_seed)
        if note:
            out.notes.append(note)
    mark("random-seed")
    try:
        write_status(paths.status, out.status())
        out.status_written = True
    except SeedtoolError as e:
        out.notes.append(f"status not written: {_short(e, 400)}")
    except OSError as e:
        out.notes.append(f"status not written: {e.strerror}")
    mark("status")
    return out
