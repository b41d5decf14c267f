"""Verify a seed envelope and credit it to the kernel: the one core both entry points call.

`credit_seed()` is called by the cloud-init module (`cc_seedtool`) and by the
early-boot unit (`seedtool-early`). Given the envelope text (or nothing), where it
came from, the image's policy and its paths, it:

1. parses the envelope and checks its signature against the trusted keys and its
   validity period (with the policy's clock skew), using `seedtool.shared.envelope`;
2. records the seed id in the ledger, durably, before anything is credited, and
   refuses a seed id the ledger already holds;
3. mixes in local unpredictable inputs (instance id, high-resolution clocks, the
   boot id);
4. credits `8 x seed bytes` bits, at most `envelope.MAX_CREDIT_BITS` (512), with
   RNDADDENTROPY only when all of that passed, and otherwise writes everything to
   /dev/urandom uncredited and records why;
5. records the CRNG state before and after, refreshes systemd's random-seed file
   from the now-seeded pool, writes /var/lib/seedtool/status.json and prints one
   line to /dev/kmsg.

What to credit, mix and record is decided by `decision.decide()`, which does no
I/O; this module gathers its inputs (policy file, trusted keys, the ledger's durable
record) and carries it out (`record_in_ledger`, `credit_or_mix`, `announce`,
`save_status`), in that order, so a seed id is on disk before its seed reaches the
kernel.

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

from ..shared.errors import EnvelopeError, SeedtoolError, SigningKeyError
from ..shared.fileio import atomic_write
from ..shared.mix import mix
from ..shared.pubkeys import PublicKey, key_files, load_public_keys
from ..shared.record import Record
from . import decision, kernel
from .decision import Decision, short
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

    from ..shared.envelope import VerifiedEnvelope
    from .netseed import NetOutcome

STATUS_VERSION = 1
STAGE_CLOUD_INIT = "cloud-init"
STAGE_EARLY = "early-boot"
#: bytes of the local-inputs digest appended to what goes into the pool
LOCAL_DIGEST_LEN = 64
#: the reason when nothing was offered but seed servers are configured and none of
#: them gave a creditable envelope (each server's own reason is in `servers`)
NO_SERVER_SEED = "no seed server gave a creditable envelope"


class SeedNotCredited(EnvelopeError):
    """The policy says fail closed and the seed was not credited."""


class PolicyInvalid(SeedNotCredited):
    """The image's seed policy is invalid: the image is misbuilt and nothing was credited."""


