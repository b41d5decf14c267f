"""Install the guest side into an image root (trusted-host side, no root needed).

Used by the image builder and `seedtool bake`. `install_guest(root, keys, policy)`
writes, below `root`:

* `/usr/lib/seedtool/python/seedtool/...`: the code that runs at boot, which is
  exactly the packages `seedtool.shared` and `seedtool.guest` (and `seedtool/__init__.py`),
  copied whole (`guest_code`), in a private directory so a pip-installed seedtool
  never clashes with it; never the CLI, this module, click or a cloud SDK;
* `/usr/lib/python3/dist-packages/cc_seedtool.py`: the cloud-init module (cloud-init
  looks for a top-level `cc_<name>` on sys.path before its own package: 22.4 and 25.1
  cloudinit/config/modules.py, `importer.find_module(name, ["", "cloudinit.config"], ...)`);
* `/usr/lib/seedtool/seedtool-early` and `/usr/lib/systemd/system/seedtool-early.service`,
  enabled by the symlink systemctl would make in `sysinit.target.wants/`;
* `/etc/seedtool/trusted-keys/*.pub` (exactly the given keys) and
  `/etc/seedtool/policy.json` (validated);
* with `seed_servers` (`seed_server_files`, from `bake --seed-server`):
  `/etc/seedtool/seed-servers.json` (validated by the guest's own parser,
  `seedtool.guest.netseed.config_from_mapping`) and `/etc/seedtool/seed-server-ca.pem`,
  both 0644 (no secret: URLs and a CA certificate);
* `/etc/cloud/cloud.cfg.d/90_seedtool.cfg` when the root has cloud-init: the root's
  own `cloud_init_modules`, every entry kept in its own form, with seedtool right
  after `seed_random` (before `ssh`). A cloud.cfg.d file replaces the whole list
  (cloud-init 22.4 and 25.1, cloudinit/util.py: `read_conf_d` merges the files in
  reverse name order with `mergemanydict`, which never replaces a key already set, so
  the last file by name that sets the key gives the whole list), so the list must be
  complete;
* byte code (`__pycache__/*.pyc`) for the guest code and the module, made for the
  image's own python3 when that is possible here (see `compile_bytecode`): at boot,
  under emulation, compiling the sources again costs seconds before the seed is
  credited.

Idempotent: running it again gives the same files. Needs no YAML library: the
module list is copied line by line from the YAML text.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..guest.policy import policy_from_mapping
from ..shared.errors import DeliveryError, SigningKeyError, UsageError
from ..shared.fileio import replace_file
from ..shared.pubkeys import load_public_keys

PRIVATE_DIR = "usr/lib/seedtool/python"
LAUNCHER = "usr/lib/seedtool/seedtool-early"
CC_MODULE = "usr/lib/python3/dist-packages/cc_seedtool.py"
UNIT_NAME = "seedtool-early.service"
UNIT_DIR = "usr/lib/systemd/system"
WANTS_DIR = "etc/systemd/system/sysinit.target.wants"
KEYS_DIR = "etc/seedtool/trusted-keys"
POLICY = "etc/seedtool/policy.json"
SEED_SERVERS = "etc/seedtool/seed-servers.json"
SEED_SERVER_CA = "etc/seedtool/seed-server-ca.pem"
CLOUD_CFG = "etc/cloud/cloud.cfg"
CLOUD_CFG_D = "etc/cloud/cloud.cfg.d"
DROPIN_NAME = "90_seedtool.cfg"
STATE_DIR = "var/lib/seedtool"
#: the list form passes cloud-init 22.4's schema check of system config, which
#: refuses an unknown module name given as a plain string (its enum of modules);
#: the frequency equals the module's own meta frequency
MODULE_ENTRY = "[seedtool, once-per-instance]"
#: what runs at boot: these packages of seedtool, copied whole (that they import nothing
#: but each other and the standard library is checked by tests/guest/test_closure.py)
GUEST_PACKAGES = ("shared", "guest")
#: in seedtool/guest: the files installed elsewhere (the module, the launcher, the unit)
DATA_DIR = "data"

#: what gets byte code: the private guest package and the cloud-init module
GUEST_SOURCES = (f"{PRIVATE_DIR}/seedtool", CC_MODULE)

_PKG = Path(__file__).resolve().parent.parent
_DATA = _PKG / "guest" / "data"


def _write(root: Path, rel: str, data: bytes, mode: int, written: list[str]) -> None:
    path = root / rel
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # the rename replaces a symlink in the file's place, never what it points to
    replace_file(path, data, mode, durable=False)
    written.append("/" + rel)


def _data(name: str) -> bytes:
    path = _DATA / name
    try:
        return path.read_bytes()
    except OSError as e:
        raise DeliveryError(
            f"seedtool's guest file {name} is missing ({e.strerror}); reinstall seedtool"
        ) from None


def guest_code() -> list[tuple[str, Path]]:
    """The code that runs at boot: (path below PRIVATE_DIR, source file) for
    seedtool/__init__.py and every module of GUEST_PACKAGES, subpackages included
    (not guest/data/, whose files are installed in their own places)."""
    files = [("seedtool/__init__.py", _PKG / "__init__.py")]
    for package in GUEST_PACKAGES:
        base = _PKG / package
        for src in sorted(base.rglob("*.py")):
            rel = src.relative_to(base)
            if rel.parts[0] == DATA_DIR or "__pycache__" in rel.parts:
                continue
            files.append((f"seedtool/{package}/{rel.as_posix()}", src))
    return files


def _install_code(root: Path, written: list[str]) -> None:
    target = root / PRIVATE_DIR / "seedtool"
    if target.is_symlink():
        raise DeliveryError(f"{target} is a symlink; refusing to write through it")
    if target.exists():
        shutil.rmtree(target)  # our private directory: drop modules of older versions
    for rel, src in guest_code():
        _write(root, f"{PRIVATE_DIR}/{rel}", src.read_bytes(), 0o644, written)


def _install_keys(root: Path, trusted_keys: Sequence[str | os.PathLike[str]],
                  written: list[str]) -> None:
    if not trusted_keys:
        raise UsageError(
            "no trusted public keys given: an image without them can never credit a seed; "
            "pass the .pub file made by 'seedtool keygen'"
        )
    names: dict[str, bytes] = {}
    for k in trusted_keys:
        path = Path(k)
        if path.is_dir():
            raise UsageError(f"{path} is a directory; give the .pub files themselves")
        keys = load_public_keys([path])  # raises SigningKeyError with the reason
        if not keys:
            raise SigningKeyError(f"{path} holds no public key; use the .pub file from keygen")
        name = path.name if path.name.endswith(".pub") else f"{path.name}.pub"
        if name in names:
            raise UsageError(f"two trusted key files are named {name}; rename one")
        names[name] = "".join(key.line() for key in keys).encode()
    keydir = root / KEYS_DIR
    if keydir.is_dir():
        for old in keydir.glob("*.pub"):
            if old.name not in names:
                old.unlink()
    for name, text in sorted(names.items()):
        _write(root, f"{KEYS_DIR}/{name}", text, 0o644, written)


# --- seed servers ------------------------------------------------------------------------


def ca_certificates(data: bytes, where: str) -> int:
    """How many PEM certificates `data` holds (at least one), else UsageError naming `where`."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise UsageError(f"{where} holds no PEM certificate; give the CA certificate that "
                         "signs the seed servers' certificates")
    return len(certs)


