"""seedtool bake / bake --check on copies of real Debian 12 and 13 roots.

The roots are the cached debootstrap roots that tests/vm builds (cloud-init, sshd,
systemd, dbus, python3-cryptography, with the host keys and machine id that the
packages' postinst scripts made). They are copied with `cp -a` and never modified.
Each dirty-root test starts from a baked root and plants one thing; `check` must name
it, and `bake` must clean it again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from devtools.images import RELEASES, TABLE, base_root
from seedtool import bake as lib
from seedtool.bake import install
from seedtool.bake.install import install_guest
from seedtool.guest.policy import MAX_POLICY_SIZE, PolicyError, load_policy
from seedtool.image.localfs import LocalFS
from seedtool.keys import generate_keypair
from seedtool.shared.errors import DeliveryError

SEEDTOOL = ["seedtool", "once-per-instance"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seedtool", *args], capture_output=True,
                          text=True, timeout=300)


def cp_a(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """(mode, size, inode, mtime, link) of every path: a rewrite or removal changes it."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_ino,
                                             st.st_mtime_ns, link)
    return out


def findings_at(root: Path, path: str) -> list[lib.Finding]:
    return [f for f in lib.check(LocalFS(root)) if f.path == path]


@pytest.fixture(scope="module")
def host_pub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "host.key", d / "host.pub", comment="bake-test")
    return d / "host.pub"


