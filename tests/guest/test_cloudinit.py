"""cc_seedtool and the early launcher run by the REAL code of Debian 12 and 13.

Each test takes the cached debootstrap root of devtools/images.py (cloud-init 22.4.2 in
bookworm, 25.1.4 in trixie, Debian's own python3 and python3-cryptography), lays
a writable overlay on it, installs the guest with `install_guest`, gives it a
NoCloud seed directory, and runs `cloud-init init --local` and `cloud-init init`
in a chroot: cloud-init's own `Modules.run_section` loads cc_seedtool from
dist-packages and calls `handle` the way that version does. The chroot lives in
private mount, UTS and network namespaces (so cloud-init's hostname, mounts and
network steps touch nothing of this machine), with a /dev holding the real
urandom and a plain file as /dev/kmsg. The base roots are never modified.

This file is also the driver run inside those namespaces (`python3 THIS driver`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # when run as the driver
    sys.path.insert(0, str(REPO))

from devtools.images import RELEASES, base_root  # noqa: E402
from seedtool.generate import SeedFactory  # noqa: E402
from seedtool.keys import generate_keypair, load_private_key  # noqa: E402
from seedtool.shared import envelope  # noqa: E402

LOCAL_CFG = """\
# test harness: no network, no disk resizing inside a chroot; NoCloud seed dir only
datasource_list: [NoCloud, None]
network: {config: disabled}
growpart: {mode: "off"}
resize_rootfs: false
"""

# runs inside the chroot with the image's own python3
CHECK = r'''
import base64, glob, gzip, json, os, subprocess, sys
res = {"steps": []}
spec = json.load(open("/root/spec.json"))
for argv in spec["steps"]:
    p = subprocess.run(argv, capture_output=True, text=True)
    res["steps"].append({"argv": argv, "rc": p.returncode, "out": p.stdout[-3000:],
                         "err": p.stderr[-3000:]})
def read(path, binary=False):
    try:
        with open(path, "rb" if binary else "r") as f:
            return f.read()
    except OSError:
        return None
res["kmsg"] = read("/dev/kmsg")
res["status"] = json.loads(read("/var/lib/seedtool/status.json") or "null")
res["ci_status"] = json.loads(read("/run/cloud-init/status.json") or "null")
log = read("/var/log/cloud-init.log") or ""
res["log_lines"] = [l for l in log.splitlines()
                    if "Running module" in l or "cc_seedtool" in l
                    or "WARNING" in l or "Invalid" in l or "eprecat" in l]
res["host_keys"] = sorted(glob.glob("/etc/ssh/ssh_host_*_key.pub"))
res["seed_file_exists"] = os.path.exists("/var/lib/seedtool/seed")
res["ledger"] = read("/var/lib/seedtool/ledger")
needles = [base64.b64decode(n) for n in spec["needles"]]
hits = []
for top in ("/var/lib/cloud", "/run/cloud-init", "/var/log", "/var/lib/seedtool", "/etc"):
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if x != "journal"]
        for name in files:
            p = os.path.join(d, name)
            if os.path.islink(p):
                continue
            data = read(p, True) or b""
            if data.startswith(b"\x1f\x8b"):
                try:
                    data = gzip.decompress(data)
                except Exception:
                    pass
            if any(n in data for n in needles):
                hits.append(p)
res["hits"] = hits
print("RESULT " + json.dumps(res))
'''


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True)


def driver(work: Path) -> int:
    """Inside fresh mount/UTS/net namespaces: overlay, install, chroot, run the checks."""
    from seedtool.bake.install import install_guest

    spec = json.loads((work / "driver.json").read_text())
    lower = Path(spec["lower"])
    merged, upper, scratch = work / "merged", work / "upper", work / "scratch"
    for d in (merged, upper, scratch):
        d.mkdir(exist_ok=True)
    _mount("--make-rprivate", "/")
    _mount("-t", "overlay", "overlay", "-o",
           f"lowerdir={lower},upperdir={upper},workdir={scratch}", str(merged))
    servers = None
    if spec.get("seed_servers") is not None:
        from tests.guest.test_cloudinit_network import start_seed_servers

        servers = start_seed_servers(work, merged, spec["seed_servers"])
    install_guest(merged, [work / "trusted.pub"], spec.get("policy"),
                  seed_servers=servers.files if servers else None)
    (merged / "etc/cloud/cloud.cfg.d/05_seedtool_test.cfg").write_text(LOCAL_CFG)
    seed_dir = merged / "var/lib/cloud/seed/nocloud"
    seed_dir.mkdir(parents=True, exist_ok=True)
    (seed_dir / "meta-data").write_text(spec["meta_data"])
    (seed_dir / "user-data").write_text(spec["user_data"])
    if spec.get("disk_seed"):
        (merged / "var/lib/seedtool/seed").write_text(spec["disk_seed"])
    _mount("-t", "proc", "proc", str(merged / "proc"))
    _mount("-t", "sysfs", "sysfs", str(merged / "sys"))
    # systemd-analyze verify (247) starts a manager, which needs the cgroup tree
    _mount("-t", "cgroup2", "cgroup2", str(merged / "sys/fs/cgroup"))
    for d in ("dev", "run", "tmp"):
        _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(merged / d))
    dev = merged / "dev"
    for name, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
        os.mknod(dev / name, 0o20666, os.makedev(1, minor))
        os.chmod(dev / name, 0o666)
    (dev / "kmsg").touch()
    (dev / "fd").symlink_to("/proc/self/fd")
    (merged / "root/check.py").write_text(CHECK)
    (merged / "root/spec.json").write_text(json.dumps(spec["check"]))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    try:
        res = subprocess.run(["chroot", str(merged), "/usr/bin/python3", "/root/check.py"],
                             env=env, capture_output=True, text=True, check=False)
    finally:
        if servers:
            servers.stop()
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    return res.returncode


@dataclass
class Run:
    result: dict[str, Any]
    seed_id: str | None

    def step(self, i: int) -> dict[str, Any]:
        step: dict[str, Any] = self.result["steps"][i]
        return step

    def kmsg_lines(self) -> list[str]:
        return [line for line in (self.result["kmsg"] or "").splitlines() if line]

    def module_order(self) -> list[str]:
        order = []
        for line in self.result["log_lines"]:
            if "Running module " in line:
                order.append(line.split("Running module ", 1)[1].split(" ", 1)[0])
        return order


def run_in_chroot(tmp_path: Path, release: str, private_key: Any, pub: Path, *,
                  user_data: str, steps: list[list[str]], needles: list[bytes],
                  disk_seed: str | None = None, policy: dict[str, Any] | None = None,
                  seed_id: str | None = None, meta_extra: str = "",
                  seed_servers: dict[str, Any] | None = None) -> Run:
    """Run `steps` in the chroot. `seed_servers` (tests/guest/test_cloudinit_network.py):
    seed servers run inside the chroot's network namespace and baked into the image."""
    lower = base_root(release)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(pub, work / "trusted.pub")
    spec = {
        "lower": str(lower),
        "meta_data": f"instance-id: iid-seedtool-{release}\nlocal-hostname: seedtest\n"
                     + meta_extra,
        "user_data": user_data,
        "disk_seed": disk_seed,
        "policy": policy,
        "seed_servers": seed_servers,
        "check": {"steps": steps,
                  "needles": [base64.b64encode(n).decode() for n in needles]},
    }
    (work / "driver.json").write_text(json.dumps(spec))
    res = subprocess.run(
        ["unshare", "--mount", "--uts", "--net", "--propagation", "private",
         sys.executable, __file__, "driver", str(work)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    out = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert res.returncode == 0 and out, (
        f"driver failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    )
    return Run(json.loads(out[-1][len("RESULT "):]), seed_id)


def seed_needles(raw: bytes, text: str) -> list[bytes]:
    seed = envelope.parse(raw).uncredited_seed
    return [text.encode(), raw, seed, seed.hex().encode(), base64.b64encode(seed)]


def early_exec_start() -> str:
    """The early unit's own ExecStart line, as systemd would run it."""
    unit = (REPO / "seedtool/guest/data/seedtool-early.service").read_text()
    return next(line.split("=", 1)[1] for line in unit.splitlines()
                if line.startswith("ExecStart="))
INIT = [["cloud-init", "init", "--local"], ["cloud-init", "init"]]


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Any, Path]:
    generate_keypair(tmp_path / "host.key", tmp_path / "host.pub")
    return load_private_key(tmp_path / "host.key"), tmp_path / "host.pub"


def user_data_with(text: str, encoding: str = "b64") -> str:
    return f"#cloud-config\nrandom_seed:\n  data: {text}\n  encoding: {encoding}\n"


def assert_init_clean(run: Run) -> None:
    for step in run.result["steps"]:
        assert step["rc"] == 0, step
    st = run.result["ci_status"]["v1"]["init"]
    assert st["errors"] == [], st
    assert st.get("recoverable_errors", {}) == {}, st["recoverable_errors"]
    bad = [line for line in run.result["log_lines"]
           if "Invalid cloud-config" in line or "eprecat" in line or "seedtool" in line
           and "WARNING" in line]
    assert bad == []


@pytest.mark.parametrize("release", RELEASES)
def test_cloud_init_credits_a_signed_seed_before_ssh(tmp_path: Path, release: str,
                                                     signer: tuple[Any, Path]) -> None:
    key, pub = signer
    new = SeedFactory(key).new()
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data=user_data_with(new.text),
        steps=[*INIT, ["rm", "-rf", "/run/cloud-init"], *INIT],  # then a "reboot"
        needles=seed_needles(new.raw, new.text),
    )
    assert_init_clean(run)
    lines = run.kmsg_lines()
    assert len(lines) == 1, lines  # once per instance: not again on the second boot
    assert lines[0].startswith(f"<5>seedtool: credited 512 bits from seed {new.seed_id} "
                               "signed by key ")
    assert "(user-data, crng ready->ready)" in lines[0]
    st = run.result["status"]
    assert st["credited_bits"] == 512 and st["stage"] == "cloud-init" and st["verified"]
    order = run.module_order()
    assert order.index("seed_random") < order.index("seedtool") < order.index("ssh")
    assert order.count("seedtool") == 2  # looked at on both boots, ran on the first only
    assert run.result["host_keys"], "cc_ssh made no host keys"
    assert run.result["ledger"].startswith(new.seed_id)
    # no copy of the envelope or the seed left anywhere cloud-init or seedtool writes,
    # even after the second boot rebuilt user-data.txt & co. from obj.pkl
    assert run.result["hits"] == []
    # obj.pkl was cleaned by re-pickling the scrubbed in-memory datasource, not only by
    # the file pass (which cannot reach a gzip userdata_raw inside a pickle)
    (scrubbed,) = [line for line in run.result["log_lines"] if "scrubbed the seed" in line]
    assert "cloud-config.txt" in scrubbed and "obj.pkl" not in scrubbed


@pytest.mark.parametrize("release", RELEASES)
def test_cloud_init_mixes_a_bad_seed_and_boots_on(tmp_path: Path, release: str,
                                                  signer: tuple[Any, Path]) -> None:
    key, pub = signer
    raw = bytearray(SeedFactory(key).new().raw)
    raw[-1] ^= 1
    text = base64.b64encode(bytes(raw)).decode()
    run = run_in_chroot(tmp_path, release, key, pub, user_data=user_data_with(text),
                        steps=INIT, needles=seed_needles(bytes(raw), text))
    assert_init_clean(run)
    (line,) = run.kmsg_lines()
    assert line.endswith("uncredited (user-data): signature does not verify")
    assert run.result["status"]["credited_bits"] == 0
    assert run.result["host_keys"] and run.result["hits"] == []


@pytest.mark.parametrize("release", RELEASES)
def test_fail_closed_policy_makes_cloud_init_report_the_error(tmp_path: Path, release: str,
                                                              signer: tuple[Any, Path]) -> None:
    key, pub = signer
    run = run_in_chroot(tmp_path, release, key, pub, user_data="#cloud-config\n{}\n",
                        steps=INIT, needles=[], policy={"fail_closed": True})
    (line,) = run.kmsg_lines()
    assert line.endswith("uncredited (user-data): no seed offered")
    errors = run.result["ci_status"]["v1"]["init"]["errors"]
    assert any("fail_closed" in e for e in errors), errors


@pytest.mark.parametrize("release", RELEASES)
def test_early_launcher_credits_a_disk_seed(tmp_path: Path, release: str,
                                            signer: tuple[Any, Path]) -> None:
    """The unit's own ExecStart, under the image's python3, before cloud-init runs."""
    key, pub = signer
    new = SeedFactory(key).new()
    exec_start = early_exec_start()
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data="#cloud-config\n{}\n", disk_seed=new.text,
        steps=[["systemd-analyze", "verify", "/usr/lib/systemd/system/seedtool-early.service"],
               ["systemctl", "is-enabled", "seedtool-early.service"],
               exec_start.split(), *INIT],
        needles=seed_needles(new.raw, new.text),
    )
    verify, enabled, launched = run.step(0), run.step(1), run.step(2)
    assert verify["rc"] == 0 and verify["err"] == "", verify  # systemd accepts the unit
    assert enabled["rc"] == 0 and enabled["out"].strip() == "enabled", enabled
    assert launched["rc"] == 0, launched
    lines = run.kmsg_lines()
    assert lines[0].startswith(f"<5>seedtool: credited 512 bits from seed {new.seed_id} ")
    assert "(disk, crng " in lines[0]
    assert lines[1] == "<5>seedtool: mixed seed - uncredited (user-data): no seed offered"
    assert not run.result["seed_file_exists"]
    # cloud-init's "no seed" must not hide the early credit in status.json
    assert run.result["status"]["stage"] == "early-boot"
    assert run.result["status"]["seed_id"] == new.seed_id
    assert run.result["hits"] == []