def seed_server_files(servers: Sequence[str], ca: str | os.PathLike[str], *,
                      timeout: float | None = None, identity: str = "aws-iid"
                      ) -> dict[str, bytes]:
    """{path below the root: content} of the seed-server configuration and its CA.

    `servers`: https URLs (as the guest will ask them; a GCE token's audience is the URL
    exactly as given); `ca`: a PEM file of the CA certificate(s) their certificates chain
    to; `identity`: aws-iid, gce-iit or token:/PATH in the image. Raises UsageError.
    """
    from ..guest import netseed

    if not servers:
        raise UsageError("give at least one --seed-server URL")
    path = Path(ca)
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the seed servers' CA {path}: {e.strerror}") from None
    ca_certificates(pem, str(path))
    mapping = {"version": netseed.CONFIG_VERSION, "servers": list(servers),
               "ca": "/" + SEED_SERVER_CA, "identity": identity,
               "timeout": netseed.DEFAULT_TIMEOUT if timeout is None else timeout}
    try:
        config = netseed.config_from_mapping(mapping, "--seed-server options")
    except netseed.ConfigError as e:
        raise UsageError(str(e)) from None
    text = json.dumps(config.to_json(), indent=1, sort_keys=True) + "\n"
    return {SEED_SERVERS: text.encode(), SEED_SERVER_CA: pem}


