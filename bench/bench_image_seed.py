"""Seeding a 4 GiB raw ext4 image: `seedtool image seed` (debugfs fast path) against
`virt-customize` doing the same three steps on the same image, in the same run.

Bar (issue 4): the fast path at least 30x faster. Both sides are whole command-line
runs (interpreter or appliance start-up included), interleaved so machine noise hits
both alike; medians over the rounds. virt-customize runs with the settings libguestfs
needs without working KVM (LIBGUESTFS_BACKEND=direct, force_tcg; guestfs(3) "BACKEND")
unless the caller set its own, and with --no-network since the steps need none.

Needs e2fsprogs and libguestfs-tools (plus a kernel in /boot for the appliance).
Run: python3 bench/bench_image_seed.py [--rounds 5] [--size-gib 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {res.stderr.decode(errors='replace')[-500:]}")
    return dt


def make_root(d: Path) -> Path:
    """Enough of a Debian root for libguestfs's inspection (virt-customize needs one)."""
    root = d / "root"
    for sub in ("etc", "usr/bin", "usr/sbin", "usr/lib", "var/lib", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "sbin").symlink_to("usr/sbin")
    (root / "usr/lib/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "etc/debian_version").write_text("12.0\n")
    (root / "etc/fstab").write_text("/dev/sda / ext4 defaults 0 1\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc/hostname").write_text("bench\n")
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-gib", type=int, default=4)
    args = ap.parse_args()
    for tool in ("mkfs.ext4", "debugfs", "virt-customize"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install e2fsprogs libguestfs-tools "
                     "linux-image-cloud-amd64")
    py = sys.executable
    env = dict(os.environ)
    env.setdefault("LIBGUESTFS_BACKEND", "direct")
    env.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        d = Path(tmp)
        img = d / "disk.raw"
        with open(img, "wb") as f:
            f.truncate(args.size_gib << 30)  # sparse
        img.chmod(0o600)  # image seed refuses an image others can read
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E",
                        "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
                        "-d", str(make_root(d)), str(img)], check=True)
        key = d / "k.key"
        subprocess.run([py, "-m", "seedtool", "keygen", "-o", str(key)], check=True,
                       stdout=subprocess.DEVNULL)
        envelope = d / "seed.txt"
        subprocess.run([py, "-m", "seedtool", "generate", "--key", str(key), "-o",
                        str(envelope)], check=True, stderr=subprocess.DEVNULL)
        ours_cmd = [py, "-m", "seedtool", "image", "seed", str(img), "--key", str(key),
                    "--force"]
        theirs_cmd = ["virt-customize", "-q", "--no-network", "--format", "raw", "-a", str(img),
                      "--mkdir", "/var/lib/seedtool",
                      "--upload", f"{envelope}:/var/lib/seedtool/seed",
                      "--chmod", "0600:/var/lib/seedtool/seed"]
        ours, theirs = [], []
        for i in range(args.rounds):
            ours.append(wall(ours_cmd, env))
            theirs.append(wall(theirs_cmd, env))
            print(f"round {i + 1}: seedtool image seed {ours[-1]:.3f} s, "
                  f"virt-customize {theirs[-1]:.3f} s", flush=True)
        check = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True)
        if check.returncode != 0:
            sys.exit("e2fsck found errors in the image after the runs")
    m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
    ratio = m_theirs / m_ours
    print(f"{args.size_gib} GiB raw ext4, {args.rounds} rounds, medians: "
          f"seedtool image seed {m_ours:.3f} s, virt-customize {m_theirs:.3f} s, "
          f"ratio {ratio:.1f}x (bar: 30x) -> {'PASS' if ratio >= 30 else 'FAIL'}")
    sys.exit(0 if ratio >= 30 else 1)


if __name__ == "__main__":
    main()