@pytest.fixture(scope="module", params=RELEASES)
def fresh_root(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An unbaked copy of a real Debian root (host keys, machine id and all)."""
    d = tmp_path_factory.mktemp(f"fresh-{request.param}")
    cp_a(base_root(request.param), d / "root")
    yield request.param, d / "root"
    shutil.rmtree(d, ignore_errors=True)


# --- the real roots, end to end through the CLI ----------------------------------------------


def test_bake_real_debian_root_then_check_is_clean(
    fresh_root: tuple[str, Path], host_pub: Path, tmp_path: Path
) -> None:
    release, root = fresh_root
    cached = base_root(release)

    before = run("bake", "--check", "--root", str(root), "--json")
    assert before.returncode == 1, before.stderr
    report = json.loads(before.stdout)
    assert not report["clean"]
    paths = {f["path"] for f in report["findings"]}
    assert "/etc/ssh/ssh_host_ed25519_key" in paths and "/etc/machine-id" in paths
    assert "/var/lib/dbus/machine-id" in paths and lib.CC_MODULE in paths
    assert all(f["problem"] and f["fix"] for f in report["findings"])

    # dry run: reports exactly what the real bake then does, and changes nothing
    snap = snapshot(root)
    dry = run("bake", "--root", str(root), "--trusted-key", str(host_pub), "--dry-run",
              "--json")
    assert dry.returncode == 0, dry.stderr
    assert snapshot(root) == snap
    planned = json.loads(dry.stdout)["changes"]

    done = run("bake", "--root", str(root), "--trusted-key", str(host_pub), "--json")
    assert done.returncode == 0, done.stderr
    changes = json.loads(done.stdout)["changes"]
    assert changes == planned
    removed = {c["path"] for c in changes if c["action"] == "remove"}
    host_keys = {f"/etc/ssh/{p.name}" for p in (cached / "etc/ssh").glob("ssh_host_*")}
    assert host_keys and host_keys <= removed

    after = run("bake", "--check", "--root", str(root))
    assert after.returncode == 0, after.stdout + after.stderr
    assert after.stdout.strip().endswith(": clean")

    # what was removed and reset
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/ssh/sshd_config").exists()  # only the host keys go
    mid = root / "etc/machine-id"
    assert mid.read_text() == "uninitialized\n"
    cached_mode = (cached / "etc/machine-id").stat().st_mode
    assert stat.S_IMODE(mid.stat().st_mode) == stat.S_IMODE(cached_mode)
    assert not (root / "var/lib/dbus/machine-id").exists()

    # the guest is installed exactly as install_guest lays it out (its source of truth)
    ref = tmp_path / "ref"
    shutil.copytree(cached / "etc/cloud", ref / "etc/cloud", symlinks=True)
    written = install_guest(ref, [host_pub])
    for path in written:
        a, b = ref / path.lstrip("/"), root / path.lstrip("/")
        if a.is_symlink():
            assert os.readlink(b) == os.readlink(a), path
        else:
            assert b.read_bytes() == a.read_bytes(), path
            assert stat.S_IMODE(b.stat().st_mode) == stat.S_IMODE(a.stat().st_mode), path
    mods = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/90_seedtool.cfg").read_text())[
        "cloud_init_modules"]
    at = mods.index(SEEDTOOL)
    assert mods[at - 1] == "seed_random" and at < mods.index("ssh")

    # byte code ships when this Python makes the image's (the guest then compiles
    # nothing at boot), and is valid whatever the file times (checked-hash .pyc)
    tag = sys.implementation.cache_tag
    ours = bool(list(root.glob(f"usr/lib/python3.*/__pycache__/os.{tag}.pyc")))
    sources = [root / lib.CC_MODULE.lstrip("/"), root / lib.GUEST_CORE.lstrip("/"),
               *(root / lib.GUEST_CODE_DIR.lstrip("/")).glob("*.py")]
    for src in sources:
        pyc = Path(importlib.util.cache_from_source(str(src)))
        assert pyc.exists() == ours, (pyc, ours)
        if ours:
            head = pyc.read_bytes()[:16]
            assert head[:4] == importlib.util.MAGIC_NUMBER
            assert int.from_bytes(head[4:8], "little") == 0b11  # checked hash
            assert head[8:16] == importlib.util.source_hash(src.read_bytes())
    assert ours == (tag == TABLE[release].python_tag)

    # idempotent: a second bake changes nothing, not even an inode
    snap = snapshot(root)
    again = run("bake", "--root", str(root), "--trusted-key", str(host_pub), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changes"] == []
    assert snapshot(root) == snap


# --- dirty roots ----------------------------------------------------------------------------

#: what a baked root needs for `check` (everything `check` reads), without the
#: 400 MB of /usr: a real root's files, just not all of them
SLIM = ("etc", "root", "home", "opt", "srv", "tmp", "var/tmp", "var/log", "var/lib/dbus",
        "var/lib/systemd", "var/lib/seedtool", "bin", "sbin", "lib", "lib64",
        "usr/sbin/init", "usr/bin/python3", "usr/lib/systemd/systemd",
        "usr/lib/python3/dist-packages/cryptography/__init__.py", lib.CC_MODULE.lstrip("/"),
        "usr/lib/seedtool", lib.UNIT.lstrip("/"))


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory, host_pub: Path) -> Iterator[Path]:
    """A slim copy of a baked Debian 12 root (read only: tests copy it)."""
    d = tmp_path_factory.mktemp("baked")
    full = d / "full"
    cp_a(base_root("bookworm"), full)
    p = run("bake", "--root", str(full), "--trusted-key", str(host_pub))
    assert p.returncode == 0, p.stderr
    slim = d / "slim"
    for rel in SLIM:
        src = full / rel
        if not os.path.lexists(src):
            continue
        (slim / rel).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(src), str(slim / rel)], check=True)
    shutil.rmtree(full)
    assert lib.check(LocalFS(slim)) == []
    yield slim
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def root(baked: Path, tmp_path: Path) -> Path:
    cp_a(baked, tmp_path / "root")
    return tmp_path / "root"


def plant(root: Path, rel: str, data: bytes = b"x" * 32) -> Path:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def bake_cli(root: Path, pub: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("bake", "--root", str(root), "--trusted-key", str(pub), *extra)


SHARED = [
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ed25519_key-cert.pub",
    *lib.RANDOM_SEEDS,
    lib.CREDENTIAL_SECRET,
    "/var/lib/seedtool/seed",
    "/var/lib/seedtool/ledger",
    "/var/lib/seedtool/status.json",
    "/var/lib/seedtool/status-early.json",
    "/var/lib/cloud/instances/iid-1/user-data.txt",
    "/var/lib/cloud/instances/iid-1/sem/config_ssh",
    "/var/lib/cloud/data/instance-id",
    "/var/log/cloud-init.log",
    "/var/log/cloud-init-output.log",
]


@pytest.mark.parametrize("path", SHARED)
def test_each_shared_file_is_found_then_removed_by_bake(root: Path, host_pub: Path,
                                                        path: str) -> None:
    planted = plant(root, path)
    found = findings_at(root, path)
    assert len(found) == 1 and found[0].severity == lib.ERROR
    p = run("bake", "--check", "--root", str(root))
    assert p.returncode == 1 and path in p.stdout

    b = bake_cli(root, host_pub, "--json")
    assert b.returncode == 0, b.stderr
    assert {"path": path, "action": "remove"}.items() <= next(
        c for c in json.loads(b.stdout)["changes"] if c["path"] == path).items()
    assert not os.path.lexists(planted)
    assert run("bake", "--check", "--root", str(root)).returncode == 0


def test_cloud_init_state_goes_like_cloud_init_clean_but_seed_stays(root: Path,
                                                                    host_pub: Path) -> None:
    plant(root, "/var/lib/cloud/instances/iid-1/obj.pkl")
    (root / "var/lib/cloud/instance").symlink_to("/var/lib/cloud/instances/iid-1")
    keep = plant(root, "/var/lib/cloud/seed/nocloud/user-data", b"#cloud-config\n")
    found = {f.path for f in lib.check(LocalFS(root))}
    assert {"/var/lib/cloud/instance", "/var/lib/cloud/instances/iid-1/obj.pkl"} <= found
    assert not any(p.startswith("/var/lib/cloud/seed") for p in found)
    assert bake_cli(root, host_pub).returncode == 0
    assert sorted(os.listdir(root / "var/lib/cloud")) == ["seed"]
    assert keep.read_bytes() == b"#cloud-config\n"


def test_machine_id_and_dbus_copy(root: Path, host_pub: Path) -> None:
    mid = "0123456789abcdef0123456789abcdef\n"
    (root / "etc/machine-id").write_text(mid)
    plant(root, lib.DBUS_MACHINE_ID, mid.encode())
    p = run("bake", "--check", "--root", str(root), "--json")
    assert p.returncode == 1
    paths = {f["path"] for f in json.loads(p.stdout)["findings"]}
    assert paths == {lib.MACHINE_ID, lib.DBUS_MACHINE_ID}
    assert mid.strip() not in p.stdout + p.stderr  # the id itself is never shown

    assert bake_cli(root, host_pub).returncode == 0
    assert (root / "etc/machine-id").read_text() == "uninitialized\n"
    assert not os.path.lexists(root / lib.DBUS_MACHINE_ID.lstrip("/"))


def test_dbus_machine_id_symlink_is_kept_pointing_at_etc(root: Path, host_pub: Path) -> None:
    link = root / lib.DBUS_MACHINE_ID.lstrip("/")
    link.symlink_to("/etc/machine-id")
    assert lib.check(LocalFS(root)) == []
    link.unlink()
    link.symlink_to("/run/some-other-id")
    assert len(findings_at(root, lib.DBUS_MACHINE_ID)) == 1
    assert bake_cli(root, host_pub).returncode == 0
    assert os.readlink(link) == "/etc/machine-id"


def test_empty_machine_id_passes_check_and_can_be_chosen(root: Path, host_pub: Path) -> None:
    (root / "etc/machine-id").write_text("")
    assert findings_at(root, lib.MACHINE_ID) == []
    assert bake_cli(root, host_pub, "--machine-id", "empty").returncode == 0
    assert (root / "etc/machine-id").read_bytes() == b""
    assert bake_cli(root, host_pub).returncode == 0  # the default form
    assert (root / "etc/machine-id").read_text() == "uninitialized\n"


def test_non_systemd_init_gets_an_empty_machine_id(root: Path, host_pub: Path) -> None:
    init = root / "usr/sbin/init"
    init.unlink()
    init.write_bytes(b"\x7fELF sysvinit stand-in")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert not lib.uses_systemd(LocalFS(root))
    assert bake_cli(root, host_pub).returncode == 0
    assert (root / "etc/machine-id").read_bytes() == b""


# --- the module list ---------------------------------------------------------------------


def dropin(root: Path) -> Path:
    return root / install.CLOUD_CFG_D / install.DROPIN_NAME


def test_module_list_without_seedtool(root: Path, host_pub: Path) -> None:
    dropin(root).unlink()
    found = findings_at(root, lib.CLOUD_CFG)
    assert len(found) == 1 and "no seedtool" in found[0].problem
    assert bake_cli(root, host_pub).returncode == 0
    assert lib.check(LocalFS(root)) == []


def move_seedtool(root: Path, after: str) -> None:
    d = dropin(root)
    mods = yaml.safe_load(d.read_text())["cloud_init_modules"]
    mods.remove(SEEDTOOL)
    mods.insert(mods.index(after) + 1, SEEDTOOL)
    d.write_text(yaml.safe_dump({"cloud_init_modules": mods}))


def test_module_list_with_seedtool_after_ssh(root: Path, host_pub: Path) -> None:
    move_seedtool(root, "ssh")
    found = findings_at(root, "/" + str(dropin(root).relative_to(root)))
    assert len(found) == 1 and "after ssh" in found[0].problem
    assert bake_cli(root, host_pub).returncode == 0  # bake puts it back in place
    assert lib.check(LocalFS(root)) == []


def test_module_list_with_seedtool_before_seed_random(root: Path) -> None:
    d = dropin(root)
    mods = yaml.safe_load(d.read_text())["cloud_init_modules"]
    mods.remove(SEEDTOOL)
    mods.insert(0, SEEDTOOL)
    d.write_text(yaml.safe_dump({"cloud_init_modules": mods}))
    found = findings_at(root, "/" + str(d.relative_to(root)))
    assert len(found) == 1 and "before seed_random" in found[0].problem


def test_later_dropin_replacing_the_list_is_found_and_refused(root: Path,
                                                              host_pub: Path) -> None:
    later = root / install.CLOUD_CFG_D / "99_site.cfg"
    later.write_text("cloud_init_modules:\n - seed_random\n - ssh\n")
    found = findings_at(root, "/etc/cloud/cloud.cfg.d/99_site.cfg")
    assert len(found) == 1 and "no seedtool" in found[0].problem
    p = bake_cli(root, host_pub)  # install_guest refuses: the list would never have seedtool
    assert p.returncode != 0
    assert p.stderr.startswith("seedtool: error: ") and "99_site.cfg" in p.stderr
    # an earlier file setting the list is fine: 90_seedtool.cfg replaces it
    later.rename(root / install.CLOUD_CFG_D / "50_site.cfg")
    assert bake_cli(root, host_pub).returncode == 0
    assert lib.check(LocalFS(root)) == []


def test_cloud_config_that_is_not_yaml(root: Path) -> None:
    plant(root, "/etc/cloud/cloud.cfg.d/10_broken.cfg", b"cloud_init_modules: [\n")
    found = findings_at(root, "/etc/cloud/cloud.cfg.d/10_broken.cfg")
    assert len(found) == 1 and "not valid YAML" in found[0].problem


# --- the guest install ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [lib.CC_MODULE, lib.GUEST_CORE, lib.LAUNCHER, lib.UNIT,
                                  lib.WANTS_LINK])
def test_guest_part_missing(root: Path, host_pub: Path, path: str) -> None:
    (root / path.lstrip("/")).unlink()
    found = findings_at(root, path)
    assert len(found) == 1 and found[0].severity == lib.ERROR
    assert bake_cli(root, host_pub).returncode == 0
    assert lib.check(LocalFS(root)) == []


def test_masked_early_unit(root: Path) -> None:
    (root / lib.MASK.lstrip("/")).symlink_to("/dev/null")
    found = findings_at(root, lib.MASK)
    assert len(found) == 1 and "masked" in found[0].problem


def test_no_trusted_keys_and_bad_policy(root: Path, host_pub: Path, tmp_path: Path) -> None:
    for k in (root / "etc/seedtool/trusted-keys").glob("*.pub"):
        k.unlink()
    assert len(findings_at(root, "/etc/seedtool/trusted-keys")) == 1
    (root / "etc/seedtool/policy.json").write_text('{"trusted_keys": 3}')
    found = findings_at(root, lib.POLICY)
    assert len(found) == 1 and found[0].severity == lib.ERROR
    # the reason is the guest's own (load_policy), naming the image's path, not a copy's
    with pytest.raises(PolicyError) as guest:
        load_policy(root / "etc/seedtool/policy.json")
    reason = str(guest.value).replace(str(root), "")
    assert reason in found[0].problem and "--policy" in found[0].fix
    p = run("bake", "--check", "--root", str(root))
    assert p.returncode == 1 and f"{lib.POLICY}: error:" in p.stdout

    # bake does not quietly replace it with the defaults (fail_closed could go off) ...
    snap = snapshot(root)
    b = bake_cli(root, host_pub)
    assert b.returncode == 1 and "--policy" in b.stderr and reason in b.stderr
    assert len(b.stderr.strip().splitlines()) == 1 and snapshot(root) == snap
    # ... but writes the one it is given
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"fail_closed": True}))
    assert bake_cli(root, host_pub, "--policy", str(pol)).returncode == 0
    assert lib.check(LocalFS(root)) == []


@pytest.mark.parametrize("text", ['{"fail_closed": "yes"}', "{not json", '{"bogus": 1}',
                                  "x" * (MAX_POLICY_SIZE + 10)])
def test_every_invalid_policy_is_refused_by_check(root: Path, text: str) -> None:
    (root / "etc/seedtool/policy.json").write_text(text)
    with pytest.raises(PolicyError) as guest:
        load_policy(root / "etc/seedtool/policy.json")
    found = findings_at(root, lib.POLICY)
    assert len(found) == 1 and str(guest.value).replace(str(root), "") in found[0].problem


def test_bake_keeps_the_images_valid_policy(root: Path, host_pub: Path) -> None:
    (root / "etc/seedtool/policy.json").write_text('{"fail_closed": true}')
    assert bake_cli(root, host_pub).returncode == 0
    assert json.loads((root / "etc/seedtool/policy.json").read_text())["fail_closed"] is True


def test_policy_pointing_elsewhere_needs_keys_there(root: Path, host_pub: Path,
                                                    tmp_path: Path) -> None:
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"trusted_keys": "/opt/keys", "fail_closed": True}))
    assert bake_cli(root, host_pub, "--policy", str(pol)).returncode == 0
    assert json.loads((root / "etc/seedtool/policy.json").read_text())["fail_closed"] is True
    assert len(findings_at(root, "/opt/keys")) == 1
    plant(root, "/opt/keys/a.pub", host_pub.read_bytes())
    assert lib.check(LocalFS(root)) == []


def test_keys_no_longer_given_are_removed(root: Path, host_pub: Path, tmp_path: Path) -> None:
    generate_keypair(tmp_path / "new.key", tmp_path / "new.pub")
    p = bake_cli(root, tmp_path / "new.pub", "--json")
    assert p.returncode == 0, p.stderr
    actions = {(c["path"], c["action"]) for c in json.loads(p.stdout)["changes"]}
    assert ("/etc/seedtool/trusted-keys/host.pub", "remove") in actions
    assert ("/etc/seedtool/trusted-keys/new.pub", "write") in actions
    assert sorted(os.listdir(root / "etc/seedtool/trusted-keys")) == ["new.pub"]


def test_a_stale_guest_module_is_a_warning_that_strict_makes_fatal(root: Path) -> None:
    module = root / lib.CC_MODULE.lstrip("/")
    module.write_text(module.read_text() + "# an older seedtool\n")
    found = lib.check(LocalFS(root))
    assert [(f.path, f.severity) for f in found] == [(lib.CC_MODULE, lib.WARNING)]
    p = run("bake", "--check", "--root", str(root))
    assert p.returncode == 0 and "warning" in p.stdout and "clean" not in p.stdout
    assert run("bake", "--check", "--strict", "--root", str(root)).returncode == 1


# --- private keys ---------------------------------------------------------------------------


def test_private_keys_anywhere_likely_are_errors(root: Path, tmp_path: Path) -> None:
    generate_keypair(tmp_path / "signing.key", tmp_path / "signing.pub")
    generate_keypair(tmp_path / "enc.key", tmp_path / "enc.pub", passphrase=b"pw")
    ssh = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh)], check=True)
    signing = (tmp_path / "signing.key").read_bytes()
    planted = {
        "/root/.config/seedtool/signing.key": signing,
        "/tmp/packer-upload/key.pem": signing,
        "/opt/app/enc.key": (tmp_path / "enc.key").read_bytes(),
        "/home/builder/.ssh/id_ed25519": ssh.read_bytes(),
        "/srv/x/notes.txt": b"header\n" + signing + b"trailer\n",
    }
    for path, data in planted.items():
        plant(root, path, data)
    (root / "home/builder/link.key").symlink_to("/root/.config/seedtool/signing.key")

    found = {f.path: f for f in lib.check(LocalFS(root))}
    assert set(found) == set(planted)  # not the symlink twice
    assert "seedtool" in found["/root/.config/seedtool/signing.key"].problem
    assert "encrypted" in found["/opt/app/enc.key"].problem
    assert all(f.severity == lib.ERROR for f in found.values())

    p = run("bake", "--check", "--root", str(root))
    assert p.returncode == 1
    body = [line for line in signing.decode().splitlines() if "-----" not in line]
    assert body and not any(line in p.stdout + p.stderr for line in body)


# --- live root, bad input, the backend ------------------------------------------------------


def test_live_root_stops_random_seed_service_before_removing_the_seed(
    root: Path, host_pub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = plant(root, "/var/lib/systemd/random-seed")
    order: list[str] = []

    def stop() -> None:  # what systemctl stop does: the unit's stop action saves a seed
        order.append("stop")
        seed.write_bytes(b"y" * 32)

    monkeypatch.setattr(lib, "systemd_running", lambda: True)
    dry = lib.bake(LocalFS(root), [host_pub], dry_run=True, live=True, stop_service=stop)
    assert order == [] and dry.changes[0] == lib.Change(
        lib.RANDOM_SEED_SERVICE, "stop", dry.changes[0].what)
    res = lib.bake(LocalFS(root), [host_pub], live=True, stop_service=stop)
    assert order == ["stop"] and res.changes[0].action == "stop"
    assert not seed.exists()


def test_dry_run_on_this_running_system_changes_nothing(host_pub: Path) -> None:
    """`--root /` is the Packer case; a dry run is safe to try on the test host itself."""
    watched = [p for p in ("/etc/machine-id", "/etc/ssh", "/var/lib/systemd", "/etc/cloud")
               if os.path.lexists(p)]
    before = {p: changeable(p) for p in watched}
    p = run("bake", "--root", "/", "--dry-run", "--trusted-key", str(host_pub))
    assert p.returncode == 0, p.stderr
    assert "/ (the running system): would change" in p.stdout
    assert "dry run: nothing was changed" in p.stdout
    if lib.systemd_running():
        assert f"stop     {lib.RANDOM_SEED_SERVICE}" in p.stdout
    else:
        assert "systemd is not running here" in p.stdout
    assert {p: changeable(p) for p in watched} == before


def changeable(path: str) -> tuple[object, ...]:
    """What bake could change about `path`: type and mode, owner, inode, mtime, ctime and
    content (a directory's: its names). Not the atime: reading a directory updates it
    whenever it changed since it was last read (relatime, mount(8)), as on a fresh machine
    where the test command just installed openssh-server."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        content: object = sorted(os.listdir(path))
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(path)
    else:
        content = digest(Path(path))
    return (st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_mtime_ns, st.st_ctime_ns,
            content)


@pytest.mark.parametrize("args,needle", [
    (["--check"], "exactly one target"),
    (["--root", "/nonexistent-seedtool-root"], "--trusted-key"),
    (["--root", "RT", "--image", "x.raw", "--check"], "exactly one target"),
    (["--check", "--root", "RT", "--trusted-key", "K"], "only reads"),
    (["--root", "RT", "--trusted-key", "RT/etc/hostname"], "not a seedtool public key"),
    (["--strict", "--root", "RT", "--trusted-key", "K"], "--strict goes with --check"),
    (["--check", "--image", "RT/no-such.raw"], "does not exist"),
    (["--image", "RT/no-such.raw", "--trusted-key", "K"], "check the path"),
    (["--check", "--root", "RT", "--partition", "2"], "go with --image"),
])
def test_bad_input_is_one_clear_error(root: Path, host_pub: Path, args: list[str],
                                      needle: str) -> None:
    snap = snapshot(root)
    argv = [a.replace("RT", str(root)) if a.startswith("RT") else str(host_pub) if a == "K"
            else a for a in args]
    p = run("bake", *argv)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seedtool: error: ") and needle in lines[0]
    assert snapshot(root) == snap


def test_a_new_check_is_one_function_and_one_line(root: Path) -> None:
    from seedtool.bake.checks import CHECKS, Context, run_checks
    from seedtool.bake.checks.secrets import no_secrets

    def no_motd(ctx: Context) -> list[lib.Finding]:
        if ctx.fs.stat("/etc/motd") is None:
            return []
        return [lib.Finding("/etc/motd", "a login banner", "remove it", lib.WARNING)]

    plant(root, "/etc/motd", b"hello\n")
    fs = LocalFS(root)
    assert lib.check(fs) == run_checks(fs, lib.SCAN_BOUNDS, CHECKS) == []
    quick = tuple(c for c in CHECKS if c is not no_secrets)
    assert run_checks(fs, lib.SCAN_BOUNDS, (*quick, no_motd)) == [
        lib.Finding("/etc/motd", "a login banner", "remove it", lib.WARNING)]


def test_missing_root_is_refused() -> None:
    with pytest.raises(DeliveryError, match="does not exist"):
        LocalFS("/nonexistent-seedtool-root")


def test_localfs_resolves_symlinks_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    plant(root, "/etc/real", b"inside")
    outside = tmp_path / "outside"
    outside.write_bytes(b"outside")
    (root / "etc/abs").symlink_to("/etc/real")
    (root / "etc/up").symlink_to("../../../../../../etc/real")
    (root / "etc/escape").symlink_to(str(outside))
    (root / "loop1").symlink_to("/loop2")
    (root / "loop2").symlink_to("/loop1")
    fs = LocalFS(root)
    assert fs.read("/etc/abs") == b"inside" and fs.read("/etc/up") == b"inside"
    with pytest.raises(DeliveryError):
        fs.read("/etc/escape")  # the same path inside the root does not exist
    with pytest.raises(DeliveryError, match="symlinks"):
        fs.read("/loop1/x")
    st = fs.stat("/etc/abs")
    assert st is not None and stat.S_ISLNK(st.mode)
    # writes through a symlinked directory land inside the root
    (root / "lnk").symlink_to("/etc")
    fs.write("/lnk/new", b"n", 0o600)
    assert (root / "etc/new").read_bytes() == b"n"
    assert stat.S_IMODE((root / "etc/new").stat().st_mode) == 0o600
    fs.symlink("/etc/real", "/etc/abs")  # replaces in place
    assert os.readlink(root / "etc/abs") == "/etc/real"
    fs.mkdir("/a/b/c", 0o700)
    assert stat.S_IMODE((root / "a/b/c").stat().st_mode) == 0o700
    fs.remove("/etc/absent")
    with pytest.raises(DeliveryError, match="directory"):
        fs.remove("/a")
    assert not list(root.rglob("*seedtool-tmp*")) and not list(root.rglob(".seedtool-*"))



# --- a disk image (raw ext4 through debugfs) ---------------------------------------------------


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A raw ext4 image of a real Debian 12 root, made without mounting (mkfs.ext4 -d)."""
    if shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None:
        pytest.skip("e2fsprogs is not installed (apt-get install e2fsprogs)")
    d = tmp_path_factory.mktemp("image")
    cp_a(base_root("bookworm"), d / "root")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(d / "root"), str(d / "disk.raw"), "1G"],
                   check=True)
    shutil.rmtree(d / "root")
    yield d / "disk.raw"
    shutil.rmtree(d, ignore_errors=True)


def digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_bake_a_raw_ext4_image(raw_image: Path, host_pub: Path, tmp_path: Path) -> None:
    from seedtool.image.debugfs import DebugfsTarget

    img = str(raw_image)
    before = digest(raw_image)
    dry = run("bake", "--image", img, "--trusted-key", str(host_pub), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert digest(raw_image) == before
    planned = {(c["path"], c["action"]) for c in json.loads(dry.stdout)["changes"]}
    assert {("/etc/ssh/ssh_host_ed25519_key", "remove"), (lib.MACHINE_ID, "write"),
            (lib.CC_MODULE, "write")} <= planned

    done = run("bake", "--image", img, "--trusted-key", str(host_pub), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["changes"] == json.loads(dry.stdout)["changes"]
    p = run("bake", "--check", "--image", img)
    assert p.returncode == 0 and p.stdout.strip().endswith(": clean"), p.stdout
    again = run("bake", "--image", img, "--trusted-key", str(host_pub), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changes"] == []
    fsck = subprocess.run(["e2fsck", "-fn", img], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout

    # the files in the image are the ones install_guest writes
    ref = tmp_path / "ref"
    shutil.copytree(base_root("bookworm") / "etc/cloud", ref / "etc/cloud", symlinks=True)
    written = install_guest(ref, [host_pub])
    with DebugfsTarget(img) as fs:
        for path in written:
            local = ref / path.lstrip("/")
            st = fs.stat(path)
            assert st is not None, path
            if local.is_symlink():
                assert stat.S_ISLNK(st.mode), path
                continue
            assert fs.read(path) == local.read_bytes(), path
            assert stat.S_IMODE(st.mode) == stat.S_IMODE(local.stat().st_mode), path
            assert (st.uid, st.gid) == (0, 0), path
        assert fs.read(lib.MACHINE_ID) == b"uninitialized\n"
        assert not [n for n in fs.listdir("/etc/ssh") if n.startswith("ssh_host_")]

        # dirty it again inside the image: check finds each thing
        fs.write("/var/lib/systemd/random-seed", b"s" * 32, 0o600)
        key = tmp_path / "leak.key"
        generate_keypair(key, tmp_path / "leak.pub")
        fs.mkdir("/root/.config")
        fs.write("/root/.config/signing.key", key.read_bytes(), 0o600)
    p = run("bake", "--check", "--image", img, "--json")
    assert p.returncode == 1
    found = {f["path"]: f for f in json.loads(p.stdout)["findings"]}
    assert set(found) == {"/var/lib/systemd/random-seed", "/root/.config/signing.key"}
    assert "seedtool's signing key" in found["/root/.config/signing.key"]["problem"]


def test_a_bounded_scan_says_where_it_stopped(root: Path) -> None:
    for i in range(5):
        plant(root, f"/opt/many/{i}.txt", b"nothing secret\n")
    late = "/usr/share/zz-late/site.key"
    plant(root, late, b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 64 + b"\n")
    whole = {f.path for f in lib.check(LocalFS(root))}
    assert late in whole
    found = lib.check(LocalFS(root), lib.ScanBounds(max_files=3))
    stops = [f for f in found if "secret scan stopped" in f.problem]
    assert len(stops) == 1 and stops[0].severity == lib.WARNING
    assert "3 file bound" in stops[0].problem and late not in {f.path for f in found}
    # the CLI takes the bound and, with --strict, fails on it: never a silent pass
    p = run("bake", "--check", "--strict", "--root", str(root), "--scan-max-files", "3")
    assert p.returncode == 1 and f"{stops[0].path}: warning: the secret scan stopped" in p.stdout
    p = run("bake", "--check", "--root", str(root), "--scan-max-bytes", "10")
    assert "10 byte bound" in p.stdout


class _Unreadable(LocalFS):
    """LocalFS as a non-root user sees it: one file refuses to be read (EACCES).

    Root reads every file (CAP_DAC_OVERRIDE), so the refusal is injected here."""

    def __init__(self, root: Path, denied: str) -> None:
        super().__init__(root)
        self.denied = denied

    def read_chunks(self, paths: Sequence[str], size: int
                    ) -> Iterator[tuple[str, bytes | None]]:
        for path in paths:
            if path == self.denied:
                yield path, None
            else:
                yield from super().read_chunks([path], size)


def test_unreadable_files_are_reported_not_skipped_silently(root: Path) -> None:
    plant(root, "/srv/private/site.key", b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 64)
    found = {f.path: f for f in lib.check(_Unreadable(root, "/srv/private/site.key"))}
    assert found["/srv"].severity == lib.WARNING
    assert "1 file(s) here could not be read" in found["/srv"].problem
    assert "/srv/private/site.key" not in found
    assert lib.check(LocalFS(root))[0].path == "/srv/private/site.key"  # readable: found


# --- secrets anywhere in the image (C10): the whole-image scan ---------------------------------


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real keys and a real envelope, made with the tools that make them."""
    from seedtool.keys import load_private_key, public_of
    from seedtool.shared import envelope
    from seedtool.shared.pubkeys import key_id

    d = tmp_path_factory.mktemp("secrets")
    generate_keypair(d / "sign.key", d / "sign.pub")
    k = load_private_key(d / "sign.key")
    raw = envelope.build(os.urandom(64), private_key=k, key_id=key_id(public_of(k).raw),
                         seed_id=os.urandom(16), provenance={"source": "test"}, ttl=3600)
    # a seed server's reply (format version 2): it holds that boot's seed just the same
    bound = envelope.build(os.urandom(64), private_key=k, key_id=key_id(public_of(k).raw),
                           seed_id=os.urandom(16), provenance={}, ttl=3600,
                           binding=("token:0123456789abcdef", os.urandom(32)))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "ssh")],
                   check=True)
    # dropbear-bin's dropbearkey: missing, this fails (scripts/test installs it)
    for t in ("ed25519", "rsa"):
        subprocess.run(["dropbearkey", "-t", t, "-f", str(d / f"db_{t}")], check=True,
                       capture_output=True)
    return {"envelope": raw, "envelope_text": envelope.encode_text(raw).encode(),
            "bound": bound, "bound_text": envelope.encode_text(bound).encode(),
            "seedtool_key": (d / "sign.key").read_bytes(), "ssh": (d / "ssh").read_bytes(),
            "db_ed25519": (d / "db_ed25519").read_bytes(),
            "db_rsa": (d / "db_rsa").read_bytes()}


