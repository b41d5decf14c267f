"""`seedtool userdata` output read by cloud-init's OWN code, from Debian 12 and 13 roots.

For each kind of user-data, the original and seedtool's output each go through what a
real boot does, inside a chroot of the cached debootstrap root (cloud-init 22.4.2 on
bookworm, 25.1.4 on trixie): the NoCloud datasource reads them from a seed directory,
`stages.Init` fetches, processes (cloudinit.user_data.UserDataProcessor) and consumes
them (cloudinit.handlers: scripts written, boothooks run, cloud-config parts merged into
cloud-config.txt), and the schema check the boot runs is run on the result. Then
`cloud-init schema --config-file` and `cloud-init schema --system` run on it.

Asserted for each case: every user part comes out of cloud-init's processor exactly as
from the original, followed by one seed part; scripts and boothook results are the
same; cloud-init's merged cloud-config is the original's plus our `random_seed.data`
and `encoding` (the user's other random_seed keys and all other keys kept); there are
no warnings on either release; and our own `merged_cloud_config` agrees with
cloud-init's merge.

Everything runs under the root's /tmp in a directory of its own, removed afterwards;
cloud-init is pointed there with CLOUD_CFG (paths.cloud_dir, paths.run_dir), so the
shared roots are left as they were. Needs root (chroot) and the roots from
`python3 -m devtools.images build-roots` (built here when missing).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devtools.images import RELEASES, TABLE, base_root
from seedtool.deliver import userdata as ud
from seedtool.generate import SeedFactory

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("chroot") is None,
    reason="needs root and chroot to run cloud-init from the Debian image roots",
)

# Runs inside the chroot with the root's own python3 and cloud-init. It mirrors the
# order of cloud-init's `init` stages (cmd/main.py): read config, fetch the datasource
# (NoCloud, a filesystem datasource), instancify, update (writes user-data.txt*),
# consume_data (part handlers), then the schema check that boot runs: 20.4 none (its
# cmd/main.py calls no validate_cloudconfig_schema; modules check their own keys), 22.4
# the whole merged config, 23.4+ the merged user cloud-config.txt (cloud-init 20.4, 22.4
# and 23.4, cloudinit/cmd/main.py).
RUNNER = r'''
import base64, json, logging, os, sys

label_dir, ud_path = sys.argv[1], sys.argv[2]
cloud, run = os.path.join(label_dir, "cloud"), os.path.join(label_dir, "run")
seed = os.path.join(cloud, "seed", "nocloud")
os.makedirs(seed)
os.makedirs(run)  # 20.4.1's get_data writes instance-data there without making it
with open(ud_path, "rb") as f, open(os.path.join(seed, "user-data"), "wb") as g:
    g.write(f.read())
with open(os.path.join(seed, "meta-data"), "w") as f:
    f.write("instance-id: iid-seedtool-ud\n")
assert os.environ["CLOUD_CFG"].startswith(label_dir)

records = []
class Keep(logging.Handler):
    def emit(self, r):
        if r.levelno >= logging.WARNING:
            records.append("%s %s: %s" % (r.levelname, r.name, r.getMessage()[:500]))
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.DEBUG)

import yaml
from cloudinit import sources, stages, util, version
from cloudinit.config.schema import validate_cloudconfig_schema
from cloudinit.settings import PER_INSTANCE

init = stages.Init(ds_deps=[sources.DEP_FILESYSTEM])
init.read_cfg()
init.initialize()
init.fetch(existing="trust")
init.instancify()
init.update()
init.consume_data(PER_INSTANCE)

cc_path = init.paths.get_ipath_cur("cloud_config")
cc_text = open(cc_path).read() if os.path.exists(cc_path) else ""
ver = version.version_string()
if ver.startswith("20."):
    pass  # 20.4's boot validates no merged config: each module checks its own keys
elif ver.startswith("22."):
    validate_cloudconfig_schema(config=init.cfg, strict=False, log_details=False,
                                log_deprecations=True)
elif cc_text:
    validate_cloudconfig_schema(config=yaml.safe_load(cc_text), strict=False,
                                log_details=False, log_deprecations=True)

parts = []
for p in init.datasource.get_userdata(True).walk():
    if p.get_content_maintype() == "multipart":
        continue
    payload = util.fully_decoded_payload(p)
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogateescape")
    parts.append({"type": p.get_content_type(), "filename": p.get_filename(),
                  "payload": base64.b64encode(payload).decode()})
scripts = {}
sdir = init.paths.get_ipath_cur("scripts")
for name in sorted(os.listdir(sdir)) if os.path.isdir(sdir) else []:
    with open(os.path.join(sdir, name), "rb") as f:
        scripts[name] = base64.b64encode(f.read()).decode()
hook = os.path.join(os.path.dirname(label_dir), "boothook.out")
hook_out = None
if os.path.exists(hook):
    hook_out = open(hook).read()
    os.unlink(hook)
report = {
    "version": ver,
    "datasource": type(init.datasource).__name__,
    "parts": parts,
    "cloud_config": yaml.safe_load(cc_text) if cc_text else None,
    "cloud_config_sources": [l[2:] for l in cc_text.splitlines() if l.startswith("# ")],
    "cloud_config_path": cc_path,
    "scripts": scripts,
    "boothook": hook_out,
    "warnings": records,
}
with open(os.path.join(label_dir, "report.json"), "w") as f:
    json.dump(report, f)
'''

_FACTORY = SeedFactory(Ed25519PrivateKey.generate())


def _root(release: str) -> Path:
    try:
        return base_root(release)
    except Exception as e:  # ImageBuildError and friends: no debootstrap, no network
        pytest.fail(f"cannot build the {release} root: {e}")


class Chroot:
    """A private directory under ROOT/tmp and ways to run cloud-init on files in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inside = f"/tmp/seedtool-ud-{uuid.uuid4().hex}"
        self.host = root / self.inside.lstrip("/")

    def __enter__(self) -> Chroot:
        self.host.mkdir(mode=0o700)
        (self.host / "runner.py").write_text(RUNNER)
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.host, ignore_errors=True)

    def run(self, argv: list[str], cfg: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "CLOUD_CFG": cfg}
        return subprocess.run(
            ["chroot", str(self.root), *argv], env=env, capture_output=True, text=True,
            timeout=300, check=False,
        )

    def process(self, case: str, label: str, user_data: bytes) -> dict[str, Any]:
        """Boot-time processing of `user_data`; returns the runner's report."""
        label_in = f"{self.inside}/{case}/{label}"
        label_host = self.host / case / label
        label_host.mkdir(parents=True)
        (label_host / "user-data").write_bytes(user_data)
        cfg = {
            "system_info": {"paths": {"cloud_dir": f"{label_in}/cloud",
                                      "run_dir": f"{label_in}/run"}},
            "datasource_list": ["NoCloud", "None"],
            "def_log_file": f"{label_in}/cloud-init.log",
        }
        (label_host / "cloud.cfg").write_text(json.dumps(cfg))
        r = self.run(["python3", f"{self.inside}/runner.py", label_in, f"{label_in}/user-data"],
                     f"{label_in}/cloud.cfg")
        assert r.returncode == 0, r.stderr[-3000:]
        rep: dict[str, Any] = json.loads((label_host / "report.json").read_text())
        rep["cfg"] = f"{label_in}/cloud.cfg"
        return rep

    def schema(self, rep: dict[str, Any]) -> list[str]:
        """`cloud-init schema` on the merged cloud-config file and on the system's
        user-data; returns the output of both, which must say valid."""
        outs = []
        runs: list[list[str]] = [["schema", "--config-file", rep["cloud_config_path"]],
                                 ["schema", "--system"]]
        if "invalid choice: 'schema'" in self.run(["cloud-init", "schema", "--help"],
                                                  rep["cfg"]).stderr:
            # 20.4 has only `devel schema --config-file` (no --system: it never checks
            # the merged system config)
            runs = [["devel", "schema", "--config-file", rep["cloud_config_path"]]]
        for args in runs:
            r = self.run(["cloud-init", *args], rep["cfg"])
            out = r.stdout + r.stderr
            assert r.returncode == 0, out
            assert "Valid" in out, out
            outs.append(out)
        return outs