# ---- every form cloud-init accepts an envelope in (issue 8, points 2 and 3) ---------------

# Runs inside the chroot after cloud-init (image python3, standard library and cloudinit
# only): an oracle written apart from seedtool.guest.scrub. It reads each file, and
# obj.pkl reloaded with cloud-init's own pkl_load, the ways cloud-init's copies encode
# it: gzip members, base64 runs (layout removed, every alignment), Python bytes
# literals, JSON strings, and the text with layout and escapes removed; every needle
# (raw envelope, its base64 text, the seed raw, hex and base64) is looked for in each.
# It is given the whole envelope (tests/hygiene.py allows that in output), not the seed.
DEEP_CHECK = r'''
import ast, base64, binascii, json, os, re, struct, sys, zlib
text = sys.argv[1]  # the whole envelope (the needles are derived here, never printed)
raw = base64.b64decode(text)
(seed_len,) = struct.unpack_from(">H", raw, 46)  # docs/envelope.md: the seed follows
seed = raw[48:48 + seed_len]
needles = [raw, text.rstrip("=").encode(), seed, seed.hex().encode(),
           base64.b64encode(seed).rstrip(b"=")]
tops = json.loads(sys.argv[2])
RUN = re.compile(rb"[A-Za-z0-9+/]{48,}")
LIT = re.compile(rb"b'(?:[^'\\\r\n]|\\.)*'|b\"(?:[^\"\\\r\n]|\\.)*\"")
def flat(b):
    return b.replace(b"\\n", b"").replace(b"=\n", b"").translate(None, b" \t\r\n\"'\\")
def views(b, depth=0):
    yield b
    yield flat(b)
    if depth >= 5 or len(b) > 8 << 20:
        return
    for i in [m.start() for m in re.finditer(rb"\x1f\x8b", b)][:50]:
        try:
            plain = zlib.decompressobj(31).decompress(b[i:], 64 << 20)
        except zlib.error:
            continue
        yield from views(plain, depth + 1)
    for m in list(RUN.finditer(flat(b)))[:200]:
        for off in range(4):
            run = m.group()[off:]
            run = run[: len(run) // 4 * 4]
            try:
                yield from views(binascii.a2b_base64(run), depth + 1)
            except binascii.Error:
                pass
    for m in list(LIT.finditer(b))[:200]:
        try:
            yield from views(ast.literal_eval(m.group().decode("latin-1")), depth + 1)
        except Exception:
            pass
    try:
        doc = json.loads(b)
    except Exception:
        doc = None
    stack = [doc]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, str) and len(x) >= 48:
            yield from views(x.encode("utf-8", "surrogateescape"), depth + 1)
def leaks(b):
    return any(n in v for v in views(b) for n in needles)
hits = []
for top in tops:
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if x != "journal"]
        for name in files:
            p = os.path.join(d, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            with open(p, "rb") as f:
                if leaks(f.read()):
                    hits.append(p)
from cloudinit import sources
from email.message import Message
def values(o, seen):
    if id(o) in seen:
        return
    seen.add(id(o))
    if isinstance(o, (bytes, bytearray)):
        yield bytes(o)
    elif isinstance(o, str):
        yield o.encode("utf-8", "surrogateescape")
    elif isinstance(o, dict):
        for v in o.values():
            yield from values(v, seen)
    elif isinstance(o, (list, tuple)):
        for v in o:
            yield from values(v, seen)
    elif isinstance(o, Message):
        yield from values(o.get_payload(), seen)
    elif type(o).__module__.startswith("cloudinit") and hasattr(o, "__dict__"):
        yield from values(vars(o), seen)
pkl = "/var/lib/cloud/instance/obj.pkl"
# cloudinit.sources.pkl_load in 22.4.2 and later, cloudinit.stages._pkl_load in 20.4.1
from cloudinit import stages
pkl_load = getattr(sources, "pkl_load", None) or getattr(stages, "_pkl_load")
ds = pkl_load(pkl) if os.path.exists(pkl) else None
memory = [] if ds is None else [type(ds).__name__]
if ds is not None and any(leaks(v) for v in values(ds, set())):
    memory.append("LEAK")
print("DEEP " + json.dumps({"hits": hits, "pkl": memory}))
'''