def hiding_places(s: dict[str, bytes]) -> dict[str, bytes]:
    import gzip

    text = s["envelope_text"].decode()
    return {
        # cloud-init's seed directory, which bake keeps: every instance reads it
        "/var/lib/cloud/seed/nocloud/user-data": (
            f"#cloud-config\nrandom_seed:\n  encoding: b64\n  data: {text}\n").encode(),
        "/var/lib/cloud/seed/nocloud-net/user-data": gzip.compress(
            f"#cloud-config\nrandom_seed:\n  data: {text}\n".encode()),
        "/var/lib/cloud/seed/nocloud/vendor-data": b"raw:" + s["envelope"] + b"\n",
        # a seed server's replies, kept by an image pipeline that fetched one
        "/var/tmp/fetched.env": b"x" + s["bound"],
        "/var/tmp/fetched.txt": b"envelope=" + s["bound_text"] + b"\n",
        # system cloud config: the same in every VM
        "/etc/cloud/cloud.cfg.d/50_seed.cfg": (
            f"random_seed:\n  encoding: b64\n  data: {text}\n").encode(),
        # a PEM block inside a JSON string (escaped newlines)
        "/opt/app/config.json": json.dumps({"key": s["seedtool_key"].decode()}).encode(),
        # a PEM block at the end of a large file, past any first-N-bytes read
        "/var/backups/blob.bin": os.urandom(3 << 20) + s["ssh"],
        # an OpenSSH key somewhere no list of paths names
        "/usr/share/misc/id_ed25519": s["ssh"],
        # other SSH servers' host keys: dropbear, dropbear-initramfs (bookworm, bullseye)
        "/etc/dropbear/dropbear_ed25519_host_key": s["db_ed25519"],
        "/etc/dropbear/initramfs/dropbear_rsa_host_key": s["db_rsa"],
        "/etc/dropbear-initramfs/dropbear_ed25519_host_key": s["db_ed25519"],
    }


