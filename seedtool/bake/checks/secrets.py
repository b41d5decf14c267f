"""Check: no private key or seedtool envelope anywhere in the image, found by the
whole-image scan (`seedtool.bake.imagescan`) and by dropbear's host key names; a
warning when the scan met a bound or could not read or list something. bake runs the
same scan after its changes and reports what it leaves (`scan_findings`)."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

from ...image.fs import TargetFS
from ..findings import WARNING, Finding
from ..imagescan import Hit, ScanBounds, ScanReport, scan
from ..layout import (
    CLOUD_SEED,
    CLOUD_STATE,
    DROPBEAR_DIR,
    DROPBEAR_INITRAMFS_DIRS,
    LOG_DIR,
    SEEDTOOL_STATE,
    SSH_DIR,
)
from ..tree import is_dir, real

if TYPE_CHECKING:
    from . import Context

#: bound on the scan; `check(bounds=...)` and the CLI's --scan-max-* options change it
SCAN_BOUNDS = ScanBounds()

_ELSEWHERE = ("remove it from the image and rotate it if it was ever secret; a VM needs "
              "only the public key (--trusted-key) and makes its own keys at first boot")
_KIND = {
    "seedtool-key": "an Ed25519 private key (the format of seedtool's signing key) in the "
                    "image: anyone with the image could sign seeds",
    "encrypted": "an encrypted PEM private key in the image, shared by every VM (if it is "
                 "seedtool's signing key, anyone could try to crack it)",
    "openssh": "an OpenSSH private key in the image (a host key under another name or a "
               "user's key), shared by every VM made from it",
    "pem": "a PEM private key in the image, shared by every VM made from it",
    "putty": "a PuTTY private key in the image, shared by every VM made from it",
    "dropbear": "a dropbear private key in the image, shared by every VM made from it",
    "envelope": "a seedtool envelope in the image: every VM made from it would find the "
                "same seed",
}


def _hit_finding(hit: Hit) -> Finding:
    problem = _KIND[hit.kind] + (" (inside gzip data)" if hit.inside else "")
    fix = _ELSEWHERE
    parent = hit.path.rpartition("/")[0]
    if hit.kind == "envelope":
        fix = ("remove it; seeds go to each VM when it is launched (seedtool userdata, or "
               "seedtool image seed on each VM's own disk), never into a base image")
    if hit.kind == "dropbear" and parent == DROPBEAR_DIR:
        problem = "dropbear SSH host key every VM made from this image would share"
        fix = ("remove it and let each VM make its own: add -R to DROPBEAR_EXTRA_ARGS in "
               "/etc/default/dropbear (dropbear then creates missing host keys); seedtool bake "
               "leaves it, as Debian's dropbear.service starts without -R and would fail")
    elif hit.kind == "dropbear" and parent in DROPBEAR_INITRAMFS_DIRS:
        problem = ("dropbear-initramfs host key every VM made from this image would share "
                   "(the initramfs images in /boot hold a copy too)")
        fix = ("remove it, and on each VM's first boot make new keys (dropbearkey -t ed25519 "
               "-f THIS-PATH) and rebuild the initramfs (update-initramfs -u); seedtool bake "
               "leaves it, as the initramfs already built would keep the old key")
    elif hit.path.startswith(CLOUD_SEED + "/"):
        problem += (f"; {CLOUD_SEED} is kept on purpose by bake and cloud-init clean, so "
                    "every instance reads it")
        fix = ("take it out of this seed directory (a NoCloud seed in a base image is the "
               "same for every VM) and give each VM its own at launch")
    elif hit.path.startswith("/etc/cloud/"):
        problem += "; system cloud config is the same in every VM"
        fix = ("remove it from the system cloud config (e.g. a random_seed.data there) and "
               "give each VM its seed in its own user-data (seedtool userdata)")
    return Finding(hit.path, problem, fix)


def _dropbear_named(fs: TargetFS) -> list[str]:
    """Host key files by dropbear's naming (dropbear_TYPE_host_key), behind symlinks too."""
    found = []
    for known in (DROPBEAR_DIR, *DROPBEAR_INITRAMFS_DIRS):
        d = real(fs, known)
        if d is None or not is_dir(fs, d):
            continue
        for name, st in fs.scandir(d):
            if (name.startswith("dropbear_") and name.endswith("_host_key")
                    and stat.S_ISREG(st.mode) and st.size > 0):
                found.append(f"{d.rstrip('/')}/{name}")
    return found


def scan_findings(fs: TargetFS, bounds: ScanBounds | None = None,
                  skip: frozenset[str] = frozenset()) -> list[Finding]:
    """The whole-image secret scan as findings: one per secret, plus a warning when the
    scan met a bound (naming where it stopped) or could not read or list something."""
    report: ScanReport = scan(fs, bounds or SCAN_BOUNDS, lambda p: p in skip)
    findings = [_hit_finding(h) for h in report.hits]
    hit_paths = {h.path for h in report.hits}
    for path in _dropbear_named(fs):
        if path not in hit_paths and path not in skip:
            parent = path.rpartition("/")[0]
            findings.append(_hit_finding(Hit(path, "dropbear")) if parent in (
                DROPBEAR_DIR, *DROPBEAR_INITRAMFS_DIRS) else Finding(
                path, _KIND["dropbear"], _ELSEWHERE))
    for known in (SSH_DIR, DROPBEAR_DIR, *DROPBEAR_INITRAMFS_DIRS, CLOUD_STATE, LOG_DIR,
                  SEEDTOOL_STATE):
        if real(fs, known) is None:
            findings.append(Finding(known, "goes through a symlink loop, so what it should "
                                    "hold could not be checked", "fix the links in the image",
                                    WARNING))
    if report.stopped is not None:
        path, bound = report.stopped
        findings.append(Finding(
            path, f"the secret scan stopped here at {bound} ({report.files} files, "
            f"{report.bytes} bytes searched): this file and the rest were not searched",
            "remove build leftovers from the image, or raise the bound "
            "(--scan-max-files, --scan-max-bytes, --scan-max-seconds)", WARNING))
    for top, n in sorted(report.unreadable.items()):
        findings.append(Finding(
            top, f"{n} file(s) here could not be read, so they were not scanned for "
            "private keys or seeds", "run the check as root", WARNING))
    for d, why in report.unlisted:
        findings.append(Finding(d, f"could not be listed, so it was not scanned ({why})",
                                "run the check as root, or fix the directory", WARNING))
    return findings


def no_secrets(ctx: Context) -> list[Finding]:
    """The scan, skipping the paths earlier checks already named."""
    return scan_findings(ctx.fs, ctx.bounds, frozenset(f.path for f in ctx.findings))