class Paths(Record):
    """Every file the guest touches (as strings); `under(root)` puts them below a test root."""

    __slots__ = ("root", "policy", "ledger", "status", "seed_file", "random_seed", "kmsg",
                 "urandom", "boot_id", "proc_random")
    FIELDS = __slots__
    root: str
    policy: str
    ledger: str
    status: str
    seed_file: str
    random_seed: str
    kmsg: str
    urandom: str
    boot_id: str
    proc_random: str

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
            boot_id=j(d, "proc/sys/kernel/random/boot_id"),
            proc_random=j(d, "proc/sys/kernel/random"),
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
        #: the kernel's pool size (4096 bits: the driver before Linux 5.18's rewrite; 256:
        #: the rewrite, also in stable kernels such as Debian 11's 5.10) and its
        #: entropy_avail around the credit; None where /proc does not show them
        self.pool_bits: int | None = None
        self.entropy_before: int | None = None
        self.entropy_after: int | None = None
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
        #: one entry per configured seed server (`server_status`), None when the image
        #: has none: then the status and the kmsg line are exactly as without servers
        self.servers: list[dict[str, Any]] | None = None
        #: the ids of the seed servers' envelopes in the credit, and their keys
        self.network_seeds: list[str] = []
        self.network_keys: list[str] = []
        #: what `origin` offered is in the credit too (an envelope or a platform seed)
        self.origin_credited = False
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
        if self.servers is not None:
            return self._network_line(crng)
        if self.credited:
            return (
                f"seedtool: credited {self.credited_bits} bits from seed {self.seed_id or '-'} "
                f"signed by key {self.key_id or '-'} ({self.origin}, {crng})"
            )
        return (
            f"seedtool: mixed seed {self.seed_id or '-'} uncredited ({self.origin}): "
            f"{self.reason}"
        )

    def _network_line(self, crng: str) -> str:
        servers = ", ".join(f"{s['url']} {s['result']}" for s in self.servers or ()) or "none"
        if self.credited and self.network_seeds:
            ids = ([self.seed_id] if self.origin_credited and self.seed_id else [])
            keys = ([self.key_id] if self.origin_credited and self.key_id else [])
            ids += self.network_seeds
            keys += [k for k in self.network_keys if k not in keys]
            origins = f"{self.origin} + seed-server" if self.origin_credited else "seed-server"
            return (f"seedtool: credited {self.credited_bits} bits from seeds {', '.join(ids)} "
                    f"signed by keys {', '.join(keys) or '-'} ({origins}, {crng}); "
                    f"servers: {servers}")
        if self.credited:
            return (f"seedtool: credited {self.credited_bits} bits from seed "
                    f"{self.seed_id or '-'} signed by key {self.key_id or '-'} "
                    f"({self.origin}, {crng}); servers: {servers}")
        return (f"seedtool: mixed seed {self.seed_id or '-'} uncredited ({self.origin}): "
                f"{self.reason}; servers: {servers}")

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "version": STATUS_VERSION,
            "origin": self.origin,
            "stage": self.stage,
            "seed_id": self.seed_id,
            "key_id": self.key_id,
            "verified": self.verified,
            "credited_bits": self.credited_bits,
            "crng_before": self.crng_before,
            "crng_after": self.crng_after,
            "pool_bits": self.pool_bits,
            "entropy_avail_before": self.entropy_before,
            "entropy_avail_after": self.entropy_after,
            "reason": self.reason or None,
            "time": self.time,
            "boot_id": self.boot_id,
            "local_inputs": list(self.local_inputs),
            "notes": list(self.notes),
        }
        if self.servers is not None:
            status["servers"] = [dict(s) for s in self.servers]
        return status

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
        return _misbuilt(short(e, 400))
    return ""


def _load_trusted(paths: Paths, policy: Policy, notes: list[str]) -> list[PublicKey]:
    """Every readable trusted key; unreadable files are skipped and noted."""
    where = paths.in_root(policy.trusted_keys)
    keys: list[PublicKey] = []
    for f in key_files(where) if os.path.exists(where) else []:
        try:
            keys.extend(load_public_keys([f]))
        except SigningKeyError:
            notes.append(f"ignored invalid trusted key file {os.path.basename(f)}")
    return keys


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
    # No /dev/hwrng: the kernel's hwrng thread already feeds it into the pool
    # (drivers/char/hw_random/core.c hwrng_fillfn), and a read can block even with
    # O_NONBLOCK: rng_dev_read takes reading_mutex first, which that thread holds
    # while it waits on the device. A virtio-rng whose host backend lost a request
    # (rng-egd after its daemon restarted) held a boot in this read for good.
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


def read_policy(paths: Paths, given: Policy | None = None) -> tuple[Policy, str]:
    """The policy to apply (`given`, else the image's file) and why that file is invalid.

    An invalid file gives Policy() only to go on mixing: nothing is credited, and the
    entry points report `failure()` as an error (never as if fail_closed were false).
    """
    if given is not None:
        return given, ""
    try:
        return load_policy(paths.policy), ""
    except PolicyError as e:
        return Policy(), short(e, 400)


