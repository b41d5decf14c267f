"""The trusted-host commands through the real CLI: results, bad inputs, secret hygiene."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from seedtool.shared import envelope
from seedtool.shared.pubkeys import load_public_keys, trusted_pairs


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "seedtool", *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, input=input,
                          capture_output=True, timeout=120)


def one_line_error(p: subprocess.CompletedProcess[bytes]) -> str:
    assert p.returncode != 0, p
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seedtool: error: "), lines
    return lines[0]


def seed_of(path: Path, pub: Path) -> bytes:
    return envelope.verify(path.read_bytes(), trusted_pairs(load_public_keys([pub]))).seed


def assert_no_seed(seed: bytes, *outputs: bytes) -> None:
    forms = [seed, seed.hex().encode(), base64.b64encode(seed), seed[:16].hex().encode()]
    for out in outputs:
        for f in forms:
            assert f not in out


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    p = run("keygen", "-o", str(tmp_path / "k.key"), "--comment", "ci")
    assert p.returncode == 0, p.stderr
    return tmp_path / "k.key", tmp_path / "k.pub"


def test_keygen_modes_and_no_overwrite(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    text = pub.read_text()
    assert text.startswith("seedtool-ed25519 ") and text.strip().endswith("ci")
    before = priv.read_bytes()
    err = one_line_error(run("keygen", "-o", str(priv)))
    assert "already exists" in err and priv.read_bytes() == before


def test_generate_inspect_verify(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    out = tmp_path / "s.env"
    g = run("generate", "--key", str(priv), "--bytes", "48", "--ttl", "10m", "-o", str(out),
            "--json")
    assert g.returncode == 0, g.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    summary = json.loads(g.stderr)
    i = run("inspect", str(out), "--json")
    v = run("verify", str(out), "--trusted-key", str(pub), "--json")
    assert i.returncode == 0 and v.returncode == 0, (i.stderr, v.stderr)
    info, ver = json.loads(i.stdout), json.loads(v.stdout)
    assert info["seed_id"] == summary["seed_id"] == ver["seed_id"]
    assert info["seed_bytes"] == 48 and ver["creditable_bits"] == 384
    assert 590 <= info["not_after"] - info["issued_at"] <= 600
    assert [s["name"] for s in info["provenance"]["sources"]] == ["os"]
    seed = seed_of(out, pub)
    assert_no_seed(seed, g.stdout, g.stderr, i.stdout, i.stderr, v.stdout, v.stderr,
                   run("inspect", str(out)).stdout)


def test_generate_to_stdout_pipe(keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    p = run("generate", "--key", str(priv), "-o", "-")
    assert p.returncode == 0
    v = run("verify", "-", "--trusted-key", str(pub), input=p.stdout)
    assert v.returncode == 0 and b"OK: seed" in v.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "nosuch"], "unknown source 'nosuch'"),
        (["--source", "hwrng:device"], "bad source option"),
        (["--bytes", "8"], "--bytes must be between"),
        (["--ttl", "soon"], "is not a duration"),
        (["--source", "hwrng:device=/nonexistent/hwrng", "--require", "hwrng"],
         "required source 'hwrng' is unavailable"),
        (["--source", "hwrng:device=/dev/zero,min_entropy=8", "--require", "hwrng"],
         "failed its health tests"),
    ],
)
def test_generate_bad_inputs_write_nothing(tmp_path: Path, keys: tuple[Path, Path],
                                           args: list[str], message: str) -> None:
    out = tmp_path / "out.env"
    err = one_line_error(run("generate", "--key", str(keys[0]), *args, "-o", str(out)))
    assert message in err
    assert not out.exists() and not list(tmp_path.glob(".seedtool-*"))


def test_failing_optional_source_contributes_nothing(tmp_path: Path,
                                                      keys: tuple[Path, Path]) -> None:
    out = tmp_path / "s.env"
    p = run("generate", "--key", str(keys[0]), "--source", "hwrng:device=/dev/zero",
            "-o", str(out))
    assert p.returncode == 0, p.stderr
    prov = envelope.parse(out.read_bytes()).provenance
    by_name = {s["name"]: s for s in prov["sources"]}
    assert by_name["hwrng"]["health"] == "fail" and by_name["hwrng"]["bytes"] == 0
    assert by_name["os"]["bytes"] == 64


@pytest.mark.parametrize("command", [["generate"], ["userdata"], ["nocloud"]])
def test_every_seed_command_reports_a_failed_optional_source(
        tmp_path: Path, keys: tuple[Path, Path], command: list[str]) -> None:
    # one SeedOptions.factory() for every command: each warns the same way
    out = tmp_path / "out"
    p = run(*command, "--key", str(keys[0]), "--source", "hwrng:device=/dev/zero",
            "-o", str(out))
    assert p.returncode == 0, p.stderr
    warnings = [line for line in p.stderr.decode().splitlines() if "warning" in line]
    assert len(warnings) == 1, p.stderr
    assert warnings[0].startswith("seedtool: warning: source 'hwrng' contributed nothing: ")
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("hwrng:devcie=/dev/hwrng",
         "unknown hwrng option 'devcie' (did you mean 'device'?); "
         "known options are: device, sysfs, timeout, min_entropy"),
        ("os:min_entropy=3", "unknown os option 'min_entropy'; the os source takes no options"),
        ("hwrng:min_entropy=abc", "hwrng option min_entropy= must be a number of bits per sample"),
        ("egd:timeout=nan", "egd option timeout= must be a positive number of seconds, not 'nan'"),
    ],
)
def test_generate_refuses_a_bad_source_option_and_writes_nothing(
        tmp_path: Path, keys: tuple[Path, Path], spec: str, message: str) -> None:
    out = tmp_path / "out.env"
    err = one_line_error(run("generate", "--key", str(keys[0]), "--source", spec, "-o", str(out)))
    assert err.startswith(f"seedtool: error: {message}")
    assert not out.exists() and not list(tmp_path.glob(".seedtool-*"))


def test_a_misspelt_source_option_is_refused_before_the_key_is_read(tmp_path: Path) -> None:
    out = tmp_path / "out.env"
    err = one_line_error(run("generate", "--key", str(tmp_path / "missing.key"),
                             "--source", "hwrng:devcie=/dev/hwrng", "-o", str(out)))
    assert "unknown hwrng option 'devcie'" in err and "device" in err
    assert not out.exists()


def test_sources_lists_each_sources_options() -> None:
    from seedtool.sources import REGISTRY, source_class

    p = run("sources", "--no-sample", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert list(rows) == list(REGISTRY)
    for name, row in rows.items():
        assert row["options"] == dict(source_class(name).known_options), name
    assert rows["hwrng"]["options"]["device"].startswith("the hardware RNG character device")
    assert rows["os"]["options"] == {}
    text = run("sources", "--no-sample", "--source", "hwrng", "--source", "os")
    assert text.returncode == 0, text.stderr
    lines = [line.strip() for line in text.stdout.decode().splitlines()]
    assert "options: device, sysfs, timeout, min_entropy" in lines
    assert "options: none" in lines
    assert "unknown hwrng option 'devcie'" in one_line_error(
        run("sources", "--source", "hwrng:devcie=/dev/hwrng"))


def test_key_problems(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, _ = keys
    out = tmp_path / "s.env"
    assert "cannot read signing key" in one_line_error(
        run("generate", "--key", str(tmp_path / "missing.key"), "-o", str(out)))
    os.chmod(priv, 0o640)
    assert "readable by group or others" in one_line_error(
        run("generate", "--key", str(priv), "-o", str(out)))
    os.chmod(priv, 0o600)
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    assert "not a PEM private key" in one_line_error(
        run("generate", "--key", str(garbage), "-o", str(out)))
    assert not out.exists()


def test_passphrase(tmp_path: Path) -> None:
    pw, bad = tmp_path / "pw", tmp_path / "bad"
    pw.write_text("correct horse\n")
    bad.write_text("wrong\n")
    key = tmp_path / "enc.key"
    assert run("keygen", "-o", str(key), "--passphrase-file", str(pw)).returncode == 0
    assert b"ENCRYPTED" in key.read_bytes()
    out = tmp_path / "s.env"
    assert "is encrypted" in one_line_error(run("generate", "--key", str(key), "-o", str(out)))
    assert "wrong passphrase" in one_line_error(
        run("generate", "--key", str(key), "--passphrase-file", str(bad), "-o", str(out)))
    assert not out.exists()
    ok = run("generate", "--key", str(key), "-o", str(out),
             env={"SEEDTOOL_KEY_PASSPHRASE": "correct horse"})
    assert ok.returncode == 0, ok.stderr


def _forge(tmp_path: Path, keys: tuple[Path, Path], **kw: Any) -> Path:
    from seedtool.keys import load_private_key, public_of
    from seedtool.shared.pubkeys import key_id

    k = load_private_key(keys[0])
    raw = envelope.build(b"\x5a" * 64, private_key=k, key_id=key_id(public_of(k).raw),
                         seed_id=os.urandom(16), provenance={}, ttl=kw.get("ttl", 3600),
                         now=kw.get("now", int(time.time())))
    p = tmp_path / "forged.env"
    p.write_text(envelope.encode_text(raw))
    return p


def test_verify_bad_envelopes(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    good = tmp_path / "g.env"
    assert run("generate", "--key", str(priv), "-o", str(good)).returncode == 0
    raw = base64.b64decode(good.read_bytes())
    cases = {
        "corrupt": (raw[:60] + bytes([raw[60] ^ 1]) + raw[61:], "does not verify"),
        "truncated": (raw[:-10], "truncated"),
        "oversized": (raw + b"\0" * 5000, "too large"),
        "empty": (b"", "is empty"),
        "text": (b"hello", "not a seedtool envelope"),
    }
    for name, (data, message) in cases.items():
        f = tmp_path / f"{name}.env"
        f.write_bytes(data)
        assert message in one_line_error(run("verify", str(f), "--trusted-key", str(pub))), name
    expired = _forge(tmp_path, keys, now=int(time.time()) - 7200, ttl=3600)
    assert "expired" in one_line_error(run("verify", str(expired), "--trusted-key", str(pub)))
    future = _forge(tmp_path, keys, now=int(time.time()) + 86400)
    assert "not valid until" in one_line_error(
        run("verify", str(future), "--trusted-key", str(pub)))
    other = run("keygen", "-o", str(tmp_path / "o.key"))
    assert other.returncode == 0
    assert "not among the trusted" in one_line_error(
        run("verify", str(good), "--trusted-key", str(tmp_path / "o.pub")))
    # rotation: trusting both keys (a directory of .pub files) accepts it
    assert run("verify", str(good), "--trusted-key", str(tmp_path)).returncode == 0


def test_generate_imports_no_extra_packages(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "seedtool", "generate", "--key",
         str(keys[0]), "-o", str(tmp_path / "s.env")],
        capture_output=True, timeout=60, text=True)
    assert p.returncode == 0, p.stderr
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "click" in imported and "cryptography" in imported
    assert not imported & {"boto3", "botocore", "google", "usb", "pycdlib", "grpc", "requests"}


# --- -v: the cause chain and the longer diagnostic -------------------------------------


def _error_lines(p: subprocess.CompletedProcess[bytes]) -> list[str]:
    assert p.returncode != 0, p
    return p.stderr.decode().strip().splitlines()


def test_verbose_shows_the_cause_of_an_unreadable_key(tmp_path: Path) -> None:
    missing, out = tmp_path / "missing.key", tmp_path / "s.env"
    plain = one_line_error(run("generate", "--key", str(missing), "-o", str(out)))
    assert plain.startswith(f"seedtool: error: cannot read signing key {missing}: ")
    lines = _error_lines(run("-v", "generate", "--key", str(missing), "-o", str(out)))
    # raised `from None`, yet -v finds the OSError in __context__
    assert lines == [plain, f"  caused by: FileNotFoundError: [Errno 2] No such file or "
                            f"directory: '{missing}'"]
    vv = _error_lines(run("-vv", "generate", "--key", str(missing), "-o", str(out)))
    assert vv[0] == plain and len(vv) == 4
    assert vv[1].startswith("  raised at keys.py:") and vv[1].endswith(" in load_private_key")
    assert vv[2] == lines[1] and vv[3].startswith("    raised at ")
    assert not out.exists()


def test_verbose_shows_the_cause_of_a_bad_option(tmp_path: Path,
                                                 keys: tuple[Path, Path]) -> None:
    args = ["generate", "--key", str(keys[0]), "--ttl", "5x", "-o", str(tmp_path / "s.env")]
    plain = one_line_error(run(*args))
    assert _error_lines(run("--verbose", *args)) == [
        plain, "  caused by: ValueError: invalid literal for int() with base 10: '5x'"]


def test_verbose_shows_an_errors_longer_diagnostic(tmp_path: Path,
                                                   keys: tuple[Path, Path]) -> None:
    priv, _ = keys
    env = tmp_path / "g.env"
    assert run("generate", "--key", str(priv), "-o", str(env)).returncode == 0
    assert run("keygen", "-o", str(tmp_path / "o.key"), "--comment", "other").returncode == 0
    args = ["verify", str(env), "--trusted-key", str(tmp_path / "o.pub")]
    plain = one_line_error(run(*args))
    assert "not among the trusted public keys" in plain
    other = load_public_keys([tmp_path / "o.pub"])[0].key_id.hex()
    assert _error_lines(run("-v", *args)) == [plain, "  trusted keys:",
                                              f"    {other} (other)"]


def test_verbose_through_click_runner(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from seedtool.cli import cli

    missing = tmp_path / "missing.key"
    args = ["generate", "--key", str(missing), "-o", str(tmp_path / "s.env")]
    quiet = CliRunner().invoke(cli, args)
    loud = CliRunner().invoke(cli, ["-v", *args])
    assert quiet.exit_code == loud.exit_code == 1
    assert quiet.stderr.count("\n") == 1 and quiet.stderr.startswith("seedtool: error: ")
    assert loud.stderr.startswith(quiet.stderr)
    assert "  caused by: FileNotFoundError: " in loud.stderr


def test_verbose_never_quotes_data_from_a_foreign_cause() -> None:
    from seedtool.cli import _explain
    from seedtool.shared.errors import EnvelopeError

    secret = os.urandom(32)
    for cause in (ValueError(f"bad value {secret!r}"), ValueError(secret.hex()),
                  ValueError(base64.b64encode(secret).decode()),
                  UnicodeDecodeError("utf-8", secret, 0, 1, "invalid start byte")):
        try:
            try:
                raise cause
            except ValueError:
                raise EnvelopeError("the envelope is not readable; check the file") from None
        except EnvelopeError as e:
            lines = _explain(e, 2)
        text = "\n".join(lines)
        assert f"caused by: {type(cause).__name__}: " in text
        assert_no_seed(secret, text.encode())
        assert secret.hex()[:8] not in text


# --- help: current, and it imports nothing heavy -----------------------------------------

#: never imported to print help: cloud SDKs, device and ISO libraries, and cryptography
HEAVY = {"boto3", "botocore", "google", "grpc", "requests", "usb", "pycdlib", "openstack",
         "keystoneauth1", "cryptography", "yaml"}


def _help_invocations() -> list[list[str]]:
    import click

    from seedtool.cli import cli

    ctx = click.Context(cli)
    found: list[list[str]] = [[]]
    for name in cli.list_commands(ctx):
        found.append([name])
        sub = cli.get_command(ctx, name)
        if isinstance(sub, click.Group):
            found += [[name, s] for s in sub.list_commands(click.Context(sub))]
    return found


def test_help_imports_no_cloud_sdk_and_no_cryptography() -> None:
    invocations = _help_invocations()
    assert ["launch", "aws"] in invocations and ["image", "seed"] in invocations
    for args in invocations:
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "seedtool", *args,
                            "--help"], capture_output=True, timeout=60, text=True)
        assert p.returncode == 0, (args, p.stderr)
        imported = {line.split("|")[-1].strip().split(".")[0]
                    for line in p.stderr.splitlines() if line.startswith("import time:")}
        assert "click" in imported, args
        assert not imported & HEAVY, (args, imported & HEAVY)


def test_top_level_help_lists_every_command_and_launcher() -> None:
    p = run("--help")
    assert p.returncode == 0
    text = " ".join(p.stdout.decode().split())
    from seedtool.cli import COMMANDS

    for name in COMMANDS:
        assert f" {name} {COMMANDS.help(name)}" in text, name
    assert "QEMU now" not in text
    # `seedtool launch --help` lists every launcher with its own line of help
    launch = " ".join(run("launch", "--help").stdout.decode().split())
    launchers = [args[1] for args in _help_invocations() if args[:1] == ["launch"]
                 and len(args) == 2]
    assert {"aws", "gce", "qemu"} <= set(launchers)
    for name in launchers:
        assert f" {name} " in launch.partition("Launchers:")[2], name


def test_one_user_data_reader_takes_standard_input(tmp_path: Path,
                                                   keys: tuple[Path, Path]) -> None:
    iso = tmp_path / "seed.iso"
    p = run("nocloud", "--key", str(keys[0]), "--user-data", "-", "-o", str(iso),
            input=b"#cloud-config\nhostname: from-stdin\n")
    assert p.returncode == 0, p.stderr
    assert b"hostname: from-stdin" in iso.read_bytes()
    missing = tmp_path / "missing.yaml"
    err = one_line_error(run("nocloud", "--key", str(keys[0]), "--user-data", str(missing),
                             "-o", str(iso)))
    assert err == (f"seedtool: error: cannot read user-data {missing}: No such file or "
                   "directory; check the path")


def test_generate_refuses_a_terminal_in_one_sentence(keys: tuple[Path, Path]) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "seedtool", "generate", "--key", str(keys[0])],
                           stdout=follower, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert p.returncode == 2
    assert p.stderr.decode().splitlines() == [
        "seedtool: error: refusing to print a seed to a terminal; use -o FILE or a pipe"]


def test_every_seed_command_takes_one_seed_options_value() -> None:
    import inspect

    import click

    from seedtool.cli import cli
    from seedtool.commands._options import _SEED_PARAMS

    ctx = click.Context(cli)
    seed_commands = []
    for args in _help_invocations()[1:]:
        cmd = cli.get_command(ctx, args[0])
        if len(args) == 2:
            assert isinstance(cmd, click.Group)
            cmd = cmd.get_command(ctx, args[1])
        assert cmd is not None and cmd.callback is not None, args
        names = {p.name for p in cmd.params}
        if "key_path" not in names or args == ["keygen"]:
            continue
        seed_commands.append(" ".join(args))
        assert set(_SEED_PARAMS) <= names, args
        signature = inspect.signature(inspect.unwrap(cmd.callback)).parameters
        assert "seeds" in signature and not set(_SEED_PARAMS) & set(signature), args
    assert {"generate", "userdata", "nocloud", "image seed", "launch qemu", "launch aws",
            "launch gce"} <= set(seed_commands)