@pytest.fixture(scope="module", params=RELEASES)
def chroot(request: pytest.FixtureRequest) -> Iterator[Chroot]:
    root = _root(request.param)
    watched = [root / "run", root / "var/lib/cloud", root / "var/log"]
    before = {p: sorted(os.listdir(p)) if p.is_dir() else None for p in watched}
    with Chroot(root) as c:
        yield c
    after = {p: sorted(os.listdir(p)) if p.is_dir() else None for p in watched}
    assert after == before, "running cloud-init in the chroot changed the shared root"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _multipart_case(boothook: bytes) -> bytes:
    msg = MIMEMultipart(boundary="user-boundary")
    msg.preamble = "This is a multi-part message in MIME format."
    cc = MIMEText("#cloud-config\nruncmd:\n  - [echo, from-mime]\nrandom_seed:\n"
                  "  file: /dev/urandom\n  data: user-data-in-mime\n", "cloud-config")
    cc.add_header("Merge-Type", "list(append)+dict(recurse_array)+str()")
    cc.add_header("Content-Disposition", "attachment", filename="user.cfg")
    msg.attach(cc)
    script = MIMEText("#!/bin/sh\necho 'grüße aus dem Skript'\n", "x-shellscript", "utf-8")
    script.add_header("Content-Disposition", "attachment", filename="greet.sh")
    msg.attach(script)
    msg.attach(MIMEApplication(gzip.compress(b"#cloud-config\nbootcmd: [[echo, gz]]\n",
                                             mtime=0), "gzip"))
    msg.attach(MIMEText(boothook.decode(), "cloud-boothook"))
    msg.epilogue = "epilogue\n"
    return msg.as_bytes()