def test_every_hiding_place_is_found_and_bake_leaves_what_it_does_not_own(
    root: Path, host_pub: Path, secrets: dict[str, bytes]
) -> None:
    places = hiding_places(secrets)
    for path, data in places.items():
        plant(root, path, data)
    found = {f.path: f for f in lib.check(LocalFS(root))}
    assert set(found) == set(places)
    assert all(f.severity == lib.ERROR and f.fix for f in found.values())
    assert "seedtool envelope" in found["/var/lib/cloud/seed/nocloud/user-data"].problem
    assert "gzip" in found["/var/lib/cloud/seed/nocloud-net/user-data"].problem
    assert "system cloud config" in found["/etc/cloud/cloud.cfg.d/50_seed.cfg"].problem
    assert "seedtool's signing key" in found["/opt/app/config.json"].problem
    assert "OpenSSH" in found["/var/backups/blob.bin"].problem
    assert "-R" in found["/etc/dropbear/dropbear_ed25519_host_key"].fix
    assert "update-initramfs" in found["/etc/dropbear/initramfs/dropbear_rsa_host_key"].fix
    assert "update-initramfs" in found["/etc/dropbear-initramfs/dropbear_ed25519_host_key"].fix

    p = run("bake", "--check", "--root", str(root))
    assert p.returncode == 1
    assert all(f"{path}: error:" in p.stdout for path in places)
    for secret in secrets.values():  # names and kinds, never contents
        assert secret[:48] not in (p.stdout + p.stderr).encode()

    # bake never touches what it does not own: all left in place, each reported
    b = bake_cli(root, host_pub, "--json")
    assert b.returncode == 0, b.stderr
    out = json.loads(b.stdout)
    assert {f["path"] for f in out["left"]} == set(places)
    assert not {c["path"] for c in out["changes"]} & set(places)
    assert all((root / path.lstrip("/")).read_bytes() == data for path, data in places.items())


