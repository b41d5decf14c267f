"""Every example in examples/ parsed, and the seedtool commands in it run for real.

Packer: the template is parsed with python-hcl2 and, when a `packer` binary is
installed, checked by `packer validate`. Debian 12 ships Packer 1.6.6 (amazon-ebs and
googlecompute built in), which predates `packer init`/`required_plugins` (1.7) and the
amazon builder's `metadata_options`/`imds_support`: with it the template is
syntax-checked as is, and fully validated with only those two settings taken out.
Terraform is not packaged by Debian (nor on PyPI), so its files are parsed (HCL2) and
their structure checked, and the script that makes the per-instance user-data runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.images import base_root
from seedtool.deliver.userdata import find_seed, user_parts
from seedtool.keys import generate_keypair
from seedtool.shared import envelope
from seedtool.shared.pubkeys import load_public_keys, trusted_pairs

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PACKER_DIR = EXAMPLES / "packer"


def unq(v: Any) -> Any:
    """python-hcl2 keeps string quotes: strip them, recursively."""
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    if isinstance(v, list):
        return [unq(x) for x in v]
    if isinstance(v, dict):
        return {unq(k): unq(x) for k, x in v.items() if k != "__comments__"}
    return v


def load_hcl(path: Path) -> dict[str, Any]:
    hcl2 = pytest.importorskip("hcl2", reason="pip install python-hcl2")
    with open(path) as f:
        data: dict[str, Any] = unq(hcl2.load(f))
    return data


def blocks(doc: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """{"type.name": body} for `source "type" "name" {}`-style blocks."""
    out = {}
    for entry in doc.get(kind, []):
        for typ, named in entry.items():
            for name, body in named.items():
                out[f"{typ}.{name}"] = body
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "signing.key", d / "signing.pub", comment="examples")
    return d / "signing.key", d / "signing.pub"


@pytest.fixture(scope="module")
def seedtool_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `seedtool` on PATH that runs this checkout's CLI with this interpreter."""
    d = tmp_path_factory.mktemp("bin")
    exe = d / "seedtool"
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec "
                   f"{shlex.quote(sys.executable)} -m seedtool \"$@\"\n")
    exe.chmod(0o755)
    return d


def seedtool(*args: str, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seedtool", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=300)


def verify_seed(user_data: bytes, pub: Path) -> bytes:
    text = find_seed(user_data)
    assert text is not None
    env = envelope.verify(text.encode(), trusted_pairs(load_public_keys([pub])))
    return env.seed


# --- Packer ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_hcl(PACKER_DIR / "seedtool.pkr.hcl")


def shell_lines(template: dict[str, Any]) -> list[str]:
    build = template["build"][0]
    shells = [p["shell"] for p in build["provisioner"] if "shell" in p]
    assert len(shells) == 1
    lines: list[str] = shells[0]["inline"]
    return lines


def test_packer_sources_and_provisioners(template: dict[str, Any]) -> None:
    sources = blocks(template, "source")
    assert set(sources) == {"amazon-ebs.debian", "googlecompute.debian"}
    build = template["build"][0]
    assert build["sources"] == ["source.amazon-ebs.debian", "source.googlecompute.debian"]

    aws = sources["amazon-ebs.debian"]
    assert aws["metadata_options"][0]["http_tokens"] == "required"
    assert aws["imds_support"] == "v2.0"
    assert aws["source_ami_filter"][0]["owners"] == ["136693071363"]  # Debian's account
    gce = sources["googlecompute.debian"]
    assert gce["source_image_project_id"] == ["debian-cloud"]

    # the key is uploaded where the bake line reads it
    upload = next(p["file"] for p in build["provisioner"] if "file" in p)
    assert upload["source"] == "${var.trusted_key}"
    lines = shell_lines(template)
    bake = [i for i, line in enumerate(lines) if line.startswith("seedtool bake ")]
    assert len(bake) == 2
    do, check = (shlex.split(lines[i]) for i in bake)
    assert bake[0] < bake[1]
    assert do[do.index("--root") + 1] == "/" and "--check" not in do
    assert do[do.index("--trusted-key") + 1] == upload["destination"]
    assert check == ["seedtool", "bake", "--check", "--root", "/"]
    # pip-installs seedtool before, and the script stops at the first failing command
    pip = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert pip < bake[0] and "${var.seedtool_requirement}" in lines[pip]
    shell = next(p["shell"] for p in build["provisioner"] if "shell" in p)
    assert "sh -eu" in shell["execute_command"] and "sudo" in shell["execute_command"]
    # python3-venv before the venv is made; the build venv goes, after the check
    assert any("apt-get install" in line and "python3-venv" in line for line in lines[:pip])
    removal = next(i for i, line in enumerate(lines) if line.startswith("rm -rf /usr/local"))
    assert removal > bake[1]


def test_packer_plugins(template: dict[str, Any]) -> None:
    plugins = load_hcl(PACKER_DIR / "plugins.pkr.hcl")["packer"][0]["required_plugins"][0]
    assert plugins["amazon"]["source"] == "github.com/hashicorp/amazon"
    assert plugins["googlecompute"]["source"] == "github.com/hashicorp/googlecompute"


def packer_version() -> tuple[int, ...] | None:
    exe = shutil.which("packer")
    if exe is None:
        return None
    out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=60)
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(x) for x in m.groups()) if m else None


