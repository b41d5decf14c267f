"""Debian test images for the end-to-end boot tests, built without mounting anything.

Two layers, both cached under ``$SEEDTOOL_VM_CACHE`` (default ``~/.cache/seedtool/vm``):

* ``base_root(release)``: a debootstrap'd minbase root with a cloud kernel, cloud-init
  and sshd. Slow (about 90 s), built once per release and package list.
* ``guest_image(release, trusted_keys)``: a copy of that root with the test system
  config and report unit added, then prepared by ``seedtool bake --root`` itself (the
  guest installed, shared state removed), packed into a raw ext4 disk by ``mkfs.ext4
  -d`` (no mount, no loop device), plus the kernel and initrd to boot it with. Cheap
  (about 10 s), cached by a hash of everything that goes into it (all of seedtool/,
  bake included), so an edit to the guest or to bake rebuilds only this step.

Every build runs under an exclusive lock and publishes its result by rename, with a
completion marker written last, so parallel callers (pytest-xdist, a second helper,
``build-roots`` in the background) never both build nor see half a root.

Run ``python3 -m devtools.images build-roots`` to build (or check) both roots.
Needs root (debootstrap, file ownership in the image), debootstrap and e2fsprogs.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MIRROR = os.environ.get("SEEDTOOL_DEBIAN_MIRROR", "http://deb.debian.org/debian")


@dataclass(frozen=True)
class Release:
    """What one Debian release needs to become a test image, and what it ships.

    The only place that knows releases apart: the builder, the VM harness, the chroot
    tests and the benchmarks read this table (the guest itself never sees a release
    name; it decides from what it observes at boot). Versions are those in Debian's
    archive in 2026-12 (packages.debian.org); the tests check them against the roots.
    """

    name: str
    number: str
    #: cloud-init's upstream version, as `cloudinit.version.version_string()` starts
    cloud_init: str
    #: the image python's byte-code tag (sys.implementation.cache_tag)
    python_tag: str
    #: linux-image-cloud-amd64's upstream version, major.minor
    kernel: str
    #: packages beyond COMMON_PACKAGES
    packages: tuple[str, ...]

    @property
    def kernel_version(self) -> tuple[int, int]:
        major, minor = self.kernel.split(".")[:2]
        return int(major), int(minor)


# Measured on Debian 12 hosts: without python3-cffi-backend cloud-init stays unconfigured;
# trixie's minbase lacks e2fsprogs (cloud-init's resizefs then fails). python3-cryptography
# comes with cloud-init anyway (python3-oauthlib, -jwt, -requests depend on it); the guest
# does not use it (seedtool.shared.ed25519 is pure Python).
COMMON_PACKAGES = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "cloud-init",
    "openssh-server",
    "ifupdown",
    "iproute2",
    "dbus",
    "python3-cffi-backend",
    "python3-cryptography",
    "e2fsprogs",
)

# ifupdown's `inet dhcp` runs whichever DHCP client is installed (interfaces(5)); sid
# no longer has isc-dhcp-client (removed from unstable in 2026; cloud-init 26.2 depends
# on dhcpcd-base | udhcpc | isc-dhcp-client), so it gets dhcpcd-base.
TABLE: dict[str, Release] = {
    r.name: r
    for r in (
        Release("bullseye", "11", "20.4", "cpython-39", "5.10", ("isc-dhcp-client",)),
        Release("bookworm", "12", "22.4", "cpython-311", "6.1", ("isc-dhcp-client",)),
        Release("trixie", "13", "25.1", "cpython-313", "6.12", ("isc-dhcp-client",)),
        Release("sid", "unstable", "26.2", "cpython-314", "7.2", ("dhcpcd-base",)),
    )
}
RELEASES = tuple(TABLE)


def release_info(name: str) -> Release:
    try:
        return TABLE[name]
    except KeyError:
        raise ImageBuildError(f"unknown release {name!r}; use one of {', '.join(RELEASES)}")\
            from None


def packages(release: str) -> tuple[str, ...]:
    return COMMON_PACKAGES + release_info(release).packages


#: bump to force every cached root to be rebuilt
ROOT_FORMAT = 1

COMPLETE = ".complete"


class ImageBuildError(RuntimeError):
    """A test image could not be built."""


def cache_dir() -> Path:
    env = os.environ.get("SEEDTOOL_VM_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "seedtool" / "vm"
    base.mkdir(parents=True, exist_ok=True)
    return base


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _run(argv: Sequence[str], what: str, log: Path | None = None) -> None:
    """Run a command; on failure raise with the tail of its output, never silently."""
    out = subprocess.run(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False
    )
    text = out.stdout.decode("utf-8", "replace")
    if log is not None:
        log.write_text(text)
    if out.returncode != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise ImageBuildError(f"{what} failed (exit {out.returncode}):\n{tail}")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts", encoding="utf-8") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return sorted((p for p in points if (p + "/").startswith(prefix)), key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Delete a (possibly half-built) root, first unmounting what debootstrap left mounted.

    A failed debootstrap can leave /proc or /sys mounted inside the target; rmtree
    must never walk into those.
    """
    if not path.exists():
        return
    for point in _mounts_under(path):
        _run(["umount", "--lazy", point], f"unmounting {point}")
    if _mounts_under(path):
        raise ImageBuildError(f"{path} still has file systems mounted; unmount them and retry")
    shutil.rmtree(path)