def test_a_dropbear_public_key_blob_is_not_a_private_key(secrets: dict[str, bytes]) -> None:
    from seedtool.bake.imagescan import dropbear_key

    assert dropbear_key(secrets["db_ed25519"]) and dropbear_key(secrets["db_rsa"])
    # a public key blob (RFC 4253 6.6 ssh-rsa: e, n) has the same start, fewer fields
    blob = (b"\x00\x00\x00\x07ssh-rsa" + b"\x00\x00\x00\x03\x01\x00\x01"
            + b"\x00\x00\x00\x02\x00\xc1")
    assert not dropbear_key(blob)


def host_key_dir_elsewhere(root: Path, secrets: dict[str, bytes], link: str) -> Path:
    real = root / "srv/ssh"
    shutil.move(str(root / "etc/ssh"), real)
    (root / "etc/ssh").symlink_to(link)
    (real / "ssh_host_ed25519_key").write_bytes(secrets["ssh"])
    (real / "ssh_host_ed25519_key.pub").write_bytes(b"ssh-ed25519 AAAA test\n")
    return real


@pytest.mark.parametrize("link", ["/srv/ssh", "../srv/ssh", "../../../../../srv/ssh"])
def test_host_keys_behind_a_symlinked_etc_ssh_are_found_and_removed(
    root: Path, host_pub: Path, secrets: dict[str, bytes], link: str
) -> None:
    real = host_key_dir_elsewhere(root, secrets, link)
    found = {f.path: f for f in lib.check(LocalFS(root))}
    assert set(found) == {"/srv/ssh/ssh_host_ed25519_key", "/srv/ssh/ssh_host_ed25519_key.pub"}
    assert "SSH host key" in found["/srv/ssh/ssh_host_ed25519_key"].problem
    b = bake_cli(root, host_pub, "--json")
    assert b.returncode == 0, b.stderr
    removed = {c["path"] for c in json.loads(b.stdout)["changes"] if c["action"] == "remove"}
    assert {"/srv/ssh/ssh_host_ed25519_key", "/srv/ssh/ssh_host_ed25519_key.pub"} <= removed
    assert not list(real.glob("ssh_host_*")) and (real / "sshd_config").exists()
    assert os.readlink(root / "etc/ssh") == link
    assert lib.check(LocalFS(root)) == []