DEEP_TOPS = ["/var/lib/cloud", "/run/cloud-init", "/var/log", "/var/tmp", "/var/lib/seedtool",
             "/var/lib/waagent"]


def deep_check(text: str) -> list[str]:
    """A step running DEEP_CHECK for the envelope `text` (its seed is found inside)."""
    assert envelope.parse(text).uncredited_seed == envelope.decode_text(text)[48:][
        :envelope.parse(text).seed_len]
    return ["python3", "-c", DEEP_CHECK, text, json.dumps(DEEP_TOPS)]


def deep_result(run: Run, i: int) -> dict[str, Any]:
    step = run.step(i)
    lines = [ln for ln in step["out"].splitlines() if ln.startswith("DEEP ")]
    assert step["rc"] == 0 and lines, step
    result: dict[str, Any] = json.loads(lines[-1][len("DEEP "):])
    return result


def write_user_data(blob: bytes, name: str = "user-data") -> list[str]:
    """A step that puts binary user-data (or vendor-data) into the NoCloud seed."""
    return ["python3", "-c", "import base64, sys; open('/var/lib/cloud/seed/nocloud/' + "
            "sys.argv[2], 'wb').write(base64.b64decode(sys.argv[1]))",
            base64.b64encode(blob).decode(), name]


def _wrapped(text: str, width: int, indent: str) -> str:
    return ("\n" + indent).join(text[i:i + width] for i in range(0, len(text), width))


