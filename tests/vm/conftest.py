"""Shared boots for the end-to-end tests, on Debian 11 to unstable (devtools/images.py).

Booting is the expensive part (about a minute per boot under TCG), so every boot a
test module needs is declared in its `BOOTS` tuple; the first test of a release
starts all boots the selected modules need, at most two at a time (CI has two cores),
and tests then assert on the finished boots. A boot that several assertions share
is booted once. Not every release boots every boot: `BOOTS_OF` says which, and a test
asking for a boot its release does not make is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.images import RELEASES, GuestImage, guest_image
from devtools.vm import PLAIN_USER_DATA, STOP, Boot, Launch, boot
from seedtool.deliver.userdata import add_seed
from seedtool.generate import NewSeed, SeedFactory
from seedtool.keys import generate_keypair, load_private_key
from seedtool.launch.qemu import kill_all

PARALLEL = int(os.environ.get("SEEDTOOL_VM_PARALLEL", "2"))


@dataclass
class Seeds:
    """The seeds of one release's boots (kept in memory only; never printed)."""

    good_a: NewSeed
    good_b: NewSeed
    unsigned: str
    wrong_key: NewSeed
    expired: NewSeed
    disk: NewSeed
    other_key_id: str


@dataclass
class Campaign:
    release: str
    image: GuestImage
    seeds: Seeds
    workroot: Path
    pool: ThreadPoolExecutor
    results: dict[str, Future[Boot]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    timings: dict[str, Any] = field(default_factory=dict)

    def wait_all(self) -> None:
        """Wait until every boot started so far has finished (or failed)."""
        for fut in list(self.results.values()):
            fut.exception()

    def get(self, name: str) -> Boot:
        allowed = boots_of(self.release)
        if allowed is not None and name not in allowed:
            pytest.skip(f"{self.release} does not boot {name!r} (tests/vm/conftest.py "
                        "BOOTS_OF)")
        with self.lock:
            if name not in self.results:
                self._start([name])
        return self.results[name].result()

    def _start(self, names: list[str]) -> None:
        """Submit the chains that produce `names` (callers hold the lock)."""
        allowed = boots_of(self.release)
        if allowed is not None:
            names = [n for n in names if n in allowed]
        for chain in CHAINS:
            if any(n in names for n in chain) and chain[0] not in self.results:
                futures: list[Future[Boot]] = [Future() for _ in chain]
                for n, f in zip(chain, futures):
                    self.results[n] = f
                self.pool.submit(self._run_chain, chain, futures)

    def _run_chain(self, chain: tuple[str, ...], futures: list[Future[Boot]]) -> None:
        previous: Boot | None = None
        for i, (name, fut) in enumerate(zip(chain, futures)):
            try:
                if STOP.is_set():
                    raise AssertionError(f"{name}: not booted: the session was interrupted")
                previous = boot(self.image, SPECS[name](self, previous), self.workroot)
                fut.set_result(previous)
            except BaseException as e:  # noqa: BLE001 - handed to the test that asks
                for later in futures[i:]:
                    later.set_exception(e)
                return


def _seeded(user_data: bytes | None, text: str) -> bytes:
    return add_seed(user_data, text)


def _unsigned(seed: NewSeed) -> str:
    """The same envelope with its signature zeroed: structurally valid, unsigned."""
    import base64

    from seedtool.shared.envelope import SIGNATURE_LEN, encode_text

    raw = base64.b64decode(seed.text)
    return encode_text(raw[:-SIGNATURE_LEN] + bytes(SIGNATURE_LEN))


SpecFn = Callable[[Campaign, "Boot | None"], Launch]

SPECS: dict[str, SpecFn] = {
    "seeded-a": lambda c, _: Launch("seeded-a", _seeded(PLAIN_USER_DATA, c.seeds.good_a.text),
                                    analyze=True),
    "reboot-a": lambda c, prev: Launch("reboot-a", _seeded(PLAIN_USER_DATA, c.seeds.good_a.text),
                                       reuse=prev),
    # the same envelope again, on the same disk, with a new instance id: cloud-init runs
    # its per-instance modules again and the guest sees the seed a second time
    "replay-a": lambda c, prev: Launch("replay-a", _seeded(PLAIN_USER_DATA, c.seeds.good_a.text),
                                       reuse=prev, instance_id=f"{prev.instance_id}-again"
                                       if prev else None),
    "seeded-b": lambda c, _: Launch("seeded-b", _seeded(PLAIN_USER_DATA, c.seeds.good_b.text)),
    "unsigned": lambda c, _: Launch("unsigned", _seeded(PLAIN_USER_DATA, c.seeds.unsigned)),
    "wrong-key": lambda c, _: Launch("wrong-key",
                                     _seeded(PLAIN_USER_DATA, c.seeds.wrong_key.text)),
    "expired": lambda c, _: Launch("expired", _seeded(PLAIN_USER_DATA, c.seeds.expired.text)),
    # early-boot unit, no RDRAND (-cpu qemu64) and no virtio-rng, with and without a seed
    "disk-seed": lambda c, _: Launch(
        "disk-seed", PLAIN_USER_DATA, cpu="qemu64",
        inject={"/var/lib/seedtool/seed": (c.seeds.disk.text.encode() + b"\n", 0o600)}),
    "no-seed": lambda c, _: Launch("no-seed", PLAIN_USER_DATA, cpu="qemu64"),
}

#: what every release boots; bullseye and sid (added later, and CI's 60 minutes on two
#: cores) boot what can differ by release: the seeded boot with its reboot and replay,
#: the disk seed with and without, and one refusal (expired: the clock's). The other
#: refusals are the shared decision code, run by each release's real cloud-init in
#: tests/guest/test_cloudinit.py.
SUBSET = ("seeded-a", "reboot-a", "replay-a", "disk-seed", "no-seed", "expired")
BOOTS_OF: dict[str, tuple[str, ...] | None] = {
    "bullseye": SUBSET, "bookworm": None, "trixie": None, "sid": SUBSET,
}
#: the launcher's own cleanup (hang, signals) is host code: booted on one release
HOST_SIDE_RELEASE = "bookworm"


def boots_of(release: str) -> tuple[str, ...] | None:
    """The boots `release` makes (None: all of them)."""
    return BOOTS_OF.get(release)


#: boots that must run in order on one disk; the longest first
CHAINS: tuple[tuple[str, ...], ...] = (
    ("seeded-a", "reboot-a", "replay-a"),
    ("disk-seed",),
    ("no-seed",),
    ("unsigned",),
    ("wrong-key",),
    ("expired",),
)


@pytest.fixture(scope="session")
def vm_cache_ready() -> None:
    if os.geteuid() != 0:
        pytest.fail("the VM tests build images with debootstrap and need root")
    for tool in ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "debugfs"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install qemu-system-x86 qemu-utils "
                        "debootstrap e2fsprogs")