def test_symlinks_never_lead_out_of_the_image(root: Path, host_pub: Path, tmp_path: Path,
                                              secrets: dict[str, bytes]) -> None:
    outside = tmp_path / "outside-ssh"
    outside.mkdir()
    (outside / "ssh_host_ed25519_key").write_bytes(secrets["ssh"])
    shutil.rmtree(root / "etc/ssh")
    # absolute: the image's own /<that path>, which does not exist in the image
    (root / "etc/ssh").symlink_to(outside)
    # relative, climbing above the root: stops at the image's /
    (root / "etc/dropbear").symlink_to("../" * 30 + str(outside).lstrip("/"))
    assert lib.check(LocalFS(root)) == []
    b = bake_cli(root, host_pub, "--json")
    assert b.returncode == 0, b.stderr
    assert json.loads(b.stdout)["left"] == []
    assert (outside / "ssh_host_ed25519_key").read_bytes() == secrets["ssh"]


def test_a_symlink_loop_ends_with_a_warning(root: Path, host_pub: Path) -> None:
    shutil.rmtree(root / "etc/ssh")
    (root / "etc/ssh").symlink_to("/etc/ssh2")
    (root / "etc/ssh2").symlink_to("ssh")
    found = lib.check(LocalFS(root))
    assert [(f.path, f.severity) for f in found] == [(lib.SSH_DIR, lib.WARNING)]
    assert "symlink loop" in found[0].problem
    assert bake_cli(root, host_pub).returncode == 0


