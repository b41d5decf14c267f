"""Secret hygiene: file modes, the leak-search plugin itself, no shell, constant-time compares.

* Seed and private-key files are created 0600 whatever the umask, also when they
  replace a world-readable file; a private key readable by group or others is refused.
  (The seed written inside a disk image is checked by tests/deliver/test_image_seed.py's
  check_seed, (mode, uid, gid) == (0o600, 0, 0); here once more through the CLI.)
* The plugin in tests/hygiene.py, which searches everything every test wrote for the
  seeds it made, catches planted leaks of every kind and lets legitimate carriers
  through; run in a child pytest so this suite stays green, and its report must not
  itself hold the seed.
* No subprocess call in the product goes through a shell, and secrets (MACs, key ids,
  seed ids) are compared with `hmac.compare_digest`: both by scanning the source with
  `ast`, each scanner proven on planted samples first.
"""

from __future__ import annotations

import ast
import base64
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from seedtool.generate import SeedFactory
from seedtool.keys import generate_keypair, load_private_key
from seedtool.shared import envelope
from seedtool.shared.errors import SigningKeyError
from tests.hygiene import Haystack, envelopes_in, looks_random, needles_for, search

REPO = Path(__file__).resolve().parent.parent
PRODUCT_DIRS = [REPO / "seedtool", REPO / "cloud_init_modules"]


def run_py(code: str, *, cwd: Path | None = None,
           input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, input=input,
                          capture_output=True, timeout=300, check=False)


def cli_under_umask(*args: str, umask: int = 0) -> subprocess.CompletedProcess[bytes]:
    """`seedtool ARGS` in a child whose umask is `umask` (default: nothing masked)."""
    code = (f"import os, sys; os.umask({umask:#o}); from seedtool.cli import main; "
            f"main({list(args)!r})")
    return run_py(code)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    return tmp_path / "k.key"


# ---- files holding secrets are 0600 -----------------------------------------------------------


def test_keygen_private_key_is_0600_and_public_0644_under_umask_0(tmp_path: Path) -> None:
    p = cli_under_umask("keygen", "-o", str(tmp_path / "sub" / "host.key"))
    assert p.returncode == 0, p.stderr
    assert mode(tmp_path / "sub" / "host.key") == 0o600
    assert mode(tmp_path / "sub" / "host.pub") == 0o644
    assert mode(tmp_path / "sub") == 0o700  # the directory keygen made for it
    assert not [x for x in (tmp_path / "sub").iterdir() if "seedtool" in x.name]


@pytest.mark.parametrize("command", ["generate", "userdata", "nocloud"])
def test_seed_outputs_are_0600_under_umask_0_even_over_a_world_readable_file(
        tmp_path: Path, key: Path, command: str) -> None:
    out = tmp_path / f"{command}.out"
    out.write_bytes(b"old")
    out.chmod(0o666)
    p = cli_under_umask(command, "--key", str(key), "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert mode(out) == 0o600 and out.stat().st_uid == os.geteuid()
    assert out.read_bytes() != b"old"


def _mkfs_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (root / "var/lib").mkdir(parents=True)
    img = tmp_path / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(img), "8M"], check=True,
                   capture_output=True)
    img.chmod(0o600)  # image seed refuses an image others can read
    return img


@pytest.mark.skipif(not (shutil.which("mkfs.ext4") and shutil.which("debugfs")),
                    reason="needs e2fsprogs (mkfs.ext4, debugfs)")
def test_image_seed_inside_the_image_is_0600_root(tmp_path: Path, key: Path) -> None:
    img = _mkfs_root(tmp_path)
    p = cli_under_umask("image", "seed", str(img), "--key", str(key))
    if b"No such command 'image'" in p.stderr:
        pytest.skip("this seedtool has no 'image seed' command yet")
    assert p.returncode == 0, p.stderr
    st = subprocess.run(["debugfs", "-R", "stat /var/lib/seedtool/seed", str(img)],
                        capture_output=True, text=True, check=True).stdout
    m = re.search(r"Mode:\s+(0?[0-7]+)", st)
    assert m and int(m.group(1), 8) == 0o600, st
    assert re.search(r"User:\s+0\s+Group:\s+0", st), st


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o602, 0o700 | 0o040])
def test_group_or_world_readable_private_key_is_refused(tmp_path: Path, key: Path,
                                                         bad_mode: int) -> None:
    key.chmod(bad_mode)
    with pytest.raises(SigningKeyError, match=r"readable by group or others .*'chmod 600 "):
        load_private_key(key)
    out = tmp_path / "seed.env"
    p = cli_under_umask("generate", "--key", str(key), "-o", str(out))
    assert p.returncode == 1
    assert b"readable by group or others" in p.stderr and not out.exists()