def record_in_ledger(path: str, seed_id_hex: str, origin: str, now: float) -> tuple[str, str]:
    """Record a verified seed id in the ledger, fsynced; a `decision.LEDGER_*` answer and a note.

    Called before anything is credited: only LEDGER_FRESH lets `decide` credit the seed.
    """
    try:
        fresh = Ledger(path).consume(seed_id_hex, origin, now)
    except LedgerError as e:
        state = decision.LEDGER_INVALID if isinstance(e, LedgerInvalid) else (
            decision.LEDGER_UNWRITABLE)
        return state, short(e, 400)
    return (decision.LEDGER_FRESH if fresh else decision.LEDGER_REPLAY), ""


def credit_or_mix(d: Decision, digest: bytes, urandom: str) -> tuple[int, str, list[str]]:
    """Carry out `d` on the kernel's pool; the bits credited, the reason to record, notes.

    RNDADDENTROPY of `d.credit` followed by `digest` for `d.bits`; when there is
    nothing to credit or the kernel refuses, a plain write of `d.mix` and `digest`
    (uncredited). Then a CRNG reseed, whatever happened.
    """
    credited, reason, notes = 0, d.reason, []
    if d.credit is not None:
        try:
            kernel.add_entropy(urandom, d.credit + digest, d.bits)
            credited, reason = d.bits, ""
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EACCES):
                reason = "not permitted"
            elif e.errno == errno.ENOENT:
                reason = f"no {urandom}"
            else:
                reason = f"credit failed: {e.strerror or 'error'}"
    if not credited:
        try:
            kernel.write_uncredited(urandom, d.mix + digest)
        except OSError as e:
            notes.append(f"could not mix into {urandom}: {e.strerror}")
    kernel.reseed(urandom)
    return credited, reason, notes


def announce(out: Outcome, paths: Paths) -> None:
    """The kernel-log line, then (when the CRNG is ready) a fresh systemd random-seed."""
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


def save_status(out: Outcome, paths: Paths) -> None:
    """Write the outcome's status files; a failure is a note, never an error."""
    try:
        write_status(paths.status, out.status())
        out.status_written = True
    except SeedtoolError as e:
        out.notes.append(f"status not written: {short(e, 400)}")
    except OSError as e:
        out.notes.append(f"status not written: {e.strerror}")


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
    network: NetOutcome | None = None,
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

    `network` is what the image's seed servers answered (`netseed.fetch_for_image`),
    None when it has none. Each envelope is checked (trusted key, validity, binding to
    the instance and nonce asked) and its id recorded in the ledger before anything is
    credited; the fresh ones join this call's one credit (`decision.add_network`), and
    every reply with its receive times is mixed in (`netseed.mix_replies`).
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
    out.pool_bits = kernel.pool_bits(paths.proc_random)
    out.entropy_before = kernel.entropy_avail(paths.proc_random)
    policy, out.policy_error = read_policy(paths, policy)
    if out.policy_error:
        out.notes.append(out.policy_error)
    out.fail_closed = policy.fail_closed or bool(out.policy_error)
    mark("policy")

    env, malformed = decision.parse(data)
    verified, refused, ledger = None, "", ""
    keys: list[PublicKey] | None = None
    # an envelope that may not be credited anyway is never checked nor recorded
    if env is not None and not out.policy_error and not uncreditable:
        keys = _load_trusted(paths, policy, out.notes)
        verified, refused = decision.check(env, keys, policy, wall)
        mark("signature")
        if verified is not None:
            ledger, note = record_in_ledger(paths.ledger, verified.seed_id_hex, origin, wall)
            if note:
                out.notes.append(note)
    # decided from what the guest observes: the platform's name and the bytes
    pseed = (platform_seed if isinstance(platform_seed, DatasourceSeed)
             and platform_seed.platform == platform.lower()
             else decode_platform_seed(platform, platform_seed))
    d = decision.decide(
        offered=data is not None, policy=policy, env=env, malformed=malformed,
        policy_error=out.policy_error, uncreditable=uncreditable, verified=verified,
        refused=refused, ledger=ledger, platform_seed=pseed, platform=platform,
    )
    out.seed_id, out.key_id, out.verified, out.reason = d.seed_id, d.key_id, d.verified, d.reason
    mark("ledger")
    net_inputs: list[tuple[str, bytes]] = []
    if network is not None:
        if keys is None and not out.policy_error:
            keys = _load_trusted(paths, policy, out.notes)
        d, fresh = _network(network, keys, policy, wall, paths, out, d, offered=data is not None)
        replies = _mix_replies(network)
        if replies:
            net_inputs.append(("seed-servers", replies))
        mark("seed-servers")

    out.boot_id = _read_small(paths.boot_id, 64).decode("ascii", "replace").strip()
    local = local_inputs(instance_id, paths) + net_inputs
    out.local_inputs = [f"{name}:{len(value)}" for name, value in local]
    digest = mix(local, LOCAL_DIGEST_LEN, b"seedtool guest local inputs")
    out.credited_bits, out.reason, notes = credit_or_mix(d, digest, paths.urandom)
    out.notes += notes
    if network is not None:
        _settle_servers(out, fresh)
    out.crng_after = kernel.crng_state()
    out.entropy_after = kernel.entropy_avail(paths.proc_random)
    mark("credit")
    announce(out, paths)
    mark("random-seed")
    save_status(out, paths)
    mark("status")
    return out