@pytest.fixture
def dirty_image(root: Path, secrets: dict[str, bytes], tmp_path: Path) -> Path:
    """A raw ext4 image (mkfs.ext4 -d, no mount) of a baked root with every hiding place
    and host keys behind a symlinked /etc/ssh."""
    for path, data in hiding_places(secrets).items():
        plant(root, path, data)
    host_key_dir_elsewhere(root, secrets, "/srv/ssh")
    img = tmp_path / "dirty.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(img), "64M"], check=True)
    return img


def test_the_scan_works_the_same_through_debugfs(dirty_image: Path, host_pub: Path,
                                                secrets: dict[str, bytes]) -> None:
    places = set(hiding_places(secrets))
    keys = {"/srv/ssh/ssh_host_ed25519_key", "/srv/ssh/ssh_host_ed25519_key.pub"}
    p = run("bake", "--check", "--image", str(dirty_image), "--json")
    assert p.returncode == 1, p.stderr
    assert {f["path"] for f in json.loads(p.stdout)["findings"]} == places | keys
    b = run("bake", "--image", str(dirty_image), "--trusted-key", str(host_pub), "--json")
    assert b.returncode == 0, b.stderr
    out = json.loads(b.stdout)
    assert keys <= {c["path"] for c in out["changes"] if c["action"] == "remove"}
    assert {f["path"] for f in out["left"]} == places
    p = run("bake", "--check", "--image", str(dirty_image), "--json")
    assert {f["path"] for f in json.loads(p.stdout)["findings"]} == places