def _mime_part(doc: str, cte: str) -> str:
    body = doc.encode()
    if cte == "base64":
        payload = base64.encodebytes(body).decode()
    else:
        import quopri

        payload = quopri.encodestring(body).decode()
    return (f"Content-Type: text/cloud-config; charset=\"utf-8\"\n"
            f"Content-Transfer-Encoding: {cte}\nMIME-Version: 1.0\n\n{payload}")


def gzip_mime_user_data(text: str) -> bytes:
    """gzip of MIME: a base64 part (folded scalar), a quoted-printable part (double-quoted,
    soft line breaks) and a last plain part with `!!binary` gzip and `encoding: gz`,
    which cloud-init's default merge makes the one seed_random reads."""
    import gzip as gz

    folded = ("#cloud-config\nrandom_seed:\n  data: >\n    " + _wrapped(text, 20, "    ")
              + "\n  encoding: b64\n")
    quoted = f'#cloud-config\nrandom_seed:\n  data: "{text}"\n  encoding: b64\n'
    binary = base64.encodebytes(gz.compress(text.encode(), mtime=0)).decode()
    last = ("#cloud-config\nrandom_seed:\n  encoding: gz\n  data: !!binary |\n    "
            + binary.strip().replace("\n", "\n    ") + "\n")
    b = "seedtool-test-boundary"
    doc = (f'Content-Type: multipart/mixed; boundary="{b}"\nMIME-Version: 1.0\n\n'
           f"--{b}\n{_mime_part(folded, 'base64')}\n--{b}\n{_mime_part(quoted, 'quoted-printable')}"
           f"\n--{b}\nContent-Type: text/cloud-config\nMIME-Version: 1.0\n\n{last}\n--{b}--\n")
    return gz.compress(doc.encode(), mtime=0)