@pytest.mark.parametrize("good_mode", [0o600, 0o400])
def test_owner_only_private_key_is_accepted(key: Path, good_mode: int) -> None:
    key.chmod(good_mode)
    assert load_private_key(key) is not None


def test_private_key_through_a_symlink_is_refused(tmp_path: Path, key: Path) -> None:
    link = tmp_path / "link.key"
    link.symlink_to(key)
    with pytest.raises(SigningKeyError, match="cannot read signing key"):
        load_private_key(link)


# ---- the leak-search plugin ---------------------------------------------------------------------

PLANTED = '''
import base64, logging, subprocess, sys
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from seedtool.shared import envelope
from seedtool.shared.errors import SourceError
from seedtool.generate import SeedFactory

SIDE = {side!r}


def make():
    new = SeedFactory(Ed25519PrivateKey.generate()).new()
    seed = envelope.parse(new.raw).uncredited_seed
    with open(SIDE, "a") as f:  # tell the outer test which seed to look for
        f.write(seed.hex() + "\\n")
    return new, seed


def test_leak_hex_on_stdout():
    print("debug:", make()[1].hex())

def test_leak_upper_hex_on_stderr():
    print(make()[1].hex().upper(), file=sys.stderr)

def test_leak_read_back_through_capsys(capsys):
    print(make()[1][:20].hex())
    assert capsys.readouterr().out

def test_leak_base64_at_an_odd_offset_in_a_log_record():
    seed = make()[1]
    logging.getLogger("seedtool.x").debug("blob %s", base64.b64encode(b"\\x01" + seed).decode())

def test_leak_url_safe_base64_in_a_log_of_another_logger():
    logging.getLogger("other").warning(base64.urlsafe_b64encode(b"ab" + make()[1]).decode())

def test_leak_in_an_exception_message_the_test_catches():
    seed = make()[1]
    with pytest.raises(SourceError):
        raise SourceError(f"bad block {{seed[8:40].hex()}}")

def test_leak_raw_bytes_in_a_file(tmp_path):
    (tmp_path / "dump.bin").write_bytes(b"\\0" * 7 + make()[1][3:37] + b"\\0")

def test_leak_whole_envelope_in_status_json(tmp_path):
    (tmp_path / "status.json").write_text(make()[0].text)

def test_leak_envelope_in_a_log_file(tmp_path):
    (tmp_path / "guest.log").write_text("got " + make()[0].text)

def test_leak_in_a_child_process_seed_learned_from_its_envelope_file(tmp_path):
    # the seed is made in the child: this process learns it only from seed.env
    code = ("import sys, test_planted as t; new, seed = t.make(); "
            "open(sys.argv[1], 'w').write(new.text); sys.stderr.write(seed.hex())")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "seed.env")],
                   capture_output=True, check=True)

def test_leak_in_a_status_file_of_a_seed_made_in_a_child(tmp_path):
    new, seed = make()
    (tmp_path / "user-data").write_text("#cloud-config\\nrandom_seed:\\n  data: " + new.text)
    (tmp_path / "status-cloud-init.json").write_text(base64.b64encode(seed).decode())

def test_ok_envelope_on_stdout_and_in_files(tmp_path):
    new, seed = make()
    print(new.text)
    (tmp_path / "seed.env").write_text(new.text + "\\n")
    (tmp_path / "seed.raw").write_bytes(b"header" + new.raw + b"trailer")
    wrapped = "\\n".join(new.text[i:i + 76] for i in range(0, len(new.text), 76))
    (tmp_path / "user-data").write_text("#cloud-config\\nrandom_seed:\\n  data: |\\n" + wrapped)

def test_ok_seed_id_and_summary(tmp_path):
    new, seed = make()
    print(new.seed_id, new.summary)
    (tmp_path / "status.json").write_text(str(new.summary))

@pytest.mark.hygiene_exempt("plants a seed on purpose")
def test_ok_exempt():
    print(make()[1].hex())
'''

