"""`TargetFS` over libguestfs: any image format and file system (qcow2, vmdk, vhdx,
xfs, btrfs, LVM...), at the price of booting a small appliance VM (about 15 s here).

Where the binding comes from. libguestfs' Python binding is Debian's `python3-guestfs`,
installed into `/usr/lib/python3/dist-packages` for Debian's own `/usr/bin/python3`; a
virtualenv or pyenv Python does not see that directory. We do not add the whole
directory to `sys.path` (Debian's copies of other libraries would then shadow the
project's), but:

1. `import guestfs` if this Python already finds it;
2. else load exactly `guestfs.py` and its C extension `libguestfsmod` from
   dist-packages, when the extension was built for this interpreter's ABI (its file
   name ends with this Python's `EXT_SUFFIX`, e.g. `.cpython-311-x86_64-linux-gnu.so`);
3. else run the libguestfs calls in a child `/usr/bin/python3 -I` (Debian's Python,
   which has the binding) that executes calls sent as JSON lines on its stdin: the
   same calls, just in another process.

Backend settings. Where /dev/kvm is missing or a software shim under which QEMU fails
(e.g. "failed to set MSR 0x10a") and libvirt is not set up, libguestfs works only with
the direct backend and TCG: `LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=
force_tcg` (guestfs(3), "BACKEND" and "BACKEND SETTINGS"). When the user has not set
those variables we make that choice through the API (`set_backend`,
`set_backend_settings`) rather than by changing our environment; anyone with working
KVM sets `LIBGUESTFS_BACKEND_SETTINGS=` (empty) to get it back.

Writes go to a temporary name in the same directory, created under umask 077, get
their mode and owner, are read back and compared in constant time, and are then
renamed into place; on any failure the temporary file is removed. Never puts file
contents into an error message.
"""

from __future__ import annotations

import base64
import errno
import glob
import importlib.util
import json
import os
import secrets
import stat as stat_mod
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from ..shared.errors import DeliveryError
from .fs import FileStat, TargetFS
from .guards import check_file_target, check_reads_back, file_to_remove, missing_dirs

#: names per `lstatnslist` call and bytes per `pread` call: libguestfs' protocol limits a
#: message to 4 MiB (GUESTFS_MESSAGE_MAX in its protocol definition)
_STAT_BATCH = 500
_PREAD_MAX = 1 << 20

DIST_PACKAGES = "/usr/lib/python3/dist-packages"
SYSTEM_PYTHON = "/usr/bin/python3"
INSTALL_HINT = (
    "install libguestfs and its Python binding (apt-get install python3-guestfs "
    "libguestfs-tools) and a kernel for its appliance (apt-get install "
    "linux-image-cloud-amd64)"
)


class GuestfsError(DeliveryError):
    """libguestfs is missing, could not start, or failed an operation."""


class GuestfsFull(GuestfsError):
    """The file system inside the image has no room; nothing was written."""


class GuestfsNoRoot(GuestfsError):
    """libguestfs found no (or more than one) Linux operating system in the image."""


# ---- finding the binding -------------------------------------------------------------------