def packer(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # no cloud credentials, no plugin directory of the user's: validation is offline
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd),
           "CHECKPOINT_DISABLE": "1"}
    return subprocess.run(["packer", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def without_post_16_settings(text: str) -> str:
    """The template without the two amazon settings Packer 1.6's builder lacks."""
    out = re.sub(r"\n  # user-data is readable[^\n]*\n  metadata_options \{.*?\n  \}\n", "\n",
                 text, flags=re.S)
    out = re.sub(r"\n  imds_support\s*=[^\n]*\n", "\n", out)
    assert out != text and "metadata_options" not in out and "imds_support" not in out
    return out


def test_packer_validate(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    version = packer_version()
    if version is None:
        pytest.skip("packer is not installed (apt-get install packer)")
    pub = keys[1]
    if version >= (1, 7, 0):
        p = packer("validate", "-syntax-only", str(PACKER_DIR), cwd=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
        return  # full validation needs `packer init`, which downloads plugins
    p = packer("validate", "-syntax-only", str(PACKER_DIR / "seedtool.pkr.hcl"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    work = tmp_path / "tpl"
    work.mkdir()
    text = without_post_16_settings((PACKER_DIR / "seedtool.pkr.hcl").read_text())
    (work / "seedtool.pkr.hcl").write_text(text)
    p = packer("validate", "-var", f"trusted_key={pub}", ".", cwd=work)
    assert p.returncode == 0, p.stdout + p.stderr
    # and the same validation does fail on a broken template
    (work / "seedtool.pkr.hcl").write_text(text.replace('ssh_username            = "packer"',
                                                        ""))
    p = packer("validate", "-var", f"trusted_key={pub}", ".", cwd=work)
    assert p.returncode != 0 and "ssh_username" in p.stdout + p.stderr


def test_packer_provisioner_commands_bake_a_real_root(
    template: dict[str, Any], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """The template's seedtool lines, run against a copy of a Debian root for `/`."""
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(base_root("bookworm")), str(root)], check=True)
    upload = next(p["file"] for p in template["build"][0]["provisioner"] if "file" in p)
    ran = 0
    for line in shell_lines(template):
        if not line.startswith("seedtool "):
            continue
        argv = shlex.split(line)[1:]
        argv = [str(root) if a == "/" and argv[i - 1] == "--root" else
                str(keys[1]) if a == upload["destination"] else a
                for i, a in enumerate(argv)]
        p = seedtool(*argv)
        assert p.returncode == 0, (line, p.stdout, p.stderr)
        ran += 1
    assert ran == 2
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/seedtool/trusted-keys/signing.pub").read_bytes() == keys[1].read_bytes()


# --- GitHub Actions -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(
        (EXAMPLES / "github-actions/build-image.yml").read_text())
    return data


def test_workflow_runs_packer_init_validate_build(workflow: dict[Any, Any]) -> None:
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "workflow_dispatch" in on
    assert workflow["permissions"] == {"contents": "read", "id-token": "write"}
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    runs = [s.get("run", "") for s in steps]
    order = [next(i for i, r in enumerate(runs) if r.strip().startswith(f"packer {verb}"))
             for verb in ("init", "validate", "build")]
    assert order == sorted(order)
    assert all('"$PACKER_DIR"' in runs[i] for i in order)
    assert job["env"]["PACKER_DIR"] == "examples/packer"
    assert (EXAMPLES.parent / job["env"]["PACKER_DIR"]).is_dir()
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("hashicorp/setup-packer@") for u in uses)
    setup = uses.index(next(u for u in uses if u.startswith("hashicorp/setup-packer@")))
    assert setup < order[0]
    # Packer reads PKR_VAR_<name> for each variable; every one set must exist
    variables = {k for v in load_hcl(PACKER_DIR / "seedtool.pkr.hcl")["variable"] for k in v}
    set_vars = {k[len("PKR_VAR_"):] for k in job["env"] if k.startswith("PKR_VAR_")}
    assert set_vars and set_vars <= variables
    # no stored secrets at all: clouds through OIDC, the key is public
    assert "secrets." not in (EXAMPLES / "github-actions/build-image.yml").read_text()


def test_workflow_trusted_key_step(workflow: dict[Any, Any], keys: tuple[Path, Path],
                                   tmp_path: Path) -> None:
    (job,) = workflow["jobs"].values()
    step = next(s for s in job["steps"] if s.get("name") == "Trusted public key")
    out = tmp_path / "trusted.pub"
    good = keys[1].read_text().strip()
    for pub, rc in (("-----BEGIN PRIVATE KEY-----", 1), ("", 1), (good, 0)):
        if out.exists():
            out.unlink()
        p = subprocess.run(["bash", "-e", "-c", step["run"]],
                           env={"PATH": os.environ["PATH"], "PUB": pub,
                                "PKR_VAR_trusted_key": str(out)},
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == rc, p.stderr
        assert out.exists() == (rc == 0)
    (tmp_path / "r").mkdir()
    p = seedtool("bake", "--root", str(tmp_path / "r"), "--trusted-key", str(out), "--dry-run")
    assert p.returncode == 0, p.stderr  # what the step wrote is a key bake accepts


# --- Terraform ----------------------------------------------------------------------------


@pytest.mark.parametrize("cloud,rtype", [("aws", "aws_instance"),
                                         ("gce", "google_compute_instance")])
def test_terraform_one_user_data_per_instance(cloud: str, rtype: str) -> None:
    path = EXAMPLES / "terraform" / cloud / "main.tf"
    doc = load_hcl(path)
    resources = blocks(doc, "resource")
    vm = resources[f"{rtype}.vm"]
    assert vm["for_each"] == "${var.instances}" and "count" not in vm
    locals_ = doc["locals"][0]
    assert "seeds/${name}.user-data" in locals_["seed_files"]
    data = vm["user_data_base64"] if cloud == "aws" else vm["metadata"]["user-data"]
    assert "filebase64(local.seed_files[each.key])" in data
    life = vm["lifecycle"][0]
    assert "fileexists(local.seed_files[each.key])" in life["precondition"][0]["condition"]
    assert life["ignore_changes"]
    if cloud == "aws":
        assert vm["metadata_options"][0]["http_tokens"] == "required"
    else:
        assert vm["metadata"]["user-data-encoding"] == "base64"
    # the reason `count` with one user-data is wrong is written where users look
    text = path.read_text()
    assert "`count" in text and "same seed" in text


@pytest.mark.parametrize("cloud", ["aws", "gce"])
def test_terraform_make_userdata_script(cloud: str, keys: tuple[Path, Path],
                                        seedtool_bin: Path, tmp_path: Path) -> None:
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES / "terraform", work / "terraform")
    shutil.copytree(EXAMPLES / "userdata", work / "userdata")
    env = {"PATH": f"{seedtool_bin}:{os.environ['PATH']}", "SEEDTOOL_KEY": str(keys[0]),
           "HOME": str(tmp_path)}
    p = subprocess.run(["sh", str(work / "terraform/make-userdata.sh"), cloud, "web-0", "web-1"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    seeds = work / "terraform" / cloud / "seeds"
    files = sorted(seeds.iterdir())
    assert [f.name for f in files] == ["web-0.user-data", "web-1.user-data"]
    mine = (EXAMPLES / "userdata/cloud-config.yaml").read_bytes()
    got = []
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        data = f.read_bytes()
        got.append(verify_seed(data, keys[1]))
        assert [part.payload for part in user_parts(data)] == [mine]
    assert got[0] != got[1]  # one seed per instance
    p = subprocess.run(["sh", str(work / "terraform/make-userdata.sh")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "usage" in p.stderr


# --- plain user-data ---------------------------------------------------------------------------


def readme_commands() -> list[str]:
    text = (EXAMPLES / "userdata/README.md").read_text()
    return [line for line in text.splitlines() if line.startswith("seedtool userdata ")]


def test_userdata_readme_commands(keys: tuple[Path, Path], tmp_path: Path) -> None:
    work = tmp_path / "userdata"
    shutil.copytree(EXAMPLES / "userdata", work)
    commands = readme_commands()
    inputs = {shlex.split(c)[shlex.split(c).index("--in") + 1] for c in commands}
    assert inputs == {"cloud-config.yaml", "script.sh", "multipart.mime"}
    for line in commands:
        argv = shlex.split(line)[1:]
        p = seedtool(*argv, cwd=work, env={"SEEDTOOL_KEY": str(keys[0])})
        assert p.returncode == 0, (line, p.stderr)
        src = work / argv[argv.index("--in") + 1]
        out = work / argv[argv.index("-o") + 1]
        data = out.read_bytes()
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        verify_seed(data, keys[1])
        want = [(q.content_type, q.payload) for q in user_parts(src.read_bytes())]
        assert [(q.content_type, q.payload) for q in user_parts(data)] == want
        if argv[argv.index("--target") + 1] == "aws":
            assert len(data) <= 16384


def test_userdata_examples_are_what_they_say() -> None:
    d = EXAMPLES / "userdata"
    assert (d / "cloud-config.yaml").read_text().startswith("#cloud-config\n")
    assert isinstance(yaml.safe_load((d / "cloud-config.yaml").read_text()), dict)
    assert (d / "script.sh").read_text().startswith("#!/bin/sh\n")
    types = [q.content_type for q in user_parts((d / "multipart.mime").read_bytes())]
    assert types == ["text/cloud-config", "text/x-shellscript"]