def assert_mixed_and_scrubbed(run: Run, new: Any, reason: str) -> None:
    """Not credited for `reason`, not in the ledger, and no form of it left anywhere."""
    for step in run.result["steps"][:-1]:
        assert step["rc"] in (0, 2), step  # 2: cloud-init's schema warning (25.1)
    (line,) = run.kmsg_lines()
    assert line == (f"<5>seedtool: mixed seed {new.seed_id} uncredited (user-data): "
                    f"not in the form seedtool writes: {reason}")
    assert run.result["status"]["credited_bits"] == 0
    assert not run.result["ledger"]  # never recorded: a later canonical copy may credit
    assert run.result["host_keys"]
    assert run.result["hits"] == []
    deep = deep_result(run, -1)
    assert deep == {"hits": [], "pkl": ["DataSourceNoCloud"]}, deep
    (scrubbed,) = [ln for ln in run.result["log_lines"] if "scrubbed the seed" in ln]
    assert "not fully searched" not in scrubbed


@pytest.mark.parametrize("release", RELEASES)
def test_gzip_mime_binary_and_folded_forms_are_scrubbed_and_not_credited(
        tmp_path: Path, release: str, signer: tuple[Any, Path]) -> None:
    """Real cloud-init reads gzip user-data holding MIME with a base64 part (folded
    scalar), a quoted-printable part (double-quoted, soft line breaks) and a last part
    with `!!binary` gzip and `encoding: gz`, which its merge makes the seed_random
    input. Not credited (not the form seedtool writes), and afterwards no form of the
    envelope is left in any file nor in obj.pkl reloaded."""
    key, pub = signer
    new = SeedFactory(key).new()
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data="", needles=seed_needles(new.raw, new.text),
        steps=[write_user_data(gzip_mime_user_data(new.text)), *INIT, deep_check(new.text)],
    )
    assert_mixed_and_scrubbed(run, new, "data is binary (!!binary); encoding is 'gz', "
                                        "not 'b64'")