def _load_dist_packages() -> ModuleType | None:
    """guestfs from Debian's dist-packages, if its C extension matches this Python."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ""
    ext = os.path.join(DIST_PACKAGES, f"libguestfsmod{suffix}")
    py = os.path.join(DIST_PACKAGES, "guestfs.py")
    if not (suffix and os.path.exists(ext) and os.path.exists(py)):
        return None
    loaded: list[str] = []
    try:
        for name, path in (("libguestfsmod", ext), ("guestfs", py)):
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                return None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod  # guestfs.py does `import libguestfsmod`
            loaded.append(name)
            spec.loader.exec_module(mod)
        return sys.modules["guestfs"]
    except (ImportError, OSError, SyntaxError):
        for name in loaded:
            sys.modules.pop(name, None)
        return None


def find_binding() -> ModuleType | None:
    """The guestfs module usable in this process, or None (then try the child process)."""
    try:
        import guestfs  # type: ignore[import-not-found,unused-ignore]

        return guestfs  # type: ignore[no-any-return,unused-ignore]
    except ImportError:
        return _load_dist_packages()


def system_python_has_binding(python: str = SYSTEM_PYTHON) -> bool:
    if not os.access(python, os.X_OK):
        return False
    try:
        res = subprocess.run([python, "-I", "-c", "import guestfs"], capture_output=True,
                             timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def check_kernel() -> None:
    """supermin builds the appliance from the host's kernel in /boot (or SUPERMIN_KERNEL)."""
    if os.environ.get("SUPERMIN_KERNEL") or os.environ.get("LIBGUESTFS_PATH"):
        return
    kernels = glob.glob("/boot/vmlinuz-*")
    if not kernels:
        raise GuestfsError(
            "libguestfs needs a Linux kernel in /boot to build its appliance and there is "
            "none; install one (apt-get install linux-image-cloud-amd64)"
        )
    if not any(os.access(k, os.R_OK) for k in kernels):
        raise GuestfsError(
            "libguestfs cannot read any kernel in /boot (Debian installs them mode 0600); "
            "run as root or make one readable (chmod 0644 /boot/vmlinuz-*)"
        )


# ---- the two ways of calling libguestfs ---------------------------------------------------


class _Call(Exception):
    """A libguestfs call failed: carries its message and errno (never file contents)."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


#: errors we act on; the Python binding raises RuntimeError with the daemon's message,
#: which ends in strerror(errno) (guestfs(3) "ERROR HANDLING"), and no errno attribute
_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.ENOSPC, errno.EDQUOT, errno.EEXIST,
           errno.EROFS)


def _errno_of(message: str) -> int:
    for code in _ERRNOS:
        if message.rstrip().endswith(os.strerror(code)):
            return code
    return 0


class _InProcess:
    def __init__(self, mod: ModuleType) -> None:
        self._g = mod.GuestFS(python_return_dict=True)
        self.mode = "in-process"

    def __call__(self, name: str, *args: Any, **kw: Any) -> Any:
        try:
            return getattr(self._g, name)(*args, **kw)
        except RuntimeError as e:
            raise _Call(str(e), _errno_of(str(e))) from None

    def close(self) -> None:
        try:
            self._g.close()
        except RuntimeError:
            pass


# The child program: standard library and guestfs only, run with `python3 -I` so that
# neither our environment's PYTHONPATH nor the user's site directory reaches it.
# Protocol: one JSON object per line each way; bytes travel as {"b64": "..."}.
_WORKER = r"""
import base64, json, sys
import guestfs
def dec(v):
    if isinstance(v, dict) and "b64" in v:
        return base64.b64decode(v["b64"])
    if isinstance(v, list):
        return [dec(x) for x in v]
    return v