LEAKS = {
    "test_leak_hex_on_stdout": ("hex", "captured stdout call"),
    "test_leak_upper_hex_on_stderr": ("upper-case hex", "captured stderr call"),
    "test_leak_read_back_through_capsys": ("hex", "standard output read by the test"),
    "test_leak_base64_at_an_odd_offset_in_a_log_record": ("base64", "logger 'seedtool.x'"),
    "test_leak_url_safe_base64_in_a_log_of_another_logger": ("url-safe base64",
                                                             "logger 'other'"),
    "test_leak_in_an_exception_message_the_test_catches": ("hex", "message of a SourceError"),
    "test_leak_raw_bytes_in_a_file": ("raw bytes", "file dump.bin"),
    "test_leak_whole_envelope_in_status_json": ("base64", "file status.json"),
    "test_leak_envelope_in_a_log_file": ("base64", "file guest.log"),
    "test_leak_in_a_child_process_seed_learned_from_its_envelope_file": (
        "hex", f"standard error of subprocess '{os.path.basename(sys.executable)} -c'"),
    "test_leak_in_a_status_file_of_a_seed_made_in_a_child": (
        "base64", "file status-cloud-init.json"),
}
CLEAN = ["test_ok_envelope_on_stdout_and_in_files", "test_ok_seed_id_and_summary",
         "test_ok_exempt"]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[bytes]]:
    work = tmp_path_factory.mktemp("planted")
    side = work / "seeds.txt"
    (work / "test_planted.py").write_text(PLANTED.format(side=str(side)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "4000"}  # untruncated summary
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.hygiene", "-p", "no:cacheprovider",
         "--rootdir", str(work), "--show-capture=no", "-rA", "-q", "--tb=line",
         "--hygiene-stats", "--basetemp", str(work / "tmp"), str(work / "test_planted.py")],
        env=env, cwd=work, capture_output=True, timeout=300, check=False)
    seeds = [bytes.fromhex(line) for line in side.read_text().split()]
    side.unlink()
    # the child's tmp_path files hold these seeds on purpose; they are not ours to search
    shutil.rmtree(work / "tmp", ignore_errors=True)
    return p.stdout.decode() + p.stderr.decode(), seeds


def _line_of(report: str, test: str) -> str:
    lines = [ln for ln in report.splitlines()
             if re.match(rf"(PASSED|FAILED) \S*::{test}\b", ln)]
    assert len(lines) == 1, (test, report[-3000:])
    return lines[0]


@pytest.mark.parametrize("test", sorted(LEAKS))
def test_plugin_flags_a_planted_leak(planted_run: tuple[str, list[bytes]], test: str) -> None:
    report, _ = planted_run
    form, place = LEAKS[test]
    line = _line_of(report, test)
    assert line.startswith("FAILED") and "seed hygiene: seed " in line, line
    # a window of the seed with no letter (hex) or no +/ (base64) reads the same in both forms
    either = {"hex": "(upper-case )?hex", "upper-case hex": "(upper-case )?hex",
              "base64": "(url-safe )?base64", "url-safe base64": "(url-safe )?base64"}
    form_rx = either.get(form, form)
    full = [ln for ln in report.splitlines() if "seed hygiene: seed" in ln and place in ln
            and re.search(f" as {form_rx} in ", ln)]
    assert full, (test, form, place, report[-4000:])


@pytest.mark.parametrize("test", CLEAN)
def test_plugin_lets_carriers_and_ids_through(planted_run: tuple[str, list[bytes]],
                                              test: str) -> None:
    line = _line_of(planted_run[0], test)
    assert line.startswith("PASSED"), line


def test_plugin_report_never_holds_a_seed(planted_run: tuple[str, list[bytes]]) -> None:
    report, seeds = planted_run
    assert len(seeds) == len(LEAKS) + len(CLEAN)
    blob = report.encode()
    for seed in seeds:
        for n in needles_for(seed, "x"):
            assert n.text not in blob, "the plugin's report holds a seed"
    assert re.search(r"seed hygiene: \d+ tests checked, .* 1 seeds learned from envelopes, "
                     r".* 11 leaks;", report), report[-2000:]


def test_every_base64_alignment_of_a_seed_inside_a_longer_text_is_found(
        private_key: object) -> None:
    seed = envelope.parse(SeedFactory(private_key).new().raw).uncredited_seed
    needles = needles_for(seed, "s")
    for pad in range(6):
        for cut in (0, 5, 23):  # a partial copy: the seed minus its first bytes
            text = base64.b64encode(os.urandom(pad) + seed[cut:] + os.urandom(3))
            assert search(Haystack("t", text, strict=True), needles) is not None, (pad, cut)