def _root_spec(release: str) -> dict[str, object]:
    return {
        "format": ROOT_FORMAT,
        "release": release,
        "mirror": MIRROR,
        "variant": "minbase",
        "packages": sorted(packages(release)),
    }


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def base_root(release: str) -> Path:
    """The cached debootstrap root for `release`, built first if needed (about 90 s)."""
    release_info(release)
    roots = cache_dir() / "roots"
    root = roots / release
    marker = roots / f"{release}{COMPLETE}"
    spec = _root_spec(release)
    want = _digest(spec)

    def ready() -> bool:
        try:
            return root.is_dir() and json.loads(marker.read_text()).get("digest") == want
        except (OSError, ValueError):
            return False

    if ready():
        return root
    with _locked(roots / f"{release}.lock"):
        if ready():  # someone else built it while we waited
            return root
        if shutil.which("debootstrap") is None:
            raise ImageBuildError("debootstrap is not installed; run 'apt-get install debootstrap'")
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        partial = roots / f"{release}.partial"
        for stale in (partial, root):
            _remove_tree(stale)
        t0 = time.monotonic()
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(packages(release)),
                release,
                str(partial),
                MIRROR,
            ],
            f"debootstrap {release}",
            log=roots / f"{release}.debootstrap.log",
        )
        # apt's downloaded .debs are 100+ MB we never need again
        for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        partial.rename(root)
        marker.write_text(
            json.dumps({**spec, "digest": want, "seconds": round(time.monotonic() - t0, 1)})
        )
    return root


# --- bootable test images ---------------------------------------------------------------

#: bump when the image recipe below changes
IMAGE_FORMAT = 2
DISK_SIZE = "3G"

# cloud-init's locale module fails in a minbase root (en_US.UTF-8 is not generated) and
# records an error; C.UTF-8 always exists (seen in boots of these images). Listing only
# NoCloud spares cloud-init probing for clouds that are not there.
TEST_SYSTEM_CONFIG = """\
# seedtool test image: system config (not user-data)
locale: C.UTF-8
datasource_list: [ NoCloud, None ]
# RSA-3072 (and on Debian 12 DSA) key generation dominates a TCG boot; two key types
# are enough to tell VMs apart
ssh_genkeytypes: [ ed25519, ecdsa ]
# cloud-init 25.1's fallback network config asks ifupdown for DHCPv6 too, which QEMU's
# user-mode network does not answer, and ifup then waits for ever; DHCPv4 only
# (52:54:00:12:34:56 is QEMU's default MAC for the first NIC)
network:
  version: 1
  config:
    - type: physical
      name: eth0
      mac_address: "52:54:00:12:34:56"
      subnets: [ { type: dhcp } ]
"""