# name -> function of the case's directory inside the chroot -> (user-data, files to place)
Case = Callable[[str], "tuple[bytes | None, dict[str, bytes]]"]
CASES: dict[str, Case] = {
    "none": lambda d: (None, {}),
    "cloud-config-with-random-seed": lambda d: (
        b"#cloud-config\nruncmd:\n  - [echo, hello]\nwrite_files:\n  - path: /tmp/ud-x\n"
        b"    content: kept\nrandom_seed:\n  file: /dev/urandom\n  data: static-user-seed\n"
        b"  encoding: raw\n  command: [sh, -c, 'echo reseeded']\n  command_required: false\n",
        {},
    ),
    "shell-script-utf8": lambda d: ("#!/bin/sh\necho 'grüße, 世界'\r\n".encode(), {}),
    "script-mentioning-mime-version": lambda d: (
        b'#!/bin/sh\necho "MIME-Version: 1.0" > /dev/null\n', {}
    ),
    "boothook": lambda d: (
        f'#cloud-boothook\n#!/bin/sh\necho "$INSTANCE_ID" > {d}/boothook.out\n'.encode(), {}
    ),
    "include": lambda d: (
        f"#include\n{d}/inc.cfg\n".encode(),
        {"inc.cfg": b"#cloud-config\nbootcmd:\n  - [echo, included]\n"},
    ),
    "jinja-cloud-config": lambda d: (
        b"## template: jinja\n#cloud-config\nfinal_message: 'booted {{ v1.instance_id }}'\n", {}
    ),
    "jinja-script": lambda d: (b"## template: jinja\n#!/bin/sh\necho {{ v1.instance_id }}\n", {}),
    "cloud-config-archive": lambda d: (
        b"#cloud-config-archive\n- type: text/x-shellscript\n  filename: arch.sh\n"
        b"  content: |\n    #!/bin/sh\n    echo archived\n"
        b"- content: |\n    #cloud-config\n    bootcmd: [[echo, archived]]\n",
        {},
    ),
    "gzip-cloud-config": lambda d: (
        gzip.compress(b"#cloud-config\nruncmd: [[echo, zipped]]\n"), {}
    ),
    "mime-multipart": lambda d: (
        _multipart_case(f'#cloud-boothook\n#!/bin/sh\necho "$INSTANCE_ID" > {d}/boothook.out\n'
                        .encode()),
        {},
    ),
}
# cases whose cloud-config cloud-init only knows at boot (fetched, rendered)
_BOOT_ONLY = {"include", "jinja-cloud-config"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cloud_init_reads_every_user_part_and_our_seed(chroot: Chroot, case: str) -> None:
    d_in = f"{chroot.inside}/{case}"
    (chroot.host / case).mkdir()
    original, files = CASES[case](d_in)
    for name, content in files.items():
        (chroot.host / case / name).write_bytes(content)
    seed = _FACTORY.new().text
    seeded = ud.add_seed(original, seed, compress="always" if case.startswith("gzip") else "auto")

    got = chroot.process(case, "seeded", seeded)
    assert got["datasource"] == "DataSourceNoCloud"
    assert got["version"].startswith(TABLE[Path(chroot.root).name].cloud_init)
    assert got["warnings"] == []
    base = chroot.process(case, "original", original) if original is not None else None
    if base is not None:
        assert base["warnings"] == []

    # every user part as cloud-init's processor hands it to the handlers, then ours
    *user, last = got["parts"]
    assert user == (base["parts"] if base else [])
    # with no user-data the output is a plain #cloud-config: cloud-init names it part-001
    seed_name = "part-001" if original is None else ud.SEED_PART_NAME
    assert last["type"] == "text/cloud-config" and last["filename"] == seed_name
    assert base64.b64decode(last["payload"]).count(seed.encode()) == 1
    # what the handlers did with them is the same
    assert got["scripts"] == (base["scripts"] if base else {})
    assert got["boothook"] == (base["boothook"] if base else None)
    if case == "shell-script-utf8":
        assert got["scripts"] == {"part-001": _b64(original or b"")}
    if case in ("boothook", "mime-multipart"):
        assert got["boothook"] == "iid-seedtool-ud\n"

    # cloud-init's merged cloud-config: the user's plus our data and encoding only
    expected = dict((base or {}).get("cloud_config") or {})
    rs = dict(expected.get("random_seed") or {})
    rs.update(data=seed, encoding="b64")
    expected["random_seed"] = rs
    assert got["cloud_config"] == expected
    assert got["cloud_config_sources"][-1] == seed_name
    assert ud.find_seed(seeded) == seed
    if case not in _BOOT_ONLY:
        assert ud.merged_cloud_config(seeded) == got["cloud_config"]

    for out in chroot.schema(got):
        assert "WARNING" not in out and "eprecat" not in out, out


def test_user_random_seed_settings_survive_in_cloud_init(chroot: Chroot) -> None:
    """The documented rule, seen in cloud-init's own cloud-config.txt."""
    user = (b"#cloud-config\nrandom_seed:\n  file: /dev/urandom\n  data: mine\n"
            b"  command: [sh, -c, 'echo again']\n  command_required: true\n")
    seed = _FACTORY.new().text
    (chroot.host / "rs").mkdir()
    got = chroot.process("rs", "seeded", ud.add_seed(user, seed))
    assert got["cloud_config"] == {
        "random_seed": {
            "file": "/dev/urandom",
            "data": seed,
            "encoding": "b64",
            "command": ["sh", "-c", "echo again"],
            "command_required": True,
        }
    }
    assert got["warnings"] == []
