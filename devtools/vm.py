"""Booting the test images under QEMU and reading back what happened inside.

Each boot ends by itself: the test image carries a report unit (see images.py) that,
when the kernel command line says `seedtool.test-report`, waits for cloud-init to
finish, writes `cloud-init status --long`, sshd's state, dmesg, a copy of
/run/cloud-init (a tmpfs, gone after power-off) and optionally `cloud-init analyze
show` under /var/tmp/seedtool-test/, then powers the VM off. The host then flattens
the VM's qcow2 overlay to raw and reads files with debugfs (no mount).

The launcher code under test (seedtool.launch.qemu, seedtool.deliver.nocloud) does
the booting; nothing here fakes a guest.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seedtool.deliver.nocloud import new_instance_id, write_iso
from seedtool.launch.qemu import (
    MachineConfig,
    QemuVM,
    RngBackend,
    SeedtoolLine,
    create_overlay,
    crng_init_time,
    free_port,
    seedtool_lines,
)

from .images import GuestImage, dump_tree, file_times, qcow2_to_raw, read_file

#: set when the session is interrupted: no new VM starts (conftest kills the running ones)
STOP = threading.Event()

REPORT_DIR = "/var/tmp/seedtool-test"
#: generous: a TCG boot takes about a minute alone, two at once on two busy cores more
BOOT_TIMEOUT = 900.0

#: user-data with nothing but a harmless cloud-config (the report unit needs nothing)
PLAIN_USER_DATA = b"#cloud-config\nfinal_message: seedtool test boot done\n"


@dataclass
class Boot:
    """What one finished boot left behind."""

    name: str
    release: str
    workdir: Path
    overlay: Path
    console: str
    seconds: float
    instance_id: str
    raw: Path | None = None
    _cache: dict[str, bytes | None] = field(default_factory=dict, repr=False)

    # --- the disk after power-off ---
    def flat(self) -> Path:
        if self.raw is None:
            self.raw = qcow2_to_raw(self.overlay, self.workdir / f"{self.name}.raw")
        return self.raw

    def file(self, path: str) -> bytes | None:
        if path not in self._cache:
            self._cache[path] = read_file(self.flat(), path)
        return self._cache[path]

    def text(self, path: str) -> str:
        data = self.file(path)
        if data is None:
            raise AssertionError(f"{self.name}: {path} does not exist in the guest"
                                 f"{self.context()}")
        return data.decode("utf-8", "replace")

    def tree(self, path: str) -> Path | None:
        return dump_tree(self.flat(), path, self.workdir / "trees" / path.strip("/"))

    def times(self, path: str) -> dict[str, float] | None:
        """The file's ext4 times (crtime, mtime...; wall clock, nanoseconds), or None."""
        return file_times(self.flat(), path)

    def report(self, name: str) -> str:
        return self.text(f"{REPORT_DIR}/{name}")

    # --- what the guest said ---
    def dmesg(self) -> str:
        return self.report("dmesg.txt")

    def seedtool_lines(self) -> list[SeedtoolLine]:
        return seedtool_lines(self.dmesg())

    def status(self) -> dict[str, object]:
        data = self.file("/var/lib/seedtool/status.json")
        if data is None:
            raise AssertionError(f"{self.name}: no /var/lib/seedtool/status.json{self.context()}")
        obj = json.loads(data)
        assert isinstance(obj, dict)
        return obj

    def crng_init_time(self) -> float | None:
        return crng_init_time(self.dmesg())

    def context(self, lines: int = 40) -> str:
        tail = "\n".join(self.console.replace("\r", "").splitlines()[-lines:])
        return f"\n--- last serial lines of {self.name} ({self.release}) ---\n{tail}"


@dataclass
class Launch:
    """How to boot one VM for a test."""

    name: str
    user_data: bytes | None = PLAIN_USER_DATA
    instance_id: str | None = None
    cpu: str = "max"
    virtio_rng: bool = False
    #: the virtio-rng backend (`seedtool.launch.qemu.parse_rng`, e.g. egd:PATH), if any
    rng: RngBackend | None = None
    analyze: bool = False
    #: also save systemd-analyze blame/critical-chain and the journal (for profiling)
    profile: bool = False
    #: boot this existing overlay again (a reboot of the same disk)
    reuse: Boot | None = None
    #: files to put into the base disk copy before booting: guest path -> (data, mode)
    inject: dict[str, tuple[bytes, int]] = field(default_factory=dict)