def test_an_envelope_inside_a_longer_blob_is_a_carrier_but_not_in_strict_places(
        private_key: object) -> None:
    new = SeedFactory(private_key).new()
    seed = envelope.parse(new.raw).uncredited_seed
    needles = needles_for(seed, "s")
    for blob in (b"x" + new.raw + b"y", f"data: {new.text}\nmore".encode()):
        spans = list(envelopes_in(blob))
        assert [f[1] for _s, _e, f in spans if f] == [new.seed_id]
        assert search(Haystack("out", blob, strict=False), needles) is None
        assert search(Haystack("err", blob, strict=True), needles) is not None
        # the seed outside the envelope, next to it, is still a leak
        assert search(Haystack("out", blob + seed.hex().encode(), strict=False),
                      needles) is not None


def test_seeds_learned_from_envelopes_must_look_random() -> None:
    """A fuzzer's or a hand-made envelope's 'seed' is not learned (no false alarms from
    fuzz corpora); every size of real seed is."""
    assert not looks_random(bytes.fromhex("085344544c0100000000000083000000"))
    assert not looks_random(b"\xfe" * 64)
    assert not looks_random(bytes(range(16)) * 32)  # 512 bytes, 16 values
    assert all(looks_random(os.urandom(n)) for n in (16, 17, 33, 64, 512) for _ in range(200))


# ---- no shell -----------------------------------------------------------------------------------

SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
               "asyncio.create_subprocess_shell", "commands.getoutput", "pty.spawn"}
SUBPROCESS_CALLS = {"subprocess.run", "subprocess.Popen", "subprocess.call",
                    "subprocess.check_call", "subprocess.check_output"}


def product_files() -> list[Path]:
    files = [p for d in PRODUCT_DIRS for p in sorted(d.rglob("*.py")) if p.is_file()]
    files.append(REPO / "seedtool/guest/data/seedtool-early")
    return files


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> qualified name for the module's imports."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _qualname(func: ast.expr, aliases: dict[str, str]) -> str:
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return ""
    parts.append(aliases.get(func.id, func.id))
    return ".".join(reversed(parts))


def shell_uses(source: str, filename: str = "<src>") -> list[str]:
    """Every place `source` could run a command through a shell, as 'line: what'."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _qualname(node.func, aliases)
        if name in SHELL_CALLS:
            found.append(f"{node.lineno}: {name}")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append(f"{node.lineno}: shell={ast.unparse(kw.value)}")
        if name in SUBPROCESS_CALLS and node.args and isinstance(
                node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
            found.append(f"{node.lineno}: {name} with a command string, not an argument list")
    return found


@pytest.mark.parametrize("snippet", [
    "import os\nos.system('ls')",
    "import os as o\no.popen('ls')",
    "from os import system\nsystem('ls')",
    "import subprocess\nsubprocess.run(['ls'], shell=True)",
    "import subprocess as sp\nsp.Popen('ls', shell=1)",
    "from subprocess import getoutput\ngetoutput('ls')",
    "import subprocess\nsubprocess.getstatusoutput('ls')",
    "import subprocess\nsubprocess.check_output('ls -l')",
    "import subprocess\nsubprocess.run(f'ls {x}')",
    "import asyncio\nasyncio.create_subprocess_shell('ls')",
    "import subprocess\nflag = True\nsubprocess.call(['ls'], shell=flag)",
])
def test_shell_scanner_finds_planted_shell_calls(snippet: str) -> None:
    assert shell_uses(snippet)


def test_shell_scanner_accepts_argument_lists() -> None:
    assert shell_uses("import subprocess\nsubprocess.run(['ls', '-l'], shell=False)\n"
                      "subprocess.Popen(argv, stdin=subprocess.DEVNULL)") == []


def test_no_product_code_runs_a_shell() -> None:
    files = product_files()
    assert len(files) > 30
    found = {str(f.relative_to(REPO)): shell_uses(f.read_text(), str(f)) for f in files}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_early_unit_runs_the_launcher_without_a_shell() -> None:
    unit = (REPO / "seedtool/guest/data/seedtool-early.service").read_text()
    execs = [ln.split("=", 1)[1].strip() for ln in unit.splitlines()
             if ln.startswith("ExecStart")]
    assert execs and all(not re.match(r"^[-@:+!]*(/usr)?/bin/(ba|da)?sh\b", e) for e in execs)


# ---- constant-time comparison of secrets --------------------------------------------------------

#: identifiers that name secrets, or ids checked against a list of known ones
SECRET_NAME = re.compile(
    r"(^|_)(seed|seeds|mac|macs|signature|sig|key|keys|secret|digest|token|hmac|passphrase|"
    r"password|pad|kid|key_id|seed_id)($|_)", re.I)


@dataclass(frozen=True)
class Compare:
    file: str
    function: str
    text: str
    line: int


def _names(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.Subscript):
        return _names(node.value)
    if isinstance(node, ast.Call):
        return _names(node.func)
    return []


def _is_public(node: ast.expr) -> bool:
    """Literals, module constants (UPPER_CASE: format magic such as GPT_SIGNATURE, lists of
    parameter names) and lengths are public; comparing with them leaks nothing secret."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.Name, ast.Attribute)) and _names(node)[0].isupper():
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
            "len", "type", "isinstance", "int", "bool"):
        return True
    return False