def test_large_files_are_read_in_pieces_with_overlap(root: Path, secrets: dict[str, bytes],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from seedtool.bake import imagescan

    key = secrets["ssh"]
    monkeypatch.setattr(imagescan, "CHUNK", 4096)
    monkeypatch.setattr(imagescan, "OVERLAP", 1024)
    # a header across every possible piece boundary near the end
    for cut in (10, 500, 1023, 1030):
        plant(root, f"/var/tmp/f{cut}", b"\0" * (3 * 4096 + 1024 - cut) + key)
    found = {f.path for f in lib.check(LocalFS(root))}
    assert {f"/var/tmp/f{c}" for c in (10, 500, 1023, 1030)} <= found


def _guestfs_ready() -> bool:
    from seedtool.image import guestfs

    try:
        guestfs.check_kernel()
    except Exception:
        return False
    return guestfs.available()


@pytest.mark.skipif(not _guestfs_ready(), reason="libguestfs missing (apt-get install "
                    "libguestfs-tools python3-guestfs linux-image-cloud-amd64)")
def test_the_scan_works_the_same_through_libguestfs(dirty_image: Path,
                                                    secrets: dict[str, bytes]) -> None:
    from seedtool.image.guestfs import GuestfsTarget

    places = set(hiding_places(secrets))
    keys = {"/srv/ssh/ssh_host_ed25519_key", "/srv/ssh/ssh_host_ed25519_key.pub"}
    with GuestfsTarget(dirty_image, fmt="raw", root="/dev/sda", readonly=True) as fs:
        assert fs.readlink("/etc/ssh") == "/srv/ssh"
        assert dict(fs.scandir("/etc"))["ssh"].mode & 0o170000 == stat.S_IFLNK
        pieces = [p for _, p in fs.read_chunks(["/var/backups/blob.bin"], 1 << 20)]
        assert len(pieces) > 3 and b"".join(p or b"" for p in pieces).endswith(secrets["ssh"])
        found = {f.path for f in lib.check(fs) if f.severity == lib.ERROR}
    assert places | keys <= found


def test_the_time_bound_stops_the_scan_and_says_where(root: Path) -> None:
    from itertools import count

    from seedtool.bake import imagescan

    ticks = count()  # a clock that moves one second per look: no real time in the test
    report = imagescan.scan(LocalFS(root), lib.ScanBounds(max_seconds=5),
                            clock=lambda: float(next(ticks)))
    assert report.stopped is not None and "5 s time bound" in report.stopped[1]
    assert (root / report.stopped[0].lstrip("/")).is_file()
    # the files searched before it, each a look at the clock: the count is what was read
    assert 0 < report.files < 6


def test_a_name_debugfs_cannot_list_is_a_warning_never_a_silent_pass(
    tmp_path: Path, secrets: dict[str, bytes]
) -> None:
    from seedtool.image.debugfs import DebugfsTarget

    tree = tmp_path / "tree"
    plant(tree, "/etc/hostname", b"x\n")
    plant(tree, "/srv/a\nb", secrets["ssh"])  # `ls -p` prints this name across two lines
    img = tmp_path / "nl.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img), "16M"], check=True)
    with DebugfsTarget(img) as fs:
        found = lib.scan_findings(fs)
    assert [(f.path, f.severity) for f in found] == [("/srv", lib.WARNING)]
    assert "libguestfs" in found[0].problem
    assert [f.path for f in lib.scan_findings(LocalFS(tree))] == ["/srv/a\nb"]
