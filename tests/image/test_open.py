"""`open_target`: the one way `image seed`, `bake` and `bake --check` open a target, and
the file-system interface every backend implements in full."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from seedtool.image.debugfs import DebugfsTarget
from seedtool.image.fs import TargetFS
from seedtool.image.guestfs import GuestfsTarget
from seedtool.image.inuse import ImageRefused, check_not_locked
from seedtool.image.localfs import LocalFS
from seedtool.image.open import Image, Root, open_target
from seedtool.shared.errors import DeliveryError

#: every operation of the interface (methods, not the `description` attribute)
OPERATIONS = sorted(n for n, v in vars(TargetFS).items()
                    if callable(v) and not n.startswith("_"))


@pytest.mark.parametrize("backend", [LocalFS, DebugfsTarget, GuestfsTarget])
def test_every_backend_implements_every_operation(backend: type) -> None:
    assert {"stat", "read", "write", "mkdir", "remove", "rmdir", "listdir", "symlink",
            "readlink", "scandir", "read_chunks", "mounts", "close"} <= set(OPERATIONS)
    assert TargetFS in backend.__mro__
    missing = [n for n in OPERATIONS if getattr(backend, n) is getattr(TargetFS, n)]
    assert missing == []


def test_a_directory_opens_as_itself(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("h\n")
    with open_target(Root(str(tmp_path)), writable=False) as opened:
        assert opened.backend == "directory" and opened.partition is None
        assert opened.fs.read("/etc/hostname") == b"h\n"
        assert opened.fs.mounts() == {"/"}
    with pytest.raises(DeliveryError, match="disk images only"):
        with open_target(Root(str(tmp_path)), writable=False, partition=1):
            pass


def test_a_missing_image_is_one_clear_error(tmp_path: Path) -> None:
    for writable in (False, True):
        with pytest.raises(DeliveryError, match="check the path"):
            with open_target(Image(str(tmp_path / "no.raw")), writable=writable):
                pass


@pytest.fixture
def ext4_image(tmp_path: Path) -> Path:
    if not (shutil.which("mkfs.ext4") and shutil.which("debugfs")):
        pytest.fail("needs e2fsprogs (mkfs.ext4, debugfs): scripts/test installs it")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text("ID=debian\n")
    img = tmp_path / "disk.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img), "16M"], check=True)
    img.chmod(0o600)
    return img


def _locked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        check_not_locked(fd, str(path))
        return False
    except ImageRefused:
        return True
    finally:
        os.close(fd)


def test_a_raw_image_is_locked_only_while_it_is_written(ext4_image: Path) -> None:
    with open_target(Image(str(ext4_image)), writable=True) as opened:
        assert opened.backend == "debugfs" and opened.format == "raw"
        assert opened.fs.mounts() == {"/"}
        assert _locked(ext4_image)
        opened.fs.write("/etc/x", b"x\n")
    assert not _locked(ext4_image)
    with open_target(Image(str(ext4_image)), writable=False) as opened:
        assert not _locked(ext4_image)
        assert opened.fs.read("/etc/x") == b"x\n"


def test_an_image_others_may_read_is_refused_only_when_asked(ext4_image: Path) -> None:
    ext4_image.chmod(0o644)
    with open_target(Image(str(ext4_image)), writable=False):
        pass
    with pytest.raises(ImageRefused, match="readable by group or others"):
        with open_target(Image(str(ext4_image)), writable=True, allow_readable=False):
            pass


def test_a_failure_inside_the_block_is_the_one_reported(ext4_image: Path) -> None:
    with pytest.raises(RuntimeError, match="inside"):
        with open_target(Image(str(ext4_image)), writable=True):
            raise RuntimeError("inside")
    assert not _locked(ext4_image)


def test_only_open_target_makes_a_backend() -> None:
    """`image seed`, `bake` and `bake --check` (and any later command) get their file
    system from `open_target`: no other product module constructs a backend."""
    import ast

    import seedtool

    backends = {"LocalFS", "DebugfsTarget", "GuestfsTarget"}
    pkg = Path(seedtool.__file__).parent
    makers = set()
    for src in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(src.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in backends):
                makers.add(src.relative_to(pkg).as_posix())
    assert makers == {"image/open.py"}