@pytest.mark.parametrize("release", RELEASES)
def test_a_wrapped_seed_copied_to_random_seed_file_is_scrubbed_there_too(
        tmp_path: Path, release: str, signer: tuple[Any, Path]) -> None:
    """A line-wrapped literal block whose random_seed.file makes seed_random append
    the seed to a regular file: not credited (the reason names the file), and the
    file, like every copy cloud-init keeps, no longer holds it (its length kept).
    The same envelope also arrives in NoCloud vendor-data (single-quoted, wrapped):
    vendor-data.txt, vendor-data.txt.i and the vendor cloud-config are scrubbed too."""
    key, pub = signer
    new = SeedFactory(key).new()
    wrapped = ("#cloud-config\nrandom_seed:\n  data: |\n    " + _wrapped(new.text, 60, "    ")
               + "\n  encoding: b64\n  file: /var/tmp/seed-copy\n")
    vendor = ("#cloud-config\nrandom_seed: {data: '" + _wrapped(new.text, 50, "   ")
              + "', encoding: b64}\n").encode()
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data=wrapped,
        needles=seed_needles(new.raw, new.text),
        steps=[write_user_data(vendor, "vendor-data"), *INIT,
               ["stat", "-c", "%s %F", "/var/tmp/seed-copy"], deep_check(new.text)],
    )
    assert_mixed_and_scrubbed(run, new, "data is not the one-line base64 text; "
                              "random_seed.file is /var/tmp/seed-copy, where seed_random "
                              "copied it")
    assert run.step(3)["out"].strip() == f"{len(new.raw)} regular file", run.step(3)
    (scrubbed,) = [ln for ln in run.result["log_lines"] if "scrubbed the seed" in ln]
    assert "/var/tmp/seed-copy" in scrubbed and "/vendor-data.txt" in scrubbed, scrubbed