def secret_compares(source: str, filename: str = "<src>") -> list[Compare]:
    """`==`/`!=` (and `in`) comparisons where an operand is named like a secret."""
    tree = ast.parse(source, filename)
    found: list[Compare] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = func
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{func}.{child.name}" if func else child.name
            if isinstance(child, ast.Compare):
                operands = [child.left, *child.comparators]
                ops_ok = any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                             for op in child.ops)
                if ops_ok and not any(_is_public(o) for o in operands) and any(
                        SECRET_NAME.search(n) for o in operands for n in _names(o)):
                    found.append(Compare(filename, func, ast.unparse(child), child.lineno))
            visit(child, name)

    visit(tree, "")
    return found


#: every comparison the scan finds in the product, with why it is not a timing leak
#: (file, function, comparison text) -> reason
_SEED_ID_PUBLIC = ("seed ids are public: every command prints them and the guest writes them "
                   "to status.json and the kernel log; matching one reveals nothing")
_PARAM_NAME = "'key' is a parameter or metadata key name, not a cryptographic key"
_KID_PUBLIC = "a JWT's key id names one of Google's published signing keys: public"
ALLOWED: dict[tuple[str, str, str], str] = {
    ("seedtool/identity/aws_iid.py", "_signed_attributes",
     "md != hashlib.sha256(content).digest()"):
        "the digest of the identity document against the digest in its signed attributes: "
        "both are public (IMDS serves the document and its signature to anyone asking)",
    ("seedtool/identity/aws_iid.py", "AwsIid.verify", "key in doc"): _PARAM_NAME,
    ("seedtool/identity/gce_iit.py", "GoogleCerts.key", "kid in held.keys"): _KID_PUBLIC,
    ("seedtool/identity/gce_iit.py", "GoogleCerts.key", "kid not in held.keys"): _KID_PUBLIC,
    ("seedtool/serve/issuer.py", "parse_identity_spec", "key in _OPTIONS[kind]"): _PARAM_NAME,
    ("seedtool/serve/issuer.py", "parse_identity_spec", "key in opts"): _PARAM_NAME,
    ("seedtool/guest/core.py", "Outcome._network_line", "k not in keys"):
        "signing key ids, listed once each in the kernel log line: key ids are public "
        "(every envelope carries its own in the clear)",
    ("seedtool/deliver/userdata.py", "_check_result", "find_seed(out) != seed_text"):
        "a self-check of output this process just built, before anything leaves it: no "
        "attacker supplies either side or sees the timing",
    ("seedtool/launch/aws.py", "LaunchRequest.base_params", "key in params"): _PARAM_NAME,
    ("seedtool/launch/gce.py", "GceSpec.check", "key in p"): _PARAM_NAME,
    ("seedtool/launch/gce.py", "GceLauncher._created", "actual != seed_id"): _SEED_ID_PUBLIC,
    ("seedtool/launch/gce.py", "GceLauncher.scrub_one", "found != seed_id"): _SEED_ID_PUBLIC,
    ("seedtool/launch/gce.py", "GceLauncher.scrub", "got == seed_id"): _SEED_ID_PUBLIC,
    ("seedtool/launch/qemu.py", "_ours", "ln.seed_id == seed_id"): _SEED_ID_PUBLIC,
    ("seedtool/launch/openstack.py", "OpenStackLauncher._failed",
     "(s.metadata or {}).get(META_SEED_ID) == seed_id"): _SEED_ID_PUBLIC,
    ("seedtool/commands/image.py", "seed", "result.seed_path == seed_path"):
        "a path inside the image (where the seed file went), printed right after",
    ("seedtool/image/fstab.py", "_resolve_device",
     "key == {'UUID': v.fs_uuid, 'LABEL': v.fs_label, 'PARTUUID': v.part_uuid, "
     "'PARTLABEL': v.part_label}[tag]"):
        "file system and partition identifiers from the image's own fstab and superblocks: "
        "metadata anyone who can read the image sees, not keys",
    ("seedtool/sources/base.py", "Source.check_options", "key not in cls.known_options"):
        _PARAM_NAME,
    ("seedtool/sources/entropykey.py", "EntropyKeySource._keyring", "self._serial not in keys"):
        "a dict lookup of the device's serial number (public, printed on the device) in the "
        "keyring; the long-term keys themselves are never compared",
}