# A machine-id of "uninitialized" makes systemd treat the boot as a first boot and apply
# its presets, and upstream's presets (shipped unchanged by Debian) enable
# systemd-networkd; the NIC is configured by ifupdown from cloud-init's ENI rendering,
# so systemd-networkd-wait-online would then wait its full 2 minutes for a link it does
# not manage (seen in boots of these images). Presets in /etc win over /usr/lib.
TEST_PRESET = """\
# seedtool test image: ifupdown owns the network
disable systemd-networkd.service
disable systemd-networkd.socket
disable systemd-networkd-wait-online.service
disable systemd-network-generator.service
# Debian 11's presets enable ssh.socket on a first boot too, and its ssh.socket
# Conflicts= with ssh.service: sshd then runs per connection and ssh.service stays
# inactive (seen in boots of the bullseye image). Debian's own default is ssh.service.
disable ssh.socket
"""


# The report unit: only when the kernel command line says `seedtool.test-report` (so
# the same image also serves `seedtool launch qemu`, where it must stay up). It waits
# for cloud-init to finish, saves what the tests read back with debugfs, and powers
# the VM off, on every boot (per-instance user-data would not run again on a reboot).
REPORT_SCRIPT = """\
#!/bin/sh
# seedtool test image: save what the host-side tests check, then power off
out=/var/tmp/seedtool-test
rm -rf "$out"
mkdir -p "$out"
cloud-init status --wait --long > "$out/status-long.txt" 2>&1
echo "exit=$?" >> "$out/status-long.txt"
systemctl is-active ssh.service > "$out/ssh-active.txt" 2>&1
ss -Hltn > "$out/listen.txt" 2>&1
dmesg > "$out/dmesg.txt" 2>&1
cp -a /run/cloud-init "$out/run-cloud-init" 2>/dev/null
if grep -qw seedtool.test-analyze /proc/cmdline; then
    cloud-init analyze show > "$out/analyze.txt" 2>&1
fi
if grep -qw seedtool.test-profile /proc/cmdline; then
    systemd-analyze > "$out/systemd-analyze.txt" 2>&1
    systemd-analyze blame > "$out/blame.txt" 2>&1
    systemd-analyze critical-chain seedtool-early.service > "$out/critical-chain.txt" 2>&1
    journalctl -b -o short-monotonic --no-pager > "$out/journal.txt" 2>&1
fi
sync
echo "seedtool-test-report: done" > /dev/console
systemctl --no-block poweroff
"""

REPORT_UNIT = """\
[Unit]
Description=seedtool test image: save results for the host and power off
ConditionKernelCommandLine=seedtool.test-report
After=ssh.service

[Service]
# not oneshot, and not ordered after cloud-final: cloud-final is ordered after
# multi-user.target, which waits for what it wants; the script waits for cloud-init
Type=exec
ExecStart=/usr/local/sbin/seedtool-test-report
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""


def _install_report_unit(root: Path) -> None:
    script = root / "usr/local/sbin/seedtool-test-report"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(REPORT_SCRIPT)
    script.chmod(0o755)
    unit = root / "etc/systemd/system/seedtool-test-report.service"
    unit.write_text(REPORT_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit.name
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(f"/etc/systemd/system/{unit.name}")


@dataclass(frozen=True)
class GuestImage:
    release: str
    disk: Path  # raw ext4 file system, no partition table: boot with -kernel/-initrd
    kernel: Path
    initrd: Path
    #: public host keys that debootstrap's openssh-server made; bake removed them
    build_host_keys: tuple[str, ...]
    digest: str

    @property
    def append(self) -> str:
        return "root=/dev/vda rw console=ttyS0"


@dataclass(frozen=True)
class PreparedTree:
    """What `prepare_tree` saw and did."""

    #: public host keys that debootstrap's openssh-server made, before bake removed them
    build_host_keys: tuple[str, ...]
    #: `seedtool bake --json`'s changes (paths and actions, never contents)
    bake_changes: tuple[dict[str, str], ...]


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _guest_sources() -> list[Path]:
    """Every file whose change must rebuild the image: the guest code and bake, which
    prepares the image, are both in seedtool/; this file holds the rest of the recipe."""
    repo = _repo_root()
    files = [p for d in ("seedtool", "cloud_init_modules") for p in (repo / d).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    return sorted(files) + [Path(__file__).resolve()]


def _image_digest(
    root_digest: str, keys: Sequence[Path], policy: Mapping[str, object] | None
) -> str:
    h = hashlib.sha256()
    # this Python's byte code goes into the image when its magic number is the image's
    h.update(json.dumps({"format": IMAGE_FORMAT, "root": root_digest, "size": DISK_SIZE,
                         "python": sys.implementation.cache_tag,
                         "policy": policy, "config": TEST_SYSTEM_CONFIG,
                         "preset": TEST_PRESET, "report": [REPORT_SCRIPT, REPORT_UNIT]},
                        sort_keys=True, default=str).encode())
    repo = _repo_root()
    for f in _guest_sources():
        name = str(f.relative_to(repo)) if f.is_relative_to(repo) else f.name
        h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    for k in keys:
        h.update(b"key\0" + Path(k).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _build_host_keys(root: Path) -> tuple[str, ...]:
    """The public SSH host keys debootstrap's openssh-server made (bake removes them)."""
    ssh = root / "etc/ssh"
    return tuple(p.read_text().strip() for p in sorted(ssh.glob("ssh_host_*_key.pub")))