GCE_DRIVER = r'''
import base64, gzip, json, logging, os, sys
handler = logging.FileHandler("/var/log/cloud-init.log")
handler.setFormatter(logging.Formatter("%(name)s[%(levelname)s]: %(message)s"))
for name in ("cc_seedtool", "seedtool"):
    logging.getLogger(name).addHandler(handler)
    logging.getLogger(name).setLevel(logging.DEBUG)
from cloudinit import helpers, sources, stages, util
from cloudinit.cloud import Cloud
from cloudinit.sources import DataSourceGCE as G
# cloudinit.sources.pkl_* in 22.4.2 and later, cloudinit.stages._pkl_* in 20.4.1
pkl_store = getattr(sources, "pkl_store", None) or getattr(stages, "_pkl_store")
pkl_load = getattr(sources, "pkl_load", None) or getattr(stages, "_pkl_load")
spec = json.loads(sys.argv[1])
values = {"instance/id": "4242", "instance/zone": "projects/1/zones/europe-west1-b",
          "instance/hostname": "seedtest.c.project.internal",
          "instance/attributes": json.dumps(spec["attributes"]), "project/attributes": "{}"}
# the metadata server, by hand: no network (GoogleMetadataFetcher.get_value's result)
G.GoogleMetadataFetcher.get_value = lambda self, path, is_text, is_recursive=False: values[path]
G.platform_reports_gce = lambda: True
util.is_resolvable_url = lambda url: True
paths = helpers.Paths({"cloud_dir": "/var/lib/cloud", "run_dir": "/run/cloud-init"})
os.makedirs("/run/cloud-init", exist_ok=True)  # 20.4.1's get_data writes there, unmade
ds = G.DataSourceGCE({"datasource": {"GCE": {}}}, None, paths)
assert ds.get_data()  # cloud-init's own crawl: metadata, userdata_raw, instance-data*.json
paths.datasource = ds
idir = paths.get_ipath()
os.makedirs(idir, exist_ok=True)
if not os.path.exists("/var/lib/cloud/instance"):
    os.symlink(idir, "/var/lib/cloud/instance")
util.write_file(paths.get_ipath("userdata_raw"), ds.get_userdata_raw(), 0o600)
pkl_store(ds, paths.get_ipath_cur("obj_pkl"))
def attributes(md):  # a JSON text in 20.4-25.1, parsed into a dict by 26.2's crawl
    value = md["instance-data"]
    return value if isinstance(value, dict) else json.loads(value)
before = attributes(ds.metadata)["user-data"]
# does the world-readable copy hold the attributes' user-data (20.4-25.1), or does this
# cloud-init keep it in the sensitive file only?
with open("/run/cloud-init/instance-data.json") as f:
    public_held = before in f.read()
import cc_seedtool
cloud = Cloud(ds, paths, {}, None, None)
cfg = {"random_seed": {"data": spec["text"], "encoding": "b64"}}
cc_seedtool.handle("seedtool", cfg, cloud, logging.getLogger("seedtool"), [])
back = pkl_load(paths.get_ipath_cur("obj_pkl"))
after = attributes(back.metadata)["user-data"]
plain = gzip.decompress(base64.b64decode(after))
raw_plain = gzip.decompress(back.userdata_raw)
print("GCE " + json.dumps({
    "type": type(back).__name__, "same_length": len(after) == len(before),
    "changed": after != before, "in_attributes": spec["text"].encode() in plain,
    "in_userdata_raw": spec["text"].encode() in raw_plain,
    "user_part_kept": spec["user"].encode() in plain and spec["user"].encode() in raw_plain,
    "run_files": sorted(n for n in os.listdir("/run/cloud-init") if n.startswith("instance-data")),
    "public_held": public_held,
}))
'''