def enc(v):
    if isinstance(v, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        return {k: enc(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [enc(x) for x in v]
    return v
g = guestfs.GuestFS(python_return_dict=True)
out = sys.stdout
sys.stdout = sys.stderr
for line in sys.stdin:
    req = json.loads(line)
    try:
        res = {"r": enc(getattr(g, req["m"])(*dec(req["a"]), **req["k"]))}
    except RuntimeError as e:
        res = {"e": str(e), "errno": 0}
    out.write(json.dumps(res) + "\n")
    out.flush()
g.close()
"""


class _Child:
    def __init__(self, python: str = SYSTEM_PYTHON) -> None:
        self.mode = f"child {python}"
        try:
            self._proc = subprocess.Popen([python, "-I", "-c", _WORKER], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as e:
            raise GuestfsError(f"cannot start {python} for libguestfs: {e.strerror}") from None

    @staticmethod
    def _enc(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            return {"b64": base64.b64encode(bytes(v)).decode()}
        if isinstance(v, (list, tuple)):
            return [_Child._enc(x) for x in v]
        return v

    @staticmethod
    def _dec(v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) == {"b64"}:
                return base64.b64decode(v["b64"])
            return {k: _Child._dec(x) for k, x in v.items()}
        if isinstance(v, list):
            return [_Child._dec(x) for x in v]
        return v

    def __call__(self, name: str, *args: Any, **kw: Any) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        line = json.dumps({"m": name, "a": self._enc(list(args)), "k": kw}) + "\n"
        try:
            self._proc.stdin.write(line.encode())
            self._proc.stdin.flush()
            reply = self._proc.stdout.readline()
        except OSError:
            reply = b""
        if not reply:
            raise GuestfsError(
                "the libguestfs helper process (Debian's python3 with python3-guestfs) "
                f"exited during {name}; run `guestfish -a IMAGE run` to see why"
            )
        res = json.loads(reply)
        if "e" in res:
            raise _Call(str(res["e"]), _errno_of(str(res["e"])))
        return self._dec(res["r"])

    def close(self) -> None:
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _handle(how: str) -> _InProcess | _Child:
    """how: "auto", "in-process" or "child" (tests use the last two to reach both)."""
    if how in ("auto", "in-process"):
        mod = find_binding()
        if mod is not None:
            return _InProcess(mod)
        if how == "in-process":
            raise GuestfsError(
                "the libguestfs Python binding cannot be loaded into this Python (none "
                f"matches {sysconfig.get_config_var('EXT_SUFFIX')}); {INSTALL_HINT}"
            )
    if system_python_has_binding():
        return _Child()
    raise GuestfsError(f"libguestfs is not installed: {INSTALL_HINT}")


# ---- the target -------------------------------------------------------------------------


class GuestfsTarget(TargetFS):
    """The Linux root file system (with its other mounts) of a disk image, via libguestfs.

    `root`: a device as libguestfs names it (e.g. "/dev/sda2") to use instead of
    inspection, which otherwise must find exactly one operating system. `fmt`: the
    image format ("raw", "qcow2"...) or None to let QEMU probe it (it refuses to
    probe raw images for writing, so pass "raw" for those). `readonly` mounts read-only.
    """

    def __init__(self, image: str | os.PathLike[str], fmt: str | None = None,
                 root: str | None = None, readonly: bool = False, how: str = "auto") -> None:
        self.image = os.fspath(image)
        check_kernel()
        self._g: _InProcess | _Child | None = _handle(how)
        self.mode = self._g.mode
        self._closed = False
        try:
            self._launch(fmt, readonly)
            self.root = self._mount(root, readonly)
        except BaseException:
            self._shutdown(sync=False)
            raise
        self.description = (f"{os.path.basename(self.image)} ({self.fstype} {self.root}, "
                            "libguestfs)")

    def _call(self, name: str, *args: Any, **kw: Any) -> Any:
        if self._g is None:
            raise GuestfsError(f"{self.image} is already closed")
        return self._g(name, *args, **kw)

    def _launch(self, fmt: str | None, readonly: bool) -> None:
        if "LIBGUESTFS_BACKEND" not in os.environ:
            self._call("set_backend", "direct")
        if "LIBGUESTFS_BACKEND_SETTINGS" not in os.environ:
            self._call("set_backend_settings", ["force_tcg"])
        opts: dict[str, Any] = {"readonly": readonly}
        if fmt:
            opts["format"] = fmt
        try:
            self._call("add_drive_opts", self.image, **opts)
            self._call("launch")
        except _Call as e:
            raise GuestfsError(
                f"libguestfs could not open {self.image}: {str(e)[:300]}; run "
                "libguestfs-test-tool to see why"
            ) from None

    def _mount(self, root: str | None, readonly: bool) -> str:
        mount = "mount_ro" if readonly else "mount"
        if root is None:
            roots = [r for r in self._call("inspect_os")
                     if self._call("inspect_get_type", r) == "linux"]
            if not roots:
                # inspection wants a recognisable distribution (fstab, /bin...); a root
                # is also anything with os-release, the rule the fast path uses
                found = self._os_release_roots()
                if len(found) == 1:
                    self._call(mount, found[0], "/")
                    self.fstype = str(self._call("vfs_type", found[0]))
                    return found[0]
                roots = found
            if not roots:
                raise GuestfsNoRoot(
                    f"no Linux root file system was found in {self.image}; check that it is "
                    "the right image, or name the partition with --partition"
                )
            if len(roots) > 1:
                raise GuestfsNoRoot(
                    f"{self.image} holds several Linux systems ({', '.join(roots)}); name "
                    "the one to use with --partition"
                )
            root = roots[0]
            points = self._call("inspect_get_mountpoints", root)
            # mount / first, then deeper mount points (e.g. a separate /var)
            for mp in sorted(points, key=lambda p: (p.count("/") if p != "/" else 0, p)):
                try:
                    self._call(mount, points[mp], mp)
                except _Call:
                    if mp == "/":
                        raise
        else:
            try:
                self._call(mount, root, "/")
            except _Call as e:
                raise GuestfsError(
                    f"cannot mount {root} of {self.image}: {str(e)[:200]}; check the "
                    "partition number"
                ) from None
        self.fstype = str(self._call("vfs_type", root))
        return root

    def _os_release_roots(self) -> list[str]:
        found = []
        for dev, fstype in sorted(self._call("list_filesystems").items()):
            if fstype in ("swap", "unknown", "vfat", "iso9660", "squashfs"):
                continue
            try:
                self._call("mount_ro", dev, "/")
            except _Call:
                continue
            try:
                if any(self._call("is_file", p, followsymlinks=True)
                       for p in ("/etc/os-release", "/usr/lib/os-release")):
                    found.append(str(dev))
            finally:
                self._call("umount_all")
        return found

    def _err(self, what: str, path: str, e: _Call) -> GuestfsError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return GuestfsFull(
                f"the file system in {self.description} is full while {what} {path}; free "
                "space in the image or grow it, then try again: nothing was written"
            )
        return GuestfsError(f"{what} {path} in {self.description} failed: {str(e)[:200]}")

    # ---- TargetFS ---------------------------------------------------------------------

    def stat(self, path: str) -> FileStat | None:
        """Metadata of `path`, not following a final symlink, or None if absent."""
        try:
            st = self._call("lstatns", path)
        except _Call as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise self._err("reading the metadata of", path, e) from None
        return FileStat(int(st["st_mode"]), int(st["st_uid"]), int(st["st_gid"]),
                        int(st["st_size"]))

    def read(self, path: str) -> bytes:
        """The contents of the regular file `path`; anything else is an error."""
        st = self.stat(path)
        if st is None or not stat_mod.S_ISREG(st.mode):
            raise GuestfsError(f"{path} is not a regular file in {self.description}")
        try:
            return bytes(self._call("read_file", path))
        except _Call as e:
            raise self._err("reading", path, e) from None

    def write(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
              ) -> None:
        """Create or replace the regular file `path` (its parent must exist) with this mode
        and owner from the start; all-or-nothing, verified by reading it back."""
        parent = os.path.dirname(path.rstrip("/")) or "/"
        check_file_target(self, path, parent, GuestfsError)
        tmp = f"{parent.rstrip('/')}/.seedtool-{secrets.token_hex(6)}"
        try:
            old_umask = self._call("umask", 0o077)
            try:
                self._call("write", tmp, data)
            finally:
                self._call("umask", old_umask)
            self._call("chmod", mode & 0o7777, tmp)
            self._call("chown", uid, gid, tmp)
            check_reads_back(self, tmp, data, mode, uid, gid, GuestfsError)
            self._call("rename", tmp, path)
        except _Call as e:
            self._discard(tmp)
            raise self._err("writing", path, e) from None
        except BaseException:
            self._discard(tmp)
            raise
        check_reads_back(self, path, data, mode, uid, gid, GuestfsError)

    def _discard(self, tmp: str) -> None:
        try:
            self._call("rm_f", tmp)
        except (_Call, GuestfsError):
            pass  # the original error is the one to report

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Create a directory and missing parents (each created one gets `mode`, owner
        root); fine if it exists; an existing non-directory is an error."""
        for cur in missing_dirs(self, path, GuestfsError):
            try:
                self._call("mkdir_mode", cur, mode & 0o7777)
                self._call("chmod", mode & 0o7777, cur)  # mkdir_mode is subject to umask
                self._call("chown", 0, 0, cur)
            except _Call as e:
                raise self._err("creating", cur, e) from None

    def rmdir(self, path: str) -> None:
        """Remove an empty directory; fine if it is absent."""
        st = self.stat(path)
        if st is None:
            return
        try:
            self._call("rmdir", path)
        except _Call as e:
            raise self._err("removing", path, e) from None

    def remove(self, path: str) -> None:
        """Remove a file, symlink or other non-directory; fine if it is absent."""
        if not file_to_remove(self, path, GuestfsError):
            return
        try:
            self._call("rm", path)
        except _Call as e:
            raise self._err("removing", path, e) from None

    def listdir(self, path: str) -> list[str]:
        """Names in the directory `path`, without . and .., sorted."""
        try:
            return sorted(str(n) for n in self._call("ls", path))
        except _Call as e:
            raise self._err("listing", path, e) from None

    def symlink(self, target: str, path: str) -> None:
        """Make `path` a symlink to `target`, replacing a file or symlink."""
        old = self.stat(path)
        if old is not None and stat_mod.S_ISDIR(old.mode):
            raise GuestfsError(f"cannot make {path} a symlink: it is a directory")
        try:
            self._call("ln_sf", target, path)
        except _Call as e:
            raise self._err("linking", path, e) from None

    def readlink(self, path: str) -> str:
        """The target stored in the symlink `path`."""
        try:
            return str(self._call("readlink", path))
        except _Call as e:
            raise self._err("reading the symlink", path, e) from None

    def scandir(self, path: str) -> list[tuple[str, FileStat]]:
        """Entries of the directory `path` with their metadata (`ls` plus `lstatnslist`,
        a few hundred names per call so no reply nears the protocol's message limit)."""
        names = self.listdir(path)
        out: list[tuple[str, FileStat]] = []
        for i in range(0, len(names), _STAT_BATCH):
            part = names[i:i + _STAT_BATCH]
            try:
                stats = self._call("lstatnslist", path, part)
            except _Call as e:
                raise self._err("reading the metadata in", path, e) from None
            for name, st in zip(part, stats):
                out.append((name, FileStat(int(st["st_mode"]), int(st["st_uid"]),
                                           int(st["st_gid"]), int(st["st_size"]))))
        return out

    def read_chunks(self, paths: Sequence[str], size: int) -> Iterator[tuple[str, bytes | None]]:
        """Each file by `pread`, at most _PREAD_MAX bytes per call (the protocol carries
        at most a few MiB per message)."""
        step = max(1, min(size, _PREAD_MAX))
        for path in paths:
            st = self.stat(path)
            if st is None or not stat_mod.S_ISREG(st.mode):
                raise GuestfsError(f"{path} is not a regular file in {self.description}")
            offset = 0
            while True:
                try:
                    piece = bytes(self._call("pread", path, step, offset))
                except _Call as e:
                    raise self._err("reading", path, e) from None
                if not piece:
                    break
                offset += len(piece)
                yield path, piece

    def _shutdown(self, sync: bool) -> None:
        g, self._g = self._g, None
        if g is None:
            return
        try:
            if sync:
                g("sync")
                g("umount_all")
                g("shutdown")
        except _Call as e:
            raise GuestfsError(
                f"libguestfs failed to flush {self.image}: {str(e)[:200]}; check the image "
                "before using it"
            ) from None
        finally:
            g.close()

    def mounts(self) -> set[str]:
        """The mount points libguestfs made, from its public `mountpoints` call
        (guestfs(3): guestfs_mountpoints), normalised ("/var/" and "/var" alike)."""
        points = self._call("mountpoints")
        return {"/" + "/".join(q for q in str(mp).split("/") if q)
                for mp in dict(points).values()}

    def close(self) -> None:
        """Sync, unmount and shut the appliance down; after this everything is on disk."""
        self._shutdown(sync=True)

    def __enter__(self) -> GuestfsTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self._shutdown(sync=exc[0] is None)


def available() -> bool:
    """True if libguestfs can be used from here (binding found, in-process or child)."""
    return find_binding() is not None or system_python_has_binding()

