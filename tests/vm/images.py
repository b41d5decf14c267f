"""Debian test images for the end-to-end boot tests, built without mounting anything.

Two layers, both cached under ``$SEEDTOOL_VM_CACHE`` (default ``~/.cache/seedtool/vm``):

* ``base_root(release)``: a debootstrap'd minbase root with a cloud kernel, cloud-init
  and sshd. Slow (about 90 s), built once per release and package list.
* ``guest_image(release, trusted_keys)``: a copy of that root with the seedtool guest
  installed, shared state stripped, packed into a raw ext4 disk by ``mkfs.ext4 -d``
  (no mount, no loop device), plus the kernel and initrd to boot it with. Cheap (a few
  seconds), cached by a hash of everything that goes into it, so an edit to the guest
  code rebuilds only this step.

Every build runs under an exclusive lock and publishes its result by rename, with a
completion marker written last, so parallel callers (pytest-xdist, a second helper,
``build-roots`` in the background) never both build nor see half a root.

Run ``python3 -m tests.vm.images build-roots`` to build (or check) both roots.
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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

RELEASES = ("bookworm", "trixie")
MIRROR = os.environ.get("SEEDTOOL_DEBIAN_MIRROR", "http://deb.debian.org/debian")

# FACTS "These machines": without python3-cffi-backend cloud-init stays unconfigured;
# trixie's minbase lacks e2fsprogs (cloud-init's resizefs then fails); the guest checks
# envelope signatures with python3-cryptography.
BASE_PACKAGES = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "cloud-init",
    "openssh-server",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "dbus",
    "python3-cffi-backend",
    "python3-cryptography",
    "e2fsprogs",
)

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
        "packages": sorted(BASE_PACKAGES),
    }


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def base_root(release: str) -> Path:
    """The cached debootstrap root for `release`, built first if needed (about 90 s)."""
    if release not in RELEASES:
        raise ImageBuildError(f"unknown release {release!r}; use one of {', '.join(RELEASES)}")
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
                "--include=" + ",".join(BASE_PACKAGES),
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


def build_roots(releases: Sequence[str] = RELEASES) -> dict[str, Path]:
    return {r: base_root(r) for r in releases}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tests.vm.images")
    sub = p.add_subparsers(dest="cmd", required=True)
    br = sub.add_parser("build-roots", help="debootstrap the cached base roots")
    br.add_argument("releases", nargs="*", default=list(RELEASES))
    args = p.parse_args(argv)
    if args.cmd == "build-roots":
        for rel in args.releases:
            t0 = time.monotonic()
            path = base_root(rel)
            print(f"{rel}: {path} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