def _bake(root: Path, trusted_keys: Sequence[Path],
          policy: Mapping[str, object] | None) -> list[dict[str, str]]:
    """Prepare `root` with `seedtool bake --root`, as an image pipeline would; its changes.

    The repository's own seedtool runs (the one the image digest hashes), through its
    CLI, so the test image is exactly what bake makes: the guest installed, the host
    keys, machine ids, random seeds and cloud-init state removed (docs/bake.md).
    """
    argv = [sys.executable, "-m", "seedtool", "bake", "--root", str(root), "--json"]
    for key in trusted_keys:
        argv += ["--trusted-key", str(key)]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(_repo_root()),
                                                       os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="seedtool-image-") as tmp:
        if policy is not None:
            policy_file = Path(tmp) / "policy.json"
            policy_file.write_text(json.dumps(policy, default=str))
            argv += ["--policy", str(policy_file)]
        out = subprocess.run(argv, cwd=_repo_root(), env=env, capture_output=True,
                             check=False)
    if out.returncode != 0:
        err = out.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise ImageBuildError(f"seedtool bake --root {root} failed (exit {out.returncode}): "
                              + " / ".join(err))
    result = json.loads(out.stdout)
    left = [f["path"] for f in result["left"]]
    if left:
        raise ImageBuildError(f"seedtool bake found secrets it does not remove in {root}: "
                              f"{', '.join(left)}; the base root has them, rebuild it")
    changes: list[dict[str, str]] = result["changes"]
    return changes


def prepare_tree(root: Path, trusted_keys: Sequence[Path],
                 policy: Mapping[str, object] | None = None) -> PreparedTree:
    """Turn a copy of a base root into the test image's tree: the test system config,
    presets and report unit, then `seedtool bake` last, as docs/bake.md says to run it."""
    build_keys = _build_host_keys(root)
    cfg = root / "etc/cloud/cloud.cfg.d/90_seedtool_test_image.cfg"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(TEST_SYSTEM_CONFIG)
    preset = root / "etc/systemd/system-preset/10-seedtool-test-image.preset"
    preset.parent.mkdir(parents=True, exist_ok=True)
    preset.write_text(TEST_PRESET)
    _install_report_unit(root)
    # debootstrap leaves the build host's name in /etc/hostname (seen in these roots);
    # cloud-init then sets each VM's own from its meta-data (local-hostname)
    (root / "etc/hostname").write_text("debian\n")
    changes = _bake(root, trusted_keys, policy)
    # bake compiles the guest only with its own Python (it stages in an empty directory,
    # where the image's interpreter cannot run); for an image of another Python version
    # (Debian 13 from a Debian 12 host) compile it here with the image's own python3
    # under chroot, as install_guest does for a root, so the boots do not compile it
    _compile_guest(root)
    return PreparedTree(build_keys, tuple(changes))