def _mix_replies(network: NetOutcome) -> bytes:
    from .netseed import mix_replies

    return mix_replies(network)


def _network(network: NetOutcome, keys: list[PublicKey] | None, policy: Policy, wall: float,
             paths: Paths, out: Outcome, d: Decision, *, offered: bool
             ) -> tuple[Decision, list[tuple[int, VerifiedEnvelope]]]:
    """Check the servers' envelopes, record the verified ones in the ledger (fsynced,
    before any credit), and add the fresh ones to `d`. Sets `out.servers`."""
    from .netseed import check_envelopes

    verdicts: dict[int, tuple[VerifiedEnvelope | None, str]] = {}
    if keys is not None:  # None: the policy is invalid, nothing is credited
        for r, v, why in check_envelopes(network, keys, policy, wall):
            verdicts[id(r)] = (v, why)
    fresh: list[tuple[int, VerifiedEnvelope]] = []
    out.servers = []
    for i, r in enumerate(network.results):
        result = r.reason
        if r.ok:
            v, why = verdicts.get(id(r), (None, "policy invalid"))
            result = why or result
            if v is not None:
                state, note = record_in_ledger(paths.ledger, v.seed_id_hex,
                                               f"seed-server {r.server}", wall)
                if note:
                    out.notes.append(note)
                if state == decision.LEDGER_FRESH:
                    fresh.append((i, v))
                else:
                    result = state
        entry: dict[str, Any] = {"url": r.server, "result": result}
        if r.detail:
            entry["detail"] = r.detail
        entry["seed_id"] = r.seed_id
        entry["credited"] = False
        out.servers.append(entry)
    out.origin_credited = d.credit is not None
    if not fresh:
        if not offered and d.reason == "no seed offered":
            d = d.replace(reason=NO_SERVER_SEED)
        return d, fresh
    if d.reason and offered:
        out.notes.append(f"{out.origin} seed not credited: {d.reason}")
    return decision.add_network(d, [v for _, v in fresh]), fresh


def _settle_servers(out: Outcome, fresh: list[tuple[int, VerifiedEnvelope]]) -> None:
    """Mark the servers whose seeds the kernel took (all or none: it was one credit)."""
    if not out.credited or not fresh or out.servers is None:
        return
    for i, _ in fresh:
        out.servers[i]["credited"] = True
    out.network_seeds = [v.seed_id_hex for _, v in fresh]
    out.network_keys = list(dict.fromkeys(v.key_id_hex for _, v in fresh))