@pytest.fixture(scope="session")
def vm_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("vm-keys")
    generate_keypair(d / "trusted.key", d / "trusted.pub", comment="vm tests")
    generate_keypair(d / "other.key", d / "other.pub", comment="not trusted")
    return {"trusted_pub": d / "trusted.pub", "trusted_key_path": d / "trusted.key",
            "trusted": load_private_key(d / "trusted.key"),
            "other": load_private_key(d / "other.key")}


_POOL = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="vm")


def _stop_all() -> None:
    """No new boots, and kill the running ones: QEMU runs in its own session."""
    STOP.set()
    _POOL.shutdown(wait=False, cancel_futures=True)
    kill_all()


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (CI cancelling the job, timeout(1)) takes the same way out as Ctrl-C
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    _stop_all()


def _needed_boots(session: pytest.Session) -> list[str]:
    names: list[str] = []
    for item in session.items:
        for n in getattr(getattr(item, "module", None), "BOOTS", ()):
            if n not in names:
                names.append(n)
    return names


@pytest.fixture(scope="session", params=RELEASES)
def campaign(request: pytest.FixtureRequest, vm_cache_ready: None, vm_keys: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    release: str = request.param
    image = guest_image(release, [vm_keys["trusted_pub"]])
    now = int(time.time())
    with SeedFactory(vm_keys["trusted"]) as good, SeedFactory(vm_keys["other"]) as other, \
            SeedFactory(vm_keys["trusted"], ttl=60) as short:
        a, b = good.new(), good.new()
        seeds = Seeds(
            good_a=a, good_b=b, unsigned=_unsigned(good.new()), wrong_key=other.new(),
            # issued two hours ago, valid for a minute: far outside any clock skew
            expired=short.new(now=now - 7200), disk=good.new(),
            other_key_id=other.key_id.hex(),
        )
    c = Campaign(release, image, seeds, tmp_path_factory.mktemp(f"boots-{release}"), _POOL)
    with c.lock:
        c._start(_needed_boots(request.session))
    yield c
    if STOP.is_set():  # interrupted: the VMs are killed, boots not started never will be
        kill_all()
        return
    # let every boot of this release finish before the next release's start
    for fut in c.results.values():
        fut.exception()
    summary = {name: {"seconds": f.result().seconds} for name, f in c.results.items()
               if f.exception() is None}
    (c.workroot / "boot-times.json").write_text(json.dumps(summary, indent=1))
    print(f"\n[{release}] boot times (s): " +
          ", ".join(f"{k} {v['seconds']}" for k, v in summary.items()))