def _compile_guest(root: Path) -> None:
    """Best effort, as install_guest's own compile: without byte code the guest compiles
    its sources at boot (slower, still correct)."""
    from seedtool.bake.install import GUEST_SOURCES, compile_bytecode

    compile_bytecode(root, GUEST_SOURCES)


def guest_image(
    release: str,
    trusted_keys: Sequence[Path],
    policy: Mapping[str, object] | None = None,
) -> GuestImage:
    """A bootable raw disk of `release` with the seedtool guest and `trusted_keys` installed.

    Cached by a hash of the base root, the repository's guest code, the keys and the
    policy; a cache hit costs a hash of the sources, a miss about 10 s.
    """
    root = base_root(release)
    root_digest = json.loads((cache_dir() / "roots" / f"{release}{COMPLETE}").read_text())["digest"]
    digest = _image_digest(root_digest, trusted_keys, policy)
    images = cache_dir() / "images"
    out = images / f"{release}-{digest}"
    info_path = out / "image.json"

    def load() -> GuestImage | None:
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            return None
        return GuestImage(release, out / "disk.raw", out / "vmlinuz", out / "initrd.img",
                          tuple(info["build_host_keys"]), digest)

    img = load()
    if img is not None:
        return img
    with _locked(images / f"{release}.lock"):
        img = load()
        if img is not None:
            return img
        if shutil.which("mkfs.ext4") is None:
            raise ImageBuildError("mkfs.ext4 is not installed; run 'apt-get install e2fsprogs'")
        work = images / f"{release}-{digest}.partial"
        _remove_tree(work)
        work.mkdir(parents=True)
        tree = work / "root"
        t0 = time.monotonic()
        _run(["cp", "-a", "--reflink=auto", str(root), str(tree)], f"copying the {release} root")
        prepared = prepare_tree(tree, trusted_keys, policy)
        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        initrds = sorted((tree / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise ImageBuildError(f"the {release} root has no kernel or initrd in /boot")
        shutil.copyfile(kernels[-1], work / "vmlinuz")
        shutil.copyfile(initrds[-1], work / "initrd.img")
        _run(["mkfs.ext4", "-q", "-F", "-L", "seedtool-root", "-d", str(tree),
              str(work / "disk.raw"), DISK_SIZE], f"mkfs.ext4 -d for {release}")
        shutil.rmtree(tree)
        (work / "image.json").write_text(json.dumps({
            "release": release, "digest": digest,
            "build_host_keys": list(prepared.build_host_keys), "policy": policy,
            "bake_changes": list(prepared.bake_changes),
            "seconds": round(time.monotonic() - t0, 1),
        }, indent=1, default=str))
        _remove_tree(out)
        work.rename(out)
        _prune(images, release, keep=out)
    img = load()
    assert img is not None
    return img


def _prune(images: Path, release: str, keep: Path, retain: int = 2) -> None:
    """Drop all but the newest few images of a release (each is a 3 GB sparse file)."""
    done = sorted((p for p in images.glob(f"{release}-*") if p.is_dir() and p != keep
                   and not p.name.endswith(".partial")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in done[retain - 1:]:
        shutil.rmtree(old, ignore_errors=True)


# --- reading and writing files in an ext4 image, without mounting ------------------------


def debugfs_write(image: Path, requests: Sequence[str]) -> None:
    """Run debugfs requests read-write on an ext4 image file."""
    script = "\n".join(requests) + "\n"
    out = subprocess.run(["debugfs", "-w", "-f", "-", str(image)], input=script.encode(),
                         capture_output=True, check=False)
    if out.returncode != 0:
        err = out.stderr.decode("utf-8", "replace")[-400:]
        raise ImageBuildError(f"debugfs -w on {image} failed: {err}")


def read_file(image: Path, path: str) -> bytes | None:
    """A file's content from an ext4 image, or None if it does not exist."""
    out = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                         check=False)
    err = out.stderr.decode("utf-8", "replace")
    if "File not found" in err or "not found by ext2_lookup" in err:
        return None
    if out.returncode != 0:
        raise ImageBuildError(f"debugfs cannot read {path} from {image}: {err[-300:]}")
    return out.stdout


def file_times(image: Path, path: str) -> dict[str, float] | None:
    """A file's ext4 times (mtime, ctime, crtime...) in seconds with nanoseconds, from
    `debugfs -R stat`; None if it does not exist. The extra field holds the epoch bits
    in its low 2 bits and the nanoseconds above them (ext4 disk layout, "Inode
    Timestamps")."""
    out = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], capture_output=True,
                         check=False)
    times: dict[str, float] = {}
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        name, _, rest = line.strip().partition(":")
        if name in ("ctime", "atime", "mtime", "crtime") and rest.strip().startswith("0x"):
            secs, _, extra = rest.split("--")[0].strip().partition(":")
            value = int(secs, 16) + ((int(extra, 16) & 3) << 32 if extra else 0)
            times[name] = value + ((int(extra, 16) >> 2) / 1e9 if extra else 0.0)
    return times or None


def dump_tree(image: Path, path: str, dest: Path) -> Path | None:
    """Copy a directory out of an ext4 image into `dest`; return the copy (None if absent)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["debugfs", "-R", f"rdump {path} {dest}", str(image)],
                         capture_output=True, check=False)
    copy = dest / Path(path).name
    if not copy.exists():
        err = out.stderr.decode("utf-8", "replace")
        if "not found" in err:
            return None
        raise ImageBuildError(f"debugfs cannot copy {path} out of {image}: {err[-300:]}")
    return copy


def write_file(image: Path, path: str, data: bytes, mode: int = 0o600) -> None:
    """Create or replace a root-owned file in an ext4 image (`debugfs -w`, no mount)."""
    parent = str(Path(path).parent)
    with tempfile.NamedTemporaryFile(prefix="seedtool-inject-") as tmp:
        os.fchmod(tmp.fileno(), 0o600)
        tmp.write(data)
        tmp.flush()
        parts = Path(parent).parts[1:]
        requests = [f"mkdir /{'/'.join(parts[: i + 1])}" for i in range(len(parts))]
        requests += [f"rm {path}", f"write {tmp.name} {path}",
                     f"sif {path} mode 0{0o100000 | mode:o}", f"sif {path} uid 0",
                     f"sif {path} gid 0"]
        debugfs_write(image, requests)
    if read_file(image, path) != data:
        raise ImageBuildError(f"writing {path} into {image} with debugfs did not take")


def qcow2_to_raw(overlay: Path, raw: Path) -> Path:
    """Flatten a qcow2 overlay (with its backing file) into a sparse raw image."""
    _run(["qemu-img", "convert", "-O", "raw", str(overlay), str(raw)],
         f"qemu-img convert {overlay.name}")
    return raw


def build_roots(releases: Sequence[str] = RELEASES) -> dict[str, Path]:
    return {r: base_root(r) for r in releases}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m devtools.images")
    sub = p.add_subparsers(dest="cmd", required=True)
    br = sub.add_parser("build-roots", help="debootstrap the cached base roots")
    br.add_argument("releases", nargs="*", default=list(RELEASES))
    bi = sub.add_parser("build-image", help="build (or find cached) a bootable test image")
    bi.add_argument("release", choices=RELEASES)
    bi.add_argument("--trusted-key", action="append", required=True, metavar="PUB",
                    help="public key file the guest trusts (repeatable)")
    bi.add_argument("--json", action="store_true", help="print the image's paths as JSON")
    args = p.parse_args(argv)
    if args.cmd == "build-image":
        img = guest_image(args.release, [Path(k) for k in args.trusted_key])
        info = {"release": img.release, "disk": str(img.disk), "kernel": str(img.kernel),
                "initrd": str(img.initrd), "append": img.append}
        if args.json:
            print(json.dumps(info))
        else:
            for k, v in info.items():
                print(f"{k}: {v}")
        return 0
    if args.cmd == "build-roots":
        for rel in args.releases:
            t0 = time.monotonic()
            path = base_root(rel)
            print(f"{rel}: {path} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