@pytest.mark.parametrize("release", RELEASES)
def test_gce_instance_data_holding_base64_of_gzip_user_data_is_scrubbed(
        tmp_path: Path, release: str, signer: tuple[Any, Path]) -> None:
    """A real DataSourceGCE of that release crawls metadata given by hand whose
    attributes hold `seedtool userdata --target gce` output for gzip input (base64 of
    gzip, `user-data-encoding: base64`), is pickled with pkl_store and writes its
    instance-data*.json; cc_seedtool's handle credits the canonical seed and scrubs:
    obj.pkl reloaded holds no copy in `instance-data` (same length, still base64 of a
    valid gzip member with the user's part) nor in `userdata_raw`, and no file does."""
    import gzip as gz

    from seedtool.deliver.userdata import add_seed, gce_metadata

    key, pub = signer
    new = SeedFactory(key).new()
    user = "#cloud-config\nruncmd: [[echo, users-own-part]]\n"
    attributes = gce_metadata(add_seed(gz.compress(user.encode()), new.text, target="gce"))
    assert attributes["user-data-encoding"] == "base64"
    spec = {"attributes": attributes, "text": new.text, "user": "users-own-part"}
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data="#cloud-config\n{}\n",
        needles=seed_needles(new.raw, new.text),
        steps=[["python3", "-c", GCE_DRIVER, json.dumps(spec)],
               deep_check(new.text)],
    )
    driven = run.step(0)
    lines = [ln for ln in driven["out"].splitlines() if ln.startswith("GCE ")]
    assert driven["rc"] == 0 and lines, driven
    got = json.loads(lines[-1][4:])
    public_held = got.pop("public_held")
    assert got == {
        "type": "DataSourceGCE", "same_length": True, "changed": True,
        "in_attributes": False, "in_userdata_raw": False, "user_part_kept": True,
        # written by the datasource's own persist_instance_data, searched by deep_check
        "run_files": ["instance-data-sensitive.json", "instance-data.json"]}
    (line,) = run.kmsg_lines()
    assert line.startswith(f"<5>seedtool: credited 512 bits from seed {new.seed_id} ")
    assert deep_result(run, 1) == {"hits": [], "pkl": ["DataSourceGCE"]}
    assert run.result["hits"] == []
    # the copies the datasource wrote itself held it and were scrubbed in place: the
    # sensitive file always, the world-readable instance-data.json where this cloud-init
    # keeps the attributes there too (20.4-25.1; 26.2 does not)
    (scrubbed,) = [ln for ln in run.result["log_lines"] if "scrubbed the seed" in ln]
    names = ["instance-data-sensitive.json", "/var/lib/cloud/instances/4242/user-data.txt"]
    if public_held:
        names.append("/run/cloud-init/instance-data.json")
    else:
        assert "/run/cloud-init/instance-data.json" not in scrubbed, scrubbed
    for name in names:
        assert name in scrubbed, scrubbed
    assert "not fully searched" not in scrubbed


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "driver":
    sys.exit(driver(Path(sys.argv[2])))
