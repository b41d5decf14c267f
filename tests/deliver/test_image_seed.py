"""`seedtool image seed` on real ext4 images built with mkfs.ext4 -d (no mount),
partitioned by sfdisk, read back with debugfs and e2fsck; the refusals; libguestfs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seedtool.deliver.disk import SeedResult, seed_image
from seedtool.generate import SeedFactory
from seedtool.image.debugfs import DebugfsError, DebugfsTarget, FileSystemFull
from seedtool.image.formats import detect_format
from seedtool.image.fstab import MountRefused
from seedtool.image.inuse import ImageRefused
from seedtool.image.open import NoLinuxRoot
from seedtool.shared import envelope
from seedtool.shared.pubkeys import PublicKey, trusted_pairs

pytestmark = pytest.mark.skipif(
    not (shutil.which("mkfs.ext4") and shutil.which("debugfs") and shutil.which("sfdisk")),
    reason="needs e2fsprogs and fdisk (sfdisk)")

MiB = 1 << 20
SEED = "/var/lib/seedtool/seed"


# ---- building images -------------------------------------------------------------------


def make_root(base: Path, name: str, os_release: bool = True,
              files: dict[str, bytes] | None = None) -> Path:
    root = base / name
    (root / "etc").mkdir(parents=True)
    (root / "var/lib").mkdir(parents=True)
    if os_release:
        (root / "usr/lib").mkdir(parents=True)
        (root / "usr/lib/os-release").write_text("ID=debian\nVERSION_ID=12\n")
        (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    for rel, data in (files or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def mkfs(path: Path, size: int, root: Path | None, *extra: str) -> None:
    """An ext4 image file, 0600 like every seed carrier (`image seed` refuses others)."""
    with open(path, "wb") as f:
        f.truncate(size)
    path.chmod(0o600)
    args = ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", *extra]
    if root is not None:
        args += ["-d", str(root)]
    subprocess.run([*args, str(path)], check=True, capture_output=True)


def partitioned(tmp: Path, label: str, parts: list[tuple[int, str, Path | None]],
                extra: str = "", mkfs_args: dict[int, tuple[str, ...]] | None = None,
                header: str = "",
                name: str | None = None) -> tuple[Path, dict[int, int]]:
    """A disk image (0600): sfdisk writes the table, each ext4 is built apart and copied in.

    parts: (size in MiB, sfdisk type, root dir or None for no file system); mkfs_args:
    partition number -> extra mkfs.ext4 arguments (-U, -L).
    Returns the image and partition number -> byte offset (from sfdisk's own report).
    """
    img = tmp / f"{name or label}.img"
    total = sum(p[0] for p in parts) + 4
    with open(img, "wb") as f:
        f.truncate(total * MiB)
    img.chmod(0o600)
    script = f"label: {label}\n{header}" + "".join(f"size={s}M, type={t}\n" for s, t, _ in parts)
    script += extra
    subprocess.run(["sfdisk", "-q", str(img)], input=script.encode(), check=True,
                   capture_output=True)
    table = json.loads(subprocess.run(["sfdisk", "-J", str(img)], check=True,
                                      capture_output=True).stdout)["partitiontable"]
    offsets = {int(p["node"].rsplit("img", 1)[1]): int(p["start"]) * 512
               for p in table["partitions"]}
    numbers: list[int] = []
    logical = False
    for _s, t, _r in parts:
        numbers.append(4 + sum(1 for n in numbers if n > 4) + 1 if logical else len(numbers) + 1)
        logical = logical or (label == "dos" and t.lower() in ("5", "f", "85"))
    for (size, _t, root), number in zip(parts, numbers):
        if root is None:
            continue
        fs = tmp / f"{name or label}-p{number}.ext4"
        mkfs(fs, size * MiB, root, *(mkfs_args or {}).get(number, ()))
        with open(img, "r+b") as out, open(fs, "rb") as src:
            out.seek(offsets[number])
            shutil.copyfileobj(src, out)
    return img, offsets


def debugfs_dev(img: Path, offset: int) -> str:
    return f"{img}?offset={offset}" if offset else str(img)


def read_back(img: Path, offset: int, path: str = SEED) -> tuple[int, int, int, bytes]:
    """(mode, uid, gid, contents) of a file, read with debugfs directly."""
    dev = debugfs_dev(img, offset)
    out = subprocess.run(["debugfs", "-R", f"stat \"{path}\"", dev], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"Type: (\w+)\s+Mode:\s+(\d+)", out)
    u = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    assert m and u, out
    assert m.group(1) == "regular"
    data = subprocess.run(["debugfs", "-R", f"cat \"{path}\"", dev], check=True,
                          capture_output=True).stdout
    return int(m.group(2), 8), int(u.group(1)), int(u.group(2)), data


def exists(img: Path, offset: int, path: str) -> bool:
    res = subprocess.run(["debugfs", "-R", f"stat {path}", debugfs_dev(img, offset)],
                         capture_output=True, text=True)
    return "File not found" not in res.stderr


def fsck_clean(img: Path, offset: int, size: int) -> None:
    """e2fsck -fn over a copy of the file system: no errors."""
    part = img.parent / f"fsck-{offset}.ext4"
    with open(img, "rb") as src, open(part, "wb") as dst:
        src.seek(offset)
        dst.write(src.read(size))
    res = subprocess.run(["e2fsck", "-fn", str(part)], capture_output=True, text=True)
    part.unlink()
    assert res.returncode == 0, res.stdout + res.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Counting:
    """A SeedFactory that counts the seeds made (a refusal must make none)."""

    def __init__(self, factory: SeedFactory) -> None:
        self.factory = factory
        self.made = 0

    def new(self) -> Any:
        self.made += 1
        return self.factory.new()


@pytest.fixture
def factory(private_key: object) -> Iterator[Counting]:
    with SeedFactory(private_key) as f:
        yield Counting(f)


@pytest.fixture
def trusted(keypair: tuple[Path, Path, PublicKey]) -> list[tuple[bytes, bytes]]:
    return trusted_pairs([keypair[2]])


def check_seed(img: Path, offset: int, result: SeedResult,
               trusted: list[tuple[bytes, bytes]], dir_mode: int | None = 0o700) -> None:
    mode, uid, gid, data = read_back(img, offset)
    assert (mode, uid, gid) == (0o600, 0, 0)
    env = envelope.verify(data, trusted)
    assert env.seed_id_hex == result.seed_id
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    if dir_mode is not None:  # only a directory seedtool made; an existing one is kept
        dmode, duid, dgid, _ = _dir_stat(img, offset)
        assert (dmode, duid, dgid) == (dir_mode, 0, 0)


def _dir_stat(img: Path, offset: int) -> tuple[int, int, int, None]:
    out = subprocess.run(["debugfs", "-R", "stat /var/lib/seedtool", debugfs_dev(img, offset)],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"Type: directory\s+Mode:\s+(\d+)", out)
    u = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    assert m and u, out
    return int(m.group(1), 8), int(u.group(1)), int(u.group(2)), None


# ---- the fast path ---------------------------------------------------------------------


def test_whole_disk_ext4(tmp_path: Path, factory: Counting,
                         trusted: list[tuple[bytes, bytes]]) -> None:
    img = tmp_path / "disk.raw"
    mkfs(img, 32 * MiB, make_root(tmp_path, "root"))
    result = seed_image(str(img), factory)
    assert result.backend == "debugfs" and result.partition is None
    assert "whole-disk" in result.why and factory.made == 1
    check_seed(img, 0, result, trusted)
    fsck_clean(img, 0, 32 * MiB)
    assert not result.replaced


def test_gpt_with_esp_picks_the_root(tmp_path: Path, factory: Counting,
                                     trusted: list[tuple[bytes, bytes]]) -> None:
    esp = tmp_path / "esp-content"
    (esp / "EFI").mkdir(parents=True)
    img, offsets = partitioned(tmp_path, "gpt", [
        (8, "U", esp),  # an ext4 ESP stand-in: a file system without os-release
        (24, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", make_root(tmp_path, "root")),
    ])
    result = seed_image(str(img), factory)
    assert (result.backend, result.partition) == ("debugfs", 2)
    assert "only one of 2 ext partitions with os-release" in result.why
    check_seed(img, offsets[2], result, trusted)
    assert not exists(img, offsets[1], SEED)
    fsck_clean(img, offsets[2], 24 * MiB)


def test_mbr_root_in_partition_2_with_a_logical_partition(
        tmp_path: Path, factory: Counting, trusted: list[tuple[bytes, bytes]]) -> None:
    boot = make_root(tmp_path, "boot", os_release=False)
    data = make_root(tmp_path, "data", os_release=False)
    img, offsets = partitioned(tmp_path, "dos", [
        (8, "83", boot),
        (24, "83", make_root(tmp_path, "root")),
        (4, "82", None),  # swap
        (10, "5", None),  # sfdisk makes later entries logical once the 4 slots are used
        (8, "83", data),  # logical partition 5
    ])
    assert 5 in offsets and offsets[5] > offsets[4]
    result = seed_image(str(img), factory)
    assert result.partition == 2 and result.backend == "debugfs"
    check_seed(img, offsets[2], result, trusted)
    for n in (1, 5):
        assert not exists(img, offsets[n], SEED)
    fsck_clean(img, offsets[2], 24 * MiB)


def test_partition_option_picks_a_logical_partition(
        tmp_path: Path, factory: Counting, trusted: list[tuple[bytes, bytes]]) -> None:
    img, offsets = partitioned(tmp_path, "dos", [
        (8, "83", make_root(tmp_path, "r1")),
        (8, "83", None),
        (4, "83", None),
        (12, "5", None),
        (8, "83", make_root(tmp_path, "r5")),
    ])
    result = seed_image(str(img), factory, partition=5)
    assert result.partition == 5 and "--partition" in result.why
    check_seed(img, offsets[5], result, trusted)
    assert not exists(img, offsets[1], SEED)


def test_two_roots_without_a_root_type_is_ambiguous(tmp_path: Path, factory: Counting) -> None:
    img, _ = partitioned(tmp_path, "gpt", [(8, "L", make_root(tmp_path, "a")),
                                           (8, "L", make_root(tmp_path, "b"))])
    before = digest(img)
    with pytest.raises(ImageRefused, match="several Linux roots.*--partition"):
        seed_image(str(img), factory)
    assert factory.made == 0 and digest(img) == before


def test_root_type_guid_breaks_the_tie(tmp_path: Path, factory: Counting,
                                       trusted: list[tuple[bytes, bytes]]) -> None:
    img, offsets = partitioned(tmp_path, "gpt", [
        (8, "L", make_root(tmp_path, "a")),
        (8, "b921b045-1df0-41c3-af44-4c6f280d3fae", make_root(tmp_path, "b")),
    ])
    result = seed_image(str(img), factory)
    assert result.partition == 2 and "root-typed" in result.why
    check_seed(img, offsets[2], result, trusted)


def test_existing_var_lib_seedtool_keeps_its_other_files(
        tmp_path: Path, factory: Counting, trusted: list[tuple[bytes, bytes]]) -> None:
    img = tmp_path / "disk.raw"
    root = make_root(tmp_path, "root", files={"var/lib/seedtool/notes": b"keep me"})
    (root / "var/lib/seedtool").chmod(0o700)
    mkfs(img, 16 * MiB, root)
    result = seed_image(str(img), factory)
    check_seed(img, 0, result, trusted)
    assert read_back(img, 0, "/var/lib/seedtool/notes")[3] == b"keep me"


# ---- refusals ----------------------------------------------------------------------------


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    img = tmp_path / "disk.raw"
    mkfs(img, 16 * MiB, make_root(tmp_path, "root"))
    return img


def test_unconsumed_seed_is_refused_then_replaced_with_force(
        plain: Path, factory: Counting, trusted: list[tuple[bytes, bytes]]) -> None:
    first = seed_image(str(plain), factory)
    before = digest(plain)
    with pytest.raises(ImageRefused, match="unconsumed seed.*--force"):
        seed_image(str(plain), factory)
    assert factory.made == 1 and digest(plain) == before
    second = seed_image(str(plain), factory, force=True)
    assert second.replaced and second.seed_id != first.seed_id
    check_seed(plain, 0, second, trusted)
    fsck_clean(plain, 0, 16 * MiB)


@pytest.mark.parametrize("marker", ["ledger", "status.json"])
def test_booted_image_is_refused_unless_forced(
        tmp_path: Path, factory: Counting, trusted: list[tuple[bytes, bytes]],
        marker: str) -> None:
    img = tmp_path / "disk.raw"
    mkfs(img, 16 * MiB, make_root(tmp_path, "root",
                                  files={f"var/lib/seedtool/{marker}": b"x\n"}))
    before = digest(img)
    with pytest.raises(ImageRefused, match="already booted.*per-VM state.*--force"):
        seed_image(str(img), factory)
    assert factory.made == 0 and digest(img) == before
    result = seed_image(str(img), factory, force=True)
    assert result.replaced
    check_seed(img, 0, result, trusted, dir_mode=None)


def test_no_linux_root(tmp_path: Path, factory: Counting) -> None:
    img = tmp_path / "disk.raw"
    mkfs(img, 16 * MiB, make_root(tmp_path, "root", os_release=False))
    with pytest.raises(NoLinuxRoot, match="no Linux root"):
        seed_image(str(img), factory)
    blank = tmp_path / "blank.raw"
    with open(blank, "wb") as f:
        f.truncate(16 * MiB)
    blank.chmod(0o600)
    with pytest.raises(NoLinuxRoot):
        seed_image(str(blank), factory)
    parted, _ = partitioned(tmp_path, "gpt", [(8, "U", None), (8, "L", None)])
    with pytest.raises(NoLinuxRoot, match="no Linux root"):
        seed_image(str(parted), factory)
    assert factory.made == 0


def test_read_only_file_is_refused(plain: Path, factory: Counting) -> None:
    plain.chmod(0o444)
    before = digest(plain)
    with pytest.raises(ImageRefused, match="read-only"):
        seed_image(str(plain), factory)
    assert factory.made == 0 and digest(plain) == before


def test_not_a_regular_file(tmp_path: Path, factory: Counting) -> None:
    with pytest.raises(ImageRefused, match="not a regular file"):
        seed_image(str(tmp_path), factory)
    with pytest.raises(Exception, match="check the path"):
        seed_image(str(tmp_path / "missing.raw"), factory)


def _run_ok(args: list[str]) -> bool:
    return subprocess.run(args, capture_output=True).returncode == 0


def test_image_on_a_read_only_file_system_is_refused(
        tmp_path: Path, plain: Path, factory: Counting) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if not _run_ok(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        shutil.copy(plain, mnt / "disk.raw")
        assert _run_ok(["mount", "-o", "remount,ro", str(mnt)])
        with pytest.raises(ImageRefused, match="read-only file system"):
            seed_image(str(mnt / "disk.raw"), factory)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert factory.made == 0


@pytest.fixture
def loop_of(plain: Path) -> Iterator[str]:
    if not shutil.which("losetup"):
        pytest.skip("losetup missing")
    res = subprocess.run(["losetup", "--find", "--show", str(plain)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip("cannot attach a loop device here (needs root)")
    dev = res.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def test_attached_loop_device_is_refused(plain: Path, loop_of: str, factory: Counting) -> None:
    with pytest.raises(ImageRefused, match=f"attached to {loop_of}.*losetup -d"):
        seed_image(str(plain), factory)
    assert factory.made == 0


def test_mounted_image_is_refused(tmp_path: Path, plain: Path, loop_of: str,
                                  factory: Counting) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _run_ok(["mount", "-o", "ro", loop_of, str(mnt)]):
        pytest.skip("cannot mount here")
    try:
        with pytest.raises(ImageRefused, match=f"mounted at {mnt}"):
            seed_image(str(plain), factory)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert factory.made == 0


@pytest.mark.skipif(shutil.which("qemu-nbd") is None, reason="qemu-utils missing")
def test_image_held_by_qemu_is_refused(tmp_path: Path, plain: Path, factory: Counting) -> None:
    sock = tmp_path / "nbd.sock"
    # qemu-nbd opens the image through QEMU's block layer, which takes QEMU's locks,
    # before it creates its socket
    proc = subprocess.Popen(["qemu-nbd", "-k", str(sock), "-f", "raw", str(plain)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        before = digest(plain)
        with pytest.raises(ImageRefused, match="in use.*lock"):
            seed_image(str(plain), factory)
        assert factory.made == 0 and digest(plain) == before
    finally:
        proc.terminate()
        proc.wait()
    # once QEMU is gone the same image is fine
    assert seed_image(str(plain), factory).backend == "debugfs"


def test_journal_needing_recovery_is_refused(plain: Path, factory: Counting) -> None:
    subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", str(plain)], check=True,
                   capture_output=True)
    with pytest.raises(ImageRefused, match="journal needs recovery"):
        seed_image(str(plain), factory)
    assert factory.made == 0


def _full_image(tmp_path: Path, with_dir: bool) -> Path:
    img = tmp_path / "full.raw"
    files = {"var/lib/seedtool/.keep": b""} if with_dir else {}
    root = make_root(tmp_path, "root", files=files)
    with open(img, "wb") as f:
        f.truncate(MiB)
    img.chmod(0o600)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-N", "64", "-d", str(root), str(img)],
                   check=True, capture_output=True)
    filler = tmp_path / "filler"
    filler.write_bytes(os.urandom(2 * MiB))  # random, so debugfs cannot make it sparse
    # fills every free block, then fails: the file system is now full
    subprocess.run(["debugfs", "-w", "-R", f"write {filler} /filler", str(img)],
                   check=True, capture_output=True)
    return img


@pytest.mark.parametrize("with_dir", [True, False], ids=["dir-exists", "dir-missing"])
def test_full_file_system_leaves_nothing_behind(tmp_path: Path, factory: Counting,
                                                with_dir: bool) -> None:
    img = _full_image(tmp_path, with_dir)
    with pytest.raises(FileSystemFull, match="full.*nothing was written"):
        seed_image(str(img), factory)
    assert not exists(img, 0, SEED)
    if with_dir:
        names = DebugfsTarget(img).listdir("/var/lib/seedtool")
        assert names == [".keep"]
    else:
        assert not exists(img, 0, "/var/lib/seedtool")
    fsck_clean(img, 0, MiB)


# ---- the debugfs backend as a general TargetFS ------------------------------------------


def test_debugfs_target_operations(tmp_path: Path, plain: Path) -> None:
    fs = DebugfsTarget(plain)
    fs.mkdir("/opt/a b/c", 0o750)
    assert stat.S_IMODE(fs.stat("/opt/a b").mode) == 0o750  # type: ignore[union-attr]
    fs.write("/opt/a b/c/f", b"one", mode=0o640, uid=12, gid=34)
    st = fs.stat("/opt/a b/c/f")
    assert st is not None and stat.S_ISREG(st.mode) and stat.S_IMODE(st.mode) == 0o640
    assert (st.uid, st.gid, st.size) == (12, 34, 3)
    fs.write("/opt/a b/c/f", b"two!", mode=0o600)
    assert fs.read("/opt/a b/c/f") == b"two!"
    fs.symlink("f", "/opt/a b/c/l")
    ls = fs.stat("/opt/a b/c/l")
    assert ls is not None and stat.S_ISLNK(ls.mode)
    assert fs.listdir("/opt/a b/c") == ["f", "l"]
    with pytest.raises(DebugfsError, match="not a regular file"):
        fs.read("/opt/a b/c/l")
    fs.remove("/opt/a b/c/l")
    fs.remove("/opt/a b/c/missing")
    assert fs.listdir("/opt/a b/c") == ["f"]
    assert fs.stat("/no/such/dir") is None and fs.stat("/opt/a b/c/f/x") is None
    with pytest.raises(DebugfsError, match="quote"):
        fs.write('/opt/"q"', b"x")
    with pytest.raises(DebugfsError, match="not a directory"):
        fs.write("/missing/f", b"x")
    with pytest.raises(DebugfsError, match="is a directory"):
        fs.remove("/opt")
    fs.close()
    fsck_clean(plain, 0, 16 * MiB)
    assert read_back(plain, 0, "/opt/a b/c/f")[:3] == (0o600, 0, 0)


def test_debugfs_target_refuses_what_is_not_ext(tmp_path: Path) -> None:
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(MiB))
    with pytest.raises(DebugfsError, match="debugfs failed"):
        DebugfsTarget(blank)


def test_detect_format(tmp_path: Path, plain: Path) -> None:
    assert detect_format(str(plain)) == "raw"
    if shutil.which("qemu-img"):
        for fmt in ("qcow2", "vmdk", "vhdx", "vdi", "vpc"):
            out = tmp_path / f"x.{fmt}"
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(out), "16M"],
                           check=True)
            assert detect_format(str(out)) == fmt


# ---- the command ------------------------------------------------------------------------


def test_cli_prints_id_partition_backend_never_the_seed(
        tmp_path: Path, keypair: tuple[Path, Path, PublicKey],
        trusted: list[tuple[bytes, bytes]]) -> None:
    img, offsets = partitioned(tmp_path, "gpt", [(8, "U", None),
                                                 (16, "L", make_root(tmp_path, "root"))])
    env = {**os.environ, "SEEDTOOL_KEY": str(keypair[0])}
    res = subprocess.run([sys.executable, "-m", "seedtool", "image", "seed", str(img),
                          "--json"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["partition"] == 2 and out["backend"] == "debugfs"
    _m, _u, _g, data = read_back(img, offsets[2])
    assert envelope.verify(data, trusted).seed_id_hex == out["seed_id"]
    text = data.decode().strip()
    assert text not in res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "seedtool", "image", "seed", str(img)],
                         capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "unconsumed seed" in res.stderr
    res = subprocess.run([sys.executable, "-m", "seedtool", "image", "seed", str(img),
                          "--force"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "partition 2 via debugfs" in res.stdout and "--force" in res.stdout
    assert read_back(img, offsets[2])[3].decode().strip() not in res.stdout + res.stderr


# ---- libguestfs (slow: one appliance boot each, about 15-30 s under TCG) ---------------


def _guestfs_ready() -> bool:
    from seedtool.image import guestfs

    try:
        guestfs.check_kernel()
    except Exception:
        return False
    return guestfs.available() and shutil.which("qemu-img") is not None


needs_guestfs = pytest.mark.skipif(
    not _guestfs_ready(),
    reason="libguestfs missing (apt-get install libguestfs-tools python3-guestfs "
           "linux-image-cloud-amd64)")


@needs_guestfs
def test_qcow2_image_goes_through_libguestfs(
        tmp_path: Path, factory: Counting, trusted: list[tuple[bytes, bytes]]) -> None:
    # enough of a distribution for libguestfs's inspection to call it Linux
    root = make_root(tmp_path, "root", files={
        "etc/fstab": b"/dev/sda2 / ext4 defaults 0 1\n", "etc/hosts": b"127.0.0.1 localhost\n",
        "usr/bin/.keep": b"", "usr/sbin/.keep": b""})
    (root / "bin").symlink_to("usr/bin")
    raw, offsets = partitioned(tmp_path, "gpt", [
        (8, "U", None), (24, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", root)])
    qcow = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow)], check=True)
    qcow.chmod(0o600)
    result = seed_image(str(qcow), factory)
    assert result.backend == "libguestfs" and "qcow2" in result.why
    assert factory.made == 1
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow), str(back)], check=True)
    check_seed(back, offsets[2], result, trusted)
    fsck_clean(back, offsets[2], 24 * MiB)


@needs_guestfs
def test_guestfs_target_operations_through_the_system_python(tmp_path: Path) -> None:
    from seedtool.image.guestfs import GuestfsError, GuestfsTarget

    img = tmp_path / "disk.raw"
    # a bare root with only os-release: inspection finds nothing, the fallback does
    mkfs(img, 32 * MiB, make_root(tmp_path, "root", files={"etc/hostname": b"base\n"}))
    fs = GuestfsTarget(img, fmt="raw", how="child")
    try:
        assert fs.mode.startswith("child") and fs.fstype == "ext4"
        assert fs.read("/etc/hostname") == b"base\n"
        fs.mkdir("/opt/x/y", 0o700)
        fs.write("/opt/x/y/f", b"\x00data\xff", mode=0o640, uid=5, gid=6)
        st = fs.stat("/opt/x/y/f")
        assert st is not None and stat.S_IMODE(st.mode) == 0o640 and (st.uid, st.gid) == (5, 6)
        fs.write("/opt/x/y/f", b"new", mode=0o600)
        fs.symlink("f", "/opt/x/y/l")
        ls = fs.stat("/opt/x/y/l")
        assert ls is not None and stat.S_ISLNK(ls.mode)
        assert fs.listdir("/opt/x/y") == ["f", "l"]
        fs.remove("/opt/x/y/l")
        fs.remove("/opt/x/y/nothing")
        assert fs.stat("/opt/nothing/x") is None
        with pytest.raises(GuestfsError, match="not a directory"):
            fs.write("/missing/f", b"x")
    finally:
        fs.close()
    assert read_back(img, 0, "/opt/x/y/f") == (0o600, 0, 0, b"new")
    assert _dir_mode(img, "/opt/x") == 0o700
    fsck_clean(img, 0, 32 * MiB)


def _dir_mode(img: Path, path: str, offset: int = 0) -> int:
    out = subprocess.run(["debugfs", "-R", f"stat {path}", debugfs_dev(img, offset)], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"Mode:\s+(\d+)", out)
    assert m
    return int(m.group(1), 8)



# ---- where the booted system reads: the image's /etc/fstab ------------------------------

ROOT_UUID = "0b5e7d1c-5eed-4d00-8a11-000000000001"
VAR_UUID = "0b5e7d1c-5eed-4d00-8a11-0000000000a2"
LIB_UUID = "0b5e7d1c-5eed-4d00-8a11-0000000000b3"
VAR_PARTUUID = "6a9e1c1f-2b33-4c44-9d55-e66f77a88b99"
MBR_ID = "0x5eed0a1b"
# what a real fstab holds besides the mounts on the seed's path
NOISE = ("# /etc/fstab: static file system information.\n"
         "#\n"
         "# <file system> <mount point> <type> <options> <dump> <pass>\n"
         "/dev/vda9\tnone\tswap\tsw\t0\t0\n"
         "tmpfs /tmp tmpfs nosuid,nodev,size=64m 0 0\n"
         "proc /proc proc defaults 0 0\n"
         "/srv/data /mnt/data none bind 0 0\n")


def fstab_image(tmp: Path, label: str, fstab: str, var_root: Path | None = None,
                with_lib: bool = False, root_files: dict[str, bytes] | None = None,
                name: str | None = None) -> tuple[Path, dict[int, int]]:
    """Root on partition 1 (with `fstab`), a /var file system on 2 (UUID VAR_UUID,
    label "var"; GPT: PARTUUID VAR_PARTUUID, PARTLABEL "varpart"), another on 3
    (UUID LIB_UUID, label "varlib"). MBR partition ids are MBR_ID-NN."""
    root = make_root(tmp, f"root-{name or label}", files={"etc/fstab": fstab.encode(),
                                                          **(root_files or {})})
    var = var_root or tmp / f"var-{name or label}"
    var.mkdir(exist_ok=True)
    if with_lib:
        (var / "lib").mkdir(exist_ok=True)
    lib = tmp / f"varlib-{name or label}"
    lib.mkdir(exist_ok=True)
    if label == "gpt":
        types = ["L", f"L, name=varpart, uuid={VAR_PARTUUID}", "L"]
        header = ""
    else:
        types, header = ["83", "83", "83"], f"label-id: {MBR_ID}\n"
    return partitioned(tmp, label, [(16, types[0], root), (8, types[1], var),
                                    (8, types[2], lib)], header=header, name=name,
                       mkfs_args={1: ("-U", ROOT_UUID), 2: ("-U", VAR_UUID, "-L", "var"),
                                  3: ("-U", LIB_UUID, "-L", "varlib")})


def _var(spec: str, options: str = "defaults") -> str:
    return f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n{spec} /var ext4 {options} 0 2\n"


@pytest.mark.parametrize("label,spec,options", [
    ("gpt", f"UUID={VAR_UUID}", "defaults"),
    ("gpt", f'UUID="{VAR_UUID.upper()}"', "defaults"),
    ("gpt", "LABEL=var", "defaults,noatime"),
    ("gpt", f"PARTUUID={VAR_PARTUUID}", "defaults"),
    ("gpt", "PARTLABEL=varpart", "defaults"),
    ("gpt", f"/dev/disk/by-uuid/{VAR_UUID}", "defaults"),
    ("gpt", f"/dev/disk/by-partuuid/{VAR_PARTUUID}", "defaults"),
    ("dos", f"PARTUUID={MBR_ID[2:]}-02", "defaults"),
    ("dos", "/dev/vda2", "defaults"),
    ("dos", "/dev/sda2", "defaults"),
    ("gpt", "/dev/nvme0n1p2", "defaults"),
    # noauto still counts: the early unit's RequiresMountsFor= pulls it in
    ("gpt", "LABEL=var", "noauto,x-systemd.automount"),
], ids=["uuid", "uuid-quoted-upper", "label", "partuuid-gpt", "partlabel",
        "by-uuid", "by-partuuid", "partuuid-mbr", "vda2", "sda2", "nvme", "noauto"])
def test_separate_var_gets_the_seed_below_its_mount_point(
        tmp_path: Path, factory: Counting, trusted: list[tuple[bytes, bytes]],
        label: str, spec: str, options: str) -> None:
    img, offsets = fstab_image(tmp_path, label, NOISE + _var(spec, options))
    result = seed_image(str(img), factory)
    assert (result.partition, result.root_partition) == (2, 1)
    assert (result.mount_point, result.seed_path) == ("/var", "/lib/seedtool/seed")
    assert result.where == "partition 2 (mounted at /var)"
    mode, uid, gid, data = read_back(img, offsets[2], "/lib/seedtool/seed")
    assert (mode, uid, gid) == (0o600, 0, 0)
    assert envelope.verify(data, trusted).seed_id_hex == result.seed_id
    # the directories made on the fresh /var: lib like any /var/lib, seedtool 0700
    assert _dir_mode(img, "/lib", offsets[2]) == 0o755
    assert _dir_mode(img, "/lib/seedtool", offsets[2]) == 0o700
    # no path to a hidden copy: nothing under the root's own /var, nor elsewhere
    assert not exists(img, offsets[1], "/var/lib/seedtool")
    assert not exists(img, offsets[3], "/seedtool")
    for n, size in ((1, 16), (2, 8)):
        fsck_clean(img, offsets[n], size * MiB)


def test_separate_var_lib_wins_over_var(tmp_path: Path, factory: Counting,
                                        trusted: list[tuple[bytes, bytes]]) -> None:
    fstab = _var(f"UUID={VAR_UUID}") + "LABEL=varlib\t/var/lib/\text4\tdefaults\t0\t2\n"
    img, offsets = fstab_image(tmp_path, "gpt", NOISE + fstab, with_lib=True)
    result = seed_image(str(img), factory)
    assert (result.partition, result.mount_point, result.seed_path) == (
        3, "/var/lib", "/seedtool/seed")
    data = read_back(img, offsets[3], "/seedtool/seed")[3]
    assert envelope.verify(data, trusted).seed_id_hex == result.seed_id
    assert not exists(img, offsets[2], "/lib/seedtool")
    assert not exists(img, offsets[1], "/var/lib/seedtool")


def test_var_lib_seedtool_bind_mounted_from_another_file_system(
        tmp_path: Path, factory: Counting, trusted: list[tuple[bytes, bytes]]) -> None:
    # /srv on partition 2; /var/lib/seedtool is bound from /srv/state (fstab(5) "bind")
    var = tmp_path / "srv"
    (var / "state").mkdir(parents=True)
    fstab = (f"UUID={ROOT_UUID} / ext4 defaults 0 1\nUUID={VAR_UUID} /srv ext4 defaults 0 2\n"
             "/srv/state /var/lib/seedtool none bind 0 0\n")
    img, offsets = fstab_image(tmp_path, "gpt", fstab, var_root=var)
    result = seed_image(str(img), factory)
    assert (result.partition, result.seed_path) == (2, "/state/seed")
    data = read_back(img, offsets[2], "/state/seed")[3]
    assert envelope.verify(data, trusted).seed_id_hex == result.seed_id
    assert not exists(img, offsets[1], "/var/lib/seedtool/seed")


def test_without_separate_var_the_root_gets_it(tmp_path: Path, factory: Counting,
                                               trusted: list[tuple[bytes, bytes]]) -> None:
    # /var/lib2 and /varx are not on the seed's path; the root's own entry is not a mount
    fstab = (f"UUID={ROOT_UUID} / ext4 defaults 0 1\nUUID={VAR_UUID} /varx ext4 defaults 0 2\n"
             f"UUID={LIB_UUID} /var/lib2 ext4 defaults 0 2\n")
    img, offsets = fstab_image(tmp_path, "gpt", NOISE + fstab)
    result = seed_image(str(img), factory)
    assert (result.partition, result.seed_path, result.mount_point) == (1, SEED, "/")
    check_seed(img, offsets[1], result, trusted)
    assert not exists(img, offsets[2], "/lib")


@pytest.mark.parametrize("marker", ["ledger", "status.json"])
def test_booted_check_reads_the_var_file_system(
        tmp_path: Path, factory: Counting, trusted: list[tuple[bytes, bytes]],
        marker: str) -> None:
    var = tmp_path / "var-booted"
    (var / "lib/seedtool").mkdir(parents=True)
    (var / f"lib/seedtool/{marker}").write_bytes(b"x\n")
    img, offsets = fstab_image(tmp_path, "gpt", _var(f"UUID={VAR_UUID}"), var_root=var)
    before = digest(img)
    with pytest.raises(ImageRefused,
                       match=f"already booted.*/lib/seedtool/{marker} exists on the file "
                             "system mounted at /var"):
        seed_image(str(img), factory)
    assert factory.made == 0 and digest(img) == before
    result = seed_image(str(img), factory, force=True)
    assert result.replaced and result.partition == 2
    assert read_back(img, offsets[2], f"/lib/seedtool/{marker}")[3] == b"x\n"


def test_unconsumed_seed_on_the_var_file_system_is_found(
        tmp_path: Path, factory: Counting) -> None:
    img, _ = fstab_image(tmp_path, "gpt", _var("LABEL=var"))
    seed_image(str(img), factory)
    before = digest(img)
    with pytest.raises(ImageRefused, match="unconsumed seed.*/lib/seedtool/seed"):
        seed_image(str(img), factory)
    assert digest(img) == before


def test_a_seed_hidden_under_the_var_mount_is_reported(
        tmp_path: Path, factory: Counting) -> None:
    img, offsets = fstab_image(tmp_path, "gpt", _var("LABEL=var"),
                               root_files={"var/lib/seedtool/seed": b"old\n"})
    result = seed_image(str(img), factory)
    assert result.partition == 2
    assert any("hidden under the /var mount" in w for w in result.warnings)
    assert read_back(img, offsets[1], SEED)[3] == b"old\n"  # not ours to remove


def _luks_partition(tmp: Path) -> Path:
    part = tmp / "luks.part"
    with open(part, "wb") as f:
        f.truncate(8 * MiB)
    key = tmp / "luks.key"
    key.write_bytes(b"test passphrase, not a secret")
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf",
                    "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", str(key),
                    str(part)], check=True, capture_output=True)
    return part


REFUSED = [
    ("lvm-mapper", "/dev/mapper/vg0-var /var ext4 defaults 0 2",
     r"mounts /var from /dev/mapper/vg0-var .*device-mapper.*--backend libguestfs"),
    ("lvm-vg-lv", "/dev/vg0/var /var ext4 defaults 0 2",
     r"mounts /var from /dev/vg0/var .*LVM, LUKS"),
    ("crypt", "/dev/mapper/var_crypt /var/lib ext4 defaults 0 2",
     r"mounts /var/lib from /dev/mapper/var_crypt .*LUKS"),
    ("luks-inner-uuid", f"UUID={LIB_UUID[:-1]}f /var ext4 defaults 0 2",
     r"mounts /var from UUID=.*no file system of this image has UUID=.*inside partition 2 "
     r"\(LUKS\)"),
    ("nfs", "fileserver:/export/var /var nfs4 defaults,_netdev 0 0",
     r"mounts /var from fileserver:/export/var \(nfs4\).*network file system"),
    ("cifs", "//fs/share /var/lib/seedtool cifs credentials=/etc/c 0 0",
     r"mounts /var/lib/seedtool from //fs/share.*network"),
    ("tmpfs-var", "tmpfs /var tmpfs size=64m 0 0", r"mounts /var from tmpfs.*vanish"),
    ("tmpfs-var-lib", "tmpfs /var/lib tmpfs defaults 0 0", r"mounts /var/lib from.*vanish"),
    ("missing-uuid", "UUID=11111111-2222-3333-4444-555555555555 /var ext4 defaults 0 2",
     r"mounts /var from UUID=11111111-.*no file system of this image has"),
    ("missing-label", "LABEL=nosuch /var ext4 defaults 0 2", r"no file system .*LABEL=nosuch"),
    ("other-disk", "/dev/vdb1 /var ext4 defaults 0 2",
     r"mounts /var from /dev/vdb1 .*another disk"),
    ("no-partition", "/dev/vda7 /var ext4 defaults 0 2", r"has no partition 7"),
    ("by-id", "/dev/disk/by-id/virtio-abc-part2 /var ext4 defaults 0 2",
     r"by-id.*UUID="),
    ("not-ext", "PARTUUID={blank} /var ext4 defaults 0 2",
     r"mounts /var from PARTUUID=.*partition 3.*debugfs path writes ext2/3/4 only.*"
     r"--backend libguestfs"),
    ("vfat", "UUID={vfat} /var vfat defaults 0 2",
     r"mounts /var from UUID=.*partition 3.*--backend libguestfs"),
    ("overlay", "overlay /var overlay lowerdir=/a,upperdir=/b 0 0", r"overlay is not"),
    ("duplicate", f"UUID={VAR_UUID} /var ext4 defaults 0 2\nLABEL=varlib /var ext4 "
     "defaults 0 2", r"line 3 mounts /var too"),
]


@pytest.mark.parametrize("case,fstab_line,pattern", REFUSED, ids=[r[0] for r in REFUSED])
def test_mounts_seedtool_cannot_write_are_refused_naming_them(
        tmp_path: Path, factory: Counting, case: str, fstab_line: str, pattern: str) -> None:
    img, offsets = fstab_image(tmp_path, "gpt", "")
    if case == "luks-inner-uuid":  # partition 2 is a real LUKS2 container
        if not shutil.which("cryptsetup"):
            pytest.fail("cryptsetup missing: scripts/test installs cryptsetup-bin")
        with open(img, "r+b") as out, open(_luks_partition(tmp_path), "rb") as src:
            out.seek(offsets[2])
            shutil.copyfileobj(src, out)
    elif case == "not-ext":  # partition 3 holds no file system at all
        with open(img, "r+b") as out:
            out.seek(offsets[3])
            out.write(bytes(MiB))
        fstab_line = fstab_line.replace("{blank}", read_partitions_json(img)[3]["uuid"])
    elif case == "vfat":  # partition 3 is FAT, found by blkid
        if not (shutil.which("mkfs.vfat") and shutil.which("blkid")):
            pytest.fail("mkfs.vfat or blkid missing: scripts/test installs dosfstools")
        vfat = tmp_path / "vfat.part"
        with open(vfat, "wb") as f:
            f.truncate(8 * MiB)
        subprocess.run(["mkfs.vfat", "-i", "5eed0a1b", str(vfat)], check=True,
                       capture_output=True)
        with open(img, "r+b") as out, open(vfat, "rb") as src:
            out.seek(offsets[3])
            shutil.copyfileobj(src, out)
        fstab_line = fstab_line.replace("{vfat}", "5EED-0A1B")
    _set_fstab(img, offsets[1], f"UUID={ROOT_UUID} / ext4 defaults 0 1\n{fstab_line}\n")
    before = digest(img)
    with pytest.raises(MountRefused, match=pattern) as err:
        seed_image(str(img), factory)
    assert "/etc/fstab (line" in str(err.value)
    assert factory.made == 0 and digest(img) == before


def read_partitions_json(img: Path) -> dict[int, dict[str, str]]:
    table = json.loads(subprocess.run(["sfdisk", "-J", str(img)], check=True,
                                      capture_output=True).stdout)["partitiontable"]
    return {int(p["node"].rsplit("img", 1)[1]): p for p in table["partitions"]}


def _set_fstab(img: Path, offset: int, text: str) -> None:
    fs = DebugfsTarget(img, offset)
    fs.write("/etc/fstab", text.encode())
    fs.close()


def test_whole_disk_image_with_var_elsewhere_is_refused(tmp_path: Path,
                                                        factory: Counting) -> None:
    img = tmp_path / "disk.raw"
    mkfs(img, 16 * MiB, make_root(tmp_path, "root", files={
        "etc/fstab": f"/dev/vda / ext4 defaults 0 1\nUUID={VAR_UUID} /var ext4 defaults 0 2\n"
        .encode()}))
    before = digest(img)
    with pytest.raises(MountRefused, match=r"mounts /var from UUID=.*no file system of this "
                                           r"image"):
        seed_image(str(img), factory)
    assert factory.made == 0 and digest(img) == before


def test_cli_reports_the_var_file_system(tmp_path: Path, keypair: tuple[Path, Path, PublicKey],
                                         trusted: list[tuple[bytes, bytes]]) -> None:
    img, offsets = fstab_image(tmp_path, "dos", NOISE + _var(f"PARTUUID={MBR_ID[2:]}-02"))
    env = {**os.environ, "SEEDTOOL_KEY": str(keypair[0])}
    res = subprocess.run([sys.executable, "-m", "seedtool", "image", "seed", str(img),
                          "--json"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["partition"], out["root_partition"], out["mount_point"], out["seed_path"]) \
        == (2, 1, "/var", "/lib/seedtool/seed")
    data = read_back(img, offsets[2], "/lib/seedtool/seed")[3]
    assert envelope.verify(data, trusted).seed_id_hex == out["seed_id"]
    assert data.decode().strip() not in res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "seedtool", "image", "seed", str(img),
                          "--force"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert ("written to /var/lib/seedtool/seed on partition 2 (mounted at /var), as "
            "/lib/seedtool/seed there via debugfs") in res.stdout
    tmpfs = fstab_image(tmp_path, "gpt", "tmpfs /var/lib tmpfs defaults 0 0\n",
                        name="tmpfs")[0]
    res = subprocess.run([sys.executable, "-m", "seedtool", "image", "seed", str(tmpfs)],
                         capture_output=True, text=True, env=env)
    assert res.returncode != 0
    assert "mounts /var/lib from tmpfs" in res.stderr and "Traceback" not in res.stderr


# ---- a readable image gives its seed away -----------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_readable_image_is_refused_unless_allowed(
        plain: Path, factory: Counting, trusted: list[tuple[bytes, bytes]], mode: int) -> None:
    plain.chmod(mode)
    before = digest(plain)
    with pytest.raises(ImageRefused, match=rf"readable by group or others \(mode 0{mode:o}\)"
                                           rf".*chmod 600 {re.escape(str(plain))}.*"
                                           "--allow-readable-image"):
        seed_image(str(plain), factory)
    assert factory.made == 0 and digest(plain) == before
    result = seed_image(str(plain), factory, allow_readable=True)
    check_seed(plain, 0, result, trusted)
    assert stat.S_IMODE(plain.stat().st_mode) == mode  # the image's mode is the user's


def test_cli_refuses_a_readable_image_and_takes_the_flag(
        plain: Path, keypair: tuple[Path, Path, PublicKey],
        trusted: list[tuple[bytes, bytes]]) -> None:
    env = {**os.environ, "SEEDTOOL_KEY": str(keypair[0])}
    cmd = [sys.executable, "-m", "seedtool", "image", "seed", str(plain)]
    help_text = subprocess.run([*cmd[:5], "--help"], capture_output=True, text=True).stdout
    assert "--allow-readable-image" in help_text and "chmod 600" in help_text
    plain.chmod(0o644)
    before = digest(plain)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode != 0 and f"chmod 600 {plain}" in res.stderr
    assert "Traceback" not in res.stderr and digest(plain) == before
    res = subprocess.run([*cmd, "--allow-readable-image", "--json"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0, res.stderr
    data = read_back(plain, 0)[3]
    assert envelope.verify(data, trusted).seed_id_hex == json.loads(res.stdout)["seed_id"]


def _guestfs_var_qcow2(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    """A qcow2 disk: a distribution-like root on 1, /var on 2 by UUID (fstab)."""
    fstab = (f"UUID={ROOT_UUID} / ext4 defaults 0 1\nUUID={VAR_UUID} /var ext4 defaults 0 2\n"
             "tmpfs /tmp tmpfs defaults 0 0\n")
    raw, offsets = fstab_image(tmp_path, "gpt", fstab, root_files={
        "etc/hosts": b"127.0.0.1 localhost\n", "usr/bin/.keep": b"", "usr/sbin/.keep": b""})
    # the /bin link libguestfs's inspection looks for
    fs = DebugfsTarget(raw, offsets[1])
    fs.symlink("usr/bin", "/bin")
    fs.close()
    qcow = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow)], check=True)
    qcow.chmod(0o600)
    return qcow, offsets


@needs_guestfs
def test_libguestfs_writes_to_the_var_file_system_it_mounted(
        tmp_path: Path, factory: Counting, trusted: list[tuple[bytes, bytes]]) -> None:
    qcow, offsets = _guestfs_var_qcow2(tmp_path)
    result = seed_image(str(qcow), factory)
    assert result.backend == "libguestfs" and result.mount_point == "/var"
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow), str(back)], check=True)
    data = read_back(back, offsets[2], "/lib/seedtool/seed")[3]
    assert envelope.verify(data, trusted).seed_id_hex == result.seed_id
    assert not exists(back, offsets[1], "/var/lib/seedtool")


@needs_guestfs
def test_libguestfs_refuses_a_var_it_did_not_mount(tmp_path: Path, factory: Counting) -> None:
    qcow, offsets = _guestfs_var_qcow2(tmp_path)
    # with --partition libguestfs mounts only that root, so /var would be the root's
    with pytest.raises(MountRefused, match=r"mounts /var from UUID=.*libguestfs did not "
                                           r"mount it.*--partition"):
        seed_image(str(qcow), factory, partition=1)
    assert factory.made == 0
    # (libguestfs mounted the root read-write, which updates its superblock's mount
    # time, so the image's bytes are not compared: no file was written)
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow), str(back)], check=True)
    assert not exists(back, offsets[1], "/var/lib/seedtool")
    assert not exists(back, offsets[2], "/lib/seedtool")


@pytest.mark.parametrize("unit", ["etc/systemd/system/var.mount",
                                  "usr/lib/systemd/system/var-lib.mount"])
def test_a_systemd_mount_unit_on_the_seed_path_is_refused(
        tmp_path: Path, factory: Counting, unit: str) -> None:
    img, _ = fstab_image(tmp_path, "gpt", f"UUID={ROOT_UUID} / ext4 defaults 0 1\n",
                         root_files={unit: b"[Mount]\nWhat=/dev/vda2\nWhere=/var\n"})
    before = digest(img)
    with pytest.raises(MountRefused, match=rf"/{unit} mounts /var.*follows /etc/fstab only"):
        seed_image(str(img), factory)
    assert factory.made == 0 and digest(img) == before