# --- cloud.cfg module list -----------------------------------------------------------

_TOP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*:(.*)$")


def canonical_module_name(name: str) -> str:
    name = name.strip().strip("'\"").strip()
    name = name.replace("-", "_")
    if name.lower().endswith(".py"):
        name = name[:-3]
    if name.startswith("cc_"):
        name = name[3:]
    return name


def _entry_name(first_line: str) -> str:
    """The module name of a list entry from its first line (after '- ')."""
    text = first_line.split(" #", 1)[0].strip()
    if text.startswith("["):
        return canonical_module_name(text[1:].split(",", 1)[0].rstrip("]"))
    if text.startswith("{"):
        m = re.search(r"\bname\s*:\s*([^,}]+)", text)
        return canonical_module_name(m.group(1)) if m else ""
    m = re.match(r"name\s*:\s*(.+)$", text)
    if m:
        return canonical_module_name(m.group(1))
    return canonical_module_name(text)


def _module_block(text: str) -> list[str] | None:
    """The lines of the block-style `cloud_init_modules:` list, or None if absent.

    Raises DeliveryError for a form this line-based reader does not handle (flow
    style on the key's own line), rather than guessing.
    """
    lines = text.splitlines()
    block: list[str] | None = None
    for i, line in enumerate(lines):
        m = _TOP_KEY.match(line)
        if not m or m.group(1) != "cloud_init_modules":
            continue
        rest = m.group(2).split("#", 1)[0].strip()
        if rest:
            raise DeliveryError(
                "cloud_init_modules is written in YAML flow style in the image's cloud config; "
                "write it as a block list ('- module' per line) so seedtool can extend it"
            )
        block = []
        for follow in lines[i + 1 :]:
            if follow.strip() and not follow[0].isspace() and not follow.startswith(("-", "#")):
                break
            block.append(follow)
        while block and (not block[-1].strip() or block[-1].lstrip().startswith("#")):
            block.pop()
    return block


def _entries(block: list[str]) -> list[tuple[int, int, str]]:
    """[(first line index, end line index, module name)] of the entries of a block."""
    starts: list[tuple[int, int, str]] = []
    dash_indent = None
    for i, line in enumerate(block):
        stripped = line.lstrip()
        if not stripped.startswith("- ") and stripped != "-":
            continue
        indent = len(line) - len(stripped)
        if dash_indent is None:
            dash_indent = indent
        if indent != dash_indent:
            continue
        starts.append((i, -1, _entry_name(stripped[2:])))
    out = []
    for n, (i, _, name) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(block)
        while end > i + 1 and (
            not block[end - 1].strip() or block[end - 1].lstrip().startswith("#")
        ):
            end -= 1
        out.append((i, end, name))
    return out


def with_seedtool(block: list[str]) -> list[str]:
    """The module list lines with seedtool after seed_random and before ssh (once)."""
    entries = _entries(block)
    if any(name == "seedtool" for _, _, name in entries):
        return list(block)
    if not entries:
        return [f" - {MODULE_ENTRY}"]
    first = block[entries[0][0]]
    indent = first[: len(first) - len(first.lstrip())]
    line = f"{indent}- {MODULE_ENTRY}"
    names = [name for _, _, name in entries]
    ssh_at = names.index("ssh") if "ssh" in names else None
    seed_at = names.index("seed_random") if "seed_random" in names else None
    if seed_at is not None and (ssh_at is None or seed_at < ssh_at):
        pos = entries[seed_at][1]
    elif ssh_at is not None:
        pos = entries[ssh_at][0]
    else:
        pos = entries[-1][1]
    return block[:pos] + [line] + block[pos:]