def test_secret_compare_scanner_finds_planted_comparisons() -> None:
    src = textwrap.dedent("""
        def check(frame, expected_mac, key_id, trusted):
            if frame.mac == expected_mac:
                return True
            if key_id != trusted.key_id:
                return False
            return compute_signature(frame) in trusted.signatures
        def fine(seed):
            return len(seed) == 64 and seed is not None and seed != b""
    """)
    found = [(c.function, c.text) for c in secret_compares(src)]
    assert found == [("check", "frame.mac == expected_mac"),
                     ("check", "key_id != trusted.key_id"),
                     ("check", "compute_signature(frame) in trusted.signatures")]


def test_secrets_are_compared_in_constant_time() -> None:
    found = []
    for f in product_files():
        rel = str(f.relative_to(REPO))
        for c in secret_compares(f.read_text(), rel):
            if (rel, c.function, c.text) not in ALLOWED:
                found.append(f"{rel}:{c.line} in {c.function or 'module'}: {c.text}")
    assert found == [], "compare these with hmac.compare_digest, or allow-list with a reason"


def test_every_allowed_comparison_still_exists() -> None:
    """A stale entry would silently allow a new comparison with the same text."""
    present = {(str(f.relative_to(REPO)), c.function, c.text)
               for f in product_files()
               for c in secret_compares(f.read_text(), str(f.relative_to(REPO)))}
    assert set(ALLOWED) - present == set()


@pytest.mark.parametrize("rel, function, what", [
    ("seedtool/shared/envelope.py", "check_signature", "the envelope's key id"),
    ("seedtool/sources/entropykey_protocol.py", "SessionKeys.verify", "an Entropy Key frame MAC"),
    # contains() and consume() both ask the one parse of the file, _Reading.holds
    ("seedtool/guest/ledger.py", "_Reading.holds", "consumed seed ids"),
])
def test_mac_and_id_checks_use_compare_digest(rel: str, function: str, what: str) -> None:
    tree = ast.parse((REPO / rel).read_text())
    node: ast.AST | None = tree
    for part in function.split("."):
        assert node is not None
        node = next((n for n in ast.iter_child_nodes(node)
                     if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
    assert node is not None, f"{rel} has no {function} any more; update this test"
    calls = {_qualname(n.func, _aliases(tree)) for n in ast.walk(node) if isinstance(n, ast.Call)}
    assert "hmac.compare_digest" in calls, f"{function} must compare {what} in constant time"


def test_seeds_inside_a_large_page_aligned_image_are_learned(tmp_path: Path) -> None:
    """Regression: learning seeds from a disk image used mmap.find, which crashes on a
    page-aligned file in CPython before 3.11.5 (gh-105235; Debian 12 ships 3.11.2).
    Envelopes across a chunk boundary, as text and near the end are all found."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.hygiene import _read_for_learning

    made = [SeedFactory(Ed25519PrivateKey.generate()).new() for _ in range(3)]
    raw0, raw2 = (envelope.decode_text(m.text) for m in (made[0], made[2]))
    size = 9 << 20  # over the in-memory search limit: learned in chunks
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(size)
        f.seek((1 << 20) - 3)  # the magic straddles the first chunk boundary
        f.write(raw0)
        f.seek(5 << 20)
        f.write(made[1].text.encode())
        f.seek(size - len(raw2) - 4)
        f.write(raw2)
        # a page-aligned file ending in part of the text magic: what made mmap.find crash
        f.write(b"U0RU")
    assert img.stat().st_size == size and size % os.sysconf("SC_PAGE_SIZE") == 0
    learned = {seed_id for _seed, seed_id in _read_for_learning(img, size)}
    assert learned == {m.seed_id for m in made}