def boot(image: GuestImage, spec: Launch, workroot: Path, timeout: float = BOOT_TIMEOUT) -> Boot:
    """Boot once and wait for the VM to power itself off; raise with the serial tail."""
    from .images import write_file

    workdir = workroot / spec.name
    workdir.mkdir(parents=True, exist_ok=True)
    if spec.reuse is not None:
        overlay = spec.reuse.overlay  # its state after that boot was saved by flat()
    else:
        base = image.disk
        if spec.inject:
            base = workdir / "base.raw"
            _sparse_copy(image.disk, base)
            for path, (data, mode) in spec.inject.items():
                write_file(base, path, data, mode)
        overlay = workdir / "disk.qcow2"
        overlay.unlink(missing_ok=True)
        create_overlay(base, overlay, "raw")
    iso = None
    iid = spec.instance_id or (spec.reuse.instance_id if spec.reuse else new_instance_id())
    if spec.user_data is not None:
        iso = workdir / "seed.iso"
        write_iso(iso, spec.user_data, instance_id=iid)
    append = f"{image.append} seedtool.test-report"
    if spec.analyze:
        append += " seedtool.test-analyze"
    if spec.profile:
        append += " seedtool.test-profile"
    config = MachineConfig(
        image=image.disk, kernel=image.kernel, initrd=image.initrd, append=append,
        cpu=spec.cpu, accel="auto", virtio_rng=spec.virtio_rng, rng=spec.rng,
        restrict_network=True,
        extra_args=["-no-reboot"],
    )
    vm = QemuVM(f"{image.release}-{spec.name}", workdir, overlay, config, seed_iso=iso,
                ssh_port=free_port())
    if STOP.is_set():
        raise AssertionError(f"{vm.name}: not booted: the test session was interrupted")
    t0 = time.monotonic()
    vm.start()
    try:
        vm.wait_exit(timeout)
    finally:
        vm.kill()
        if iso is not None:
            iso.unlink(missing_ok=True)
    result = Boot(spec.name, image.release, workdir, overlay, vm.console(),
                  round(time.monotonic() - t0, 1), iid)
    if "seedtool-test-report: done" not in result.console:
        err = (workdir / "qemu.stderr").read_text(errors="replace").strip()
        raise AssertionError(f"{vm.name}: the VM powered off without finishing its report"
                             f" (QEMU stderr: {err or 'empty'}){result.context()}")
    # keep this boot's disk as it is now: a later boot of the same overlay changes it
    result.flat()
    return result


def _sparse_copy(src: Path, dst: Path) -> None:
    import subprocess

    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


# --- looking for seed bytes ----------------------------------------------------------------


def seed_needles(seed: bytes) -> list[tuple[str, bytes]]:
    """Byte strings that would reveal `seed` if found in a file: raw, hex, base64.

    16-byte windows of the raw seed and their hex (either case), and base64 of each
    window at every alignment, so a seed cut out of a longer base64 text is found too.
    """
    out: list[tuple[str, bytes]] = []
    for start in range(0, len(seed) - 16 + 1, 16):
        window = seed[start : start + 16]
        out.append(("raw", window))
        out.append(("hex", window.hex().encode()))
        out.append(("HEX", window.hex().upper().encode()))
    for shift in range(3):
        chunk = seed[shift : shift + 12 * ((len(seed) - shift) // 12)]
        b64 = base64.b64encode(chunk)
        for i in range(0, len(b64) - 16 + 1, 16):
            out.append(("base64", b64[i : i + 16]))
    return out


def files_containing(roots: Iterable[Path], seed: bytes) -> list[str]:
    """Every file under `roots` that holds any of the seed's needles (names, never bytes)."""
    needles = seed_needles(seed)
    hits = []
    for root in roots:
        for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            data = f.read_bytes()
            kinds = sorted({kind for kind, n in needles if n in data})
            if kinds:
                hits.append(f"{f.relative_to(root.parent)} ({', '.join(kinds)})")
    return hits


def lines_for(lines: Sequence[SeedtoolLine], seed_id: str) -> list[SeedtoolLine]:
    return [ln for ln in lines if ln.seed_id == seed_id]