def _effective_source(root: Path) -> tuple[Path, list[str]]:
    """The file whose cloud_init_modules cloud-init would use, and that list's lines."""
    candidates = [root / CLOUD_CFG]
    cfgd = root / CLOUD_CFG_D
    if cfgd.is_dir():
        # cloud-init reads cloud.cfg.d/*.cfg in name order; a later file's list wins
        candidates += sorted(p for p in cfgd.glob("*.cfg") if p.name != DROPIN_NAME)
    found: tuple[Path, list[str]] | None = None
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        block = _module_block(text)
        if block is None:
            continue
        if path.parent == cfgd and path.name > DROPIN_NAME:
            raise DeliveryError(
                f"{path.relative_to(root)} sets cloud_init_modules after seedtool's "
                f"{DROPIN_NAME}, so seedtool would never run; merge it into cloud.cfg or "
                "rename it to sort before 90_"
            )
        found = (path, block)
    if found is None:
        raise DeliveryError(
            "the image's cloud config has no cloud_init_modules list; seedtool's module "
            "cannot be added to it (is cloud-init installed in the root?)"
        )
    return found


def _install_cloud_cfg(root: Path, written: list[str]) -> None:
    source, block = _effective_source(root)
    rel_source = "/" + str(source.relative_to(root))
    text = (
        "# Written by seedtool (seedtool.bake.install); do not edit, rerun the install.\n"
        f"# The distribution's cloud_init_modules from {rel_source}, every module kept in its\n"
        "# own form, with seedtool right after seed_random and before ssh: a cloud.cfg.d\n"
        "# file replaces the whole list.\n"
        "cloud_init_modules:\n" + "\n".join(with_seedtool(block)) + "\n"
    )
    _write(root, f"{CLOUD_CFG_D}/{DROPIN_NAME}", text.encode(), 0o644, written)


# --- byte code ------------------------------------------------------------------------

#: the image's interpreter: the unit's ExecStart and cloud-init both use it
IMAGE_PYTHON = "usr/bin/python3"
#: "checked-hash" byte code is valid as long as the source's content is, whatever the
#: file times: image pipelines (tar, debugfs, packer uploads) do not all keep mtimes
INVALIDATION = "checked-hash"


def _image_magic(root: Path) -> bytes | None:
    """The byte-code magic number of the image's python, from its own standard library."""
    for pyc in sorted(glob.glob(str(root / "usr/lib/python3*/__pycache__/os.*.pyc"))):
        try:
            with open(pyc, "rb") as f:
                return f.read(4)
        except OSError:
            continue
    return None


def host_compile(root: Path, sources: Sequence[str]) -> bool:
    """Compile with this python when its byte code is the image python's; False if not."""
    import importlib.util
    import py_compile

    tag = sys.implementation.cache_tag
    if not tag or _image_magic(root) != importlib.util.MAGIC_NUMBER:
        return False
    if not glob.glob(str(root / f"usr/lib/python3*/__pycache__/os.{tag}.pyc")):
        return False
    for rel in sources:
        src = root / rel
        files = sorted(src.rglob("*.py")) if src.is_dir() else [src]
        for f in files:
            try:
                py_compile.compile(
                    str(f), cfile=importlib.util.cache_from_source(str(f)),
                    dfile="/" + str(f.relative_to(root)), doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
                )
            except py_compile.PyCompileError as e:
                raise OSError(f"cannot compile {f.name}") from e
    return True


def compile_bytecode(root: str | os.PathLike[str], sources: Sequence[str]) -> str:
    """Write `__pycache__` byte code for `sources` (paths relative to `root`) for the
    image's python3; '' when done, else a sentence saying why not.

    In order: this python, when its magic number is the image's (no root needed); the
    image's own /usr/bin/python3 when `root` is this machine's root (`bake --root /`);
    the image's python3 under `chroot` when we are root and the image runs on this
    machine's architecture. Otherwise nothing is compiled and the guest still works:
    the first boot compiles the sources (slower) and writes the byte code itself if
    /usr is writable.
    """
    r = Path(root)
    python = r / IMAGE_PYTHON
    if not (python.exists() or python.is_symlink()):
        return "the image has no /usr/bin/python3"
    try:
        if host_compile(r, sources):
            return ""
    except OSError as e:
        return f"byte code not compiled: {e}"
    argv = ["-I", "-m", "compileall", "-q", "--invalidation-mode", INVALIDATION]
    argv += ["/" + s for s in sources]
    if r.resolve() == Path("/"):
        cmd = ["/" + IMAGE_PYTHON, *argv]
    elif os.geteuid() == 0 and shutil.which("chroot"):
        cmd = [shutil.which("chroot") or "chroot", str(r), "/" + IMAGE_PYTHON, *argv]
    else:
        return ("byte code not compiled: the image's python differs from this one and "
                "running it needs root (chroot)")
    try:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=300, check=False, env={"PATH": "/usr/bin:/bin",
                                                             "LC_ALL": "C.UTF-8"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"byte code not compiled: {type(e).__name__}"
    if out.returncode != 0:
        return f"byte code not compiled: the image's python3 exited with {out.returncode}"
    return ""


def bytecode_files(root: Path, sources: Sequence[str]) -> list[str]:
    """The byte code files (absolute image paths) made for `sources` below `root`."""
    found = []
    for rel in sources:
        src = root / rel
        base = src if src.is_dir() else src.parent
        pattern = "**/__pycache__/*.pyc" if src.is_dir() else f"__pycache__/{src.stem}.*.pyc"
        found += ["/" + str(p.relative_to(root)) for p in sorted(base.glob(pattern))]
    return found


# --- the entry point -------------------------------------------------------------------


def install_guest(
    root: str | os.PathLike[str],
    trusted_keys: Sequence[str | os.PathLike[str]],
    policy: Mapping[str, Any] | None = None,
    *,
    bytecode: bool = True,
    seed_servers: Mapping[str, bytes] | None = None,
) -> list[str]:
    """Install seedtool's guest side into the image root `root`; the paths written.

    With `bytecode` (the default) the guest code is also compiled for the image's
    python3 when that is possible here (`compile_bytecode`); the byte code files made
    are among the paths returned. `seed_servers` (from `seed_server_files`) writes the
    seed-server configuration and CA; without it they are left as they are.

    Raises UsageError/SigningKeyError for bad keys or policy, DeliveryError when the
    root cannot take it (e.g. its cloud config has no module list).
    """
    r = Path(root)
    if not r.is_dir():
        raise DeliveryError(f"image root {r} is not a directory")
    pol = policy_from_mapping(policy or {}, "policy given to install_guest")
    written: list[str] = []
    _install_code(r, written)
    _write(r, CC_MODULE, _data("cc_seedtool.py"), 0o644, written)
    _write(r, LAUNCHER, _data("seedtool-early"), 0o755, written)
    _write(r, f"{UNIT_DIR}/{UNIT_NAME}", _data(UNIT_NAME), 0o644, written)
    wants = r / WANTS_DIR
    wants.mkdir(mode=0o755, parents=True, exist_ok=True)
    link = wants / UNIT_NAME
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"/{UNIT_DIR}/{UNIT_NAME}")
    written.append(f"/{WANTS_DIR}/{UNIT_NAME}")
    _install_keys(r, trusted_keys, written)
    text = json.dumps(pol.to_json(), indent=1, sort_keys=True) + "\n"
    _write(r, POLICY, text.encode(), 0o644, written)
    for rel, content in sorted((seed_servers or {}).items()):
        if rel not in (SEED_SERVERS, SEED_SERVER_CA):
            raise UsageError(f"seed_servers names {rel}, not a seed-server file")
        _write(r, rel, content, 0o644, written)
    (r / STATE_DIR).mkdir(mode=0o755, parents=True, exist_ok=True)
    if (r / CLOUD_CFG).exists():
        _install_cloud_cfg(r, written)
    if bytecode and compile_bytecode(r, GUEST_SOURCES) == "":
        written += bytecode_files(r, GUEST_SOURCES)
    return written
