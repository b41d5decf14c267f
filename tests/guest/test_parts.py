"""The guest's parts on their own: policy parser, ledger, scrubbing, GCE guest attribute."""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import multiprocessing
import pickle
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest

from seedtool.generate import SeedFactory
from seedtool.guest import gce, scrub
from seedtool.guest.ledger import Ledger, LedgerError
from seedtool.guest.policy import Policy, PolicyError, load_policy, policy_from_mapping
from seedtool.shared import envelope

REPO = Path(__file__).resolve().parents[2]

# ---- policy -------------------------------------------------------------------------------


def test_absent_policy_means_defaults(tmp_path: Path) -> None:
    pol = load_policy(tmp_path / "nope.json")
    assert pol == Policy()
    assert pol.trusted_keys == "/etc/seedtool/trusted-keys" and pol.clock_skew == 300
    assert not pol.fail_closed and not pol.credit_datasource and pol.trusted_platforms == ()


def test_full_policy_round_trips(tmp_path: Path) -> None:
    data = {"trusted_keys": "/opt/keys", "trusted_platforms": ["OpenStack", "azure"],
            "clock_skew": 0, "fail_closed": True, "credit_datasource": True}
    p = tmp_path / "policy.json"
    p.write_text(json.dumps(data))
    pol = load_policy(p)
    assert pol.trusted_platforms == ("openstack", "azure")
    assert pol.trusts_platform("OPENSTACK") and not pol.trusts_platform("ec2")
    assert policy_from_mapping(pol.to_json()) == pol


def test_platforms_are_trusted_only_with_the_master_switch() -> None:
    assert not Policy(trusted_platforms=("openstack",)).trusts_platform("openstack")


@pytest.mark.parametrize(
    "data, words",
    [
        ([], "must be a JSON object"),
        ({"trusted_key": "/x"}, "unknown setting 'trusted_key'"),
        ({"clock_skew": "300"}, "'clock_skew' must be a whole number"),
        ({"clock_skew": True}, "'clock_skew' must be a whole number"),
        ({"clock_skew": -1}, "'clock_skew' must be a whole number"),
        ({"clock_skew": 86401}, "'clock_skew' must be a whole number"),
        ({"clock_skew": 1.5}, "'clock_skew' must be a whole number"),
        ({"fail_closed": "yes"}, "'fail_closed' must be true or false"),
        ({"credit_datasource": 1}, "'credit_datasource' must be true or false"),
        ({"trusted_keys": "relative/dir"}, "'trusted_keys' must be an absolute path"),
        ({"trusted_keys": 5}, "'trusted_keys' must be an absolute path"),
        ({"trusted_platforms": "openstack"}, "'trusted_platforms' must be a list"),
        ({"trusted_platforms": [1]}, "'trusted_platforms' must be a list"),
        ({"trusted_platforms": ["open stack"]}, "is not a platform name"),
    ],
)
def test_invalid_policy_is_refused_with_the_setting_named(data: Any, words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        policy_from_mapping(data)


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe", b"[1, 2", b"{" * 100000])
def test_unparseable_policy_file(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "policy.json"
    p.write_bytes(content)
    with pytest.raises(PolicyError, match="policy"):
        load_policy(p)


def test_unreadable_policy_file(tmp_path: Path) -> None:
    p = tmp_path / "policy.json"
    p.mkdir()
    with pytest.raises(PolicyError, match="cannot read seed policy"):
        load_policy(p)


# ---- ledger -------------------------------------------------------------------------------


def test_ledger_records_each_id_once(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "var/lib/seedtool/ledger")
    sid = "0123456789abcdef" * 2
    assert not led.contains(sid)
    assert led.consume(sid, "user-data", now=5) is True
    assert led.consume(sid, "disk") is False
    assert led.contains(sid) and not led.contains("f" * 32)
    assert Path(led.path).read_text() == f"{sid} 5 user-data\n"
    assert oct(Path(led.path).stat().st_mode & 0o777) == "0o644"


def test_ledger_sanitises_origin_and_refuses_bad_ids(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger")
    led.consume("a" * 32, "datasource:open stack\nx", now=1)
    assert Path(led.path).read_text() == f"{'a' * 32} 1 datasource:open_stack_x\n"
    with pytest.raises(ValueError):
        led.consume("A" * 32, "x")


def test_ledger_in_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError, match="cannot write ledger"):
        Ledger(blocker / "ledger").consume("b" * 32, "x")


def _consume_in_child(path: str, sid: str, q: Any) -> None:
    q.put(Ledger(path).consume(sid, "child"))


def test_two_processes_never_both_consume_one_seed(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger")
    for n in range(5):
        sid = f"{n:032x}"
        q: Any = multiprocessing.get_context("fork").Queue()
        procs = [multiprocessing.get_context("fork").Process(
            target=_consume_in_child, args=(path, sid, q)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        results = sorted(q.get(timeout=10) for _ in procs)
        assert results == [False, False, False, True]
    assert len(Path(path).read_text().splitlines()) == 5


# ---- scrubbing ----------------------------------------------------------------------------


@pytest.fixture
def env_text(private_key: Any) -> str:
    return SeedFactory(private_key).new().text


def test_filler_keeps_length_and_stays_base64(env_text: str) -> None:
    needle = env_text.encode()
    fill = scrub.filler(needle, "consumed")
    assert len(fill) == len(needle) and fill != needle
    decoded = base64.b64decode(fill, validate=True)
    assert decoded.startswith(b"[seedtool: consumed]")
    assert len(decoded) == len(base64.b64decode(needle))
    raw = envelope.decode_text(env_text)
    assert len(scrub.filler(raw)) == len(raw) and scrub.filler(raw).startswith(b"[seedtool")


def test_needles_cover_text_raw_and_wrapped_forms(env_text: str) -> None:
    raw = envelope.decode_text(env_text)
    wrapped = "\n".join(env_text[i:i + 76] for i in range(0, len(env_text), 76))
    needles = scrub.needles_for(wrapped)
    assert raw in needles and env_text.encode() in needles
    assert all(len(n) >= scrub.MIN_NEEDLE for n in needles)
    blob, n = scrub.scrub_bytes(f"data: |\n  {wrapped}\n".encode(), needles)
    assert n >= 1 and not any(line.encode() in blob for line in wrapped.splitlines())


def test_scrub_file_in_place_yaml_pickle_json_and_gzip(tmp_path: Path, env_text: str) -> None:
    needles = scrub.needles_for(env_text)
    raw = envelope.decode_text(env_text)
    seed = envelope.parse(raw).uncredited_seed
    yaml_file = tmp_path / "cloud-config.txt"
    yaml_file.write_text(f"#cloud-config\nrandom_seed:\n  data: {env_text}\n  encoding: b64\n")
    msg = MIMEMultipart()
    msg.attach(MIMEText(f"#cloud-config\nrandom_seed: {{data: {env_text}}}\n", "cloud-config"))
    obj = {"userdata_raw": f"random_seed: {{data: {env_text}}}".encode(), "userdata": msg,
           "text": env_text}
    pkl = tmp_path / "obj.pkl"
    pkl.write_bytes(pickle.dumps(obj))
    js = tmp_path / "combined-cloud-config.json"
    js.write_text(json.dumps({"random_seed": {"data": env_text, "encoding": "b64"}}))
    gz = tmp_path / "user-data.txt"
    gz.write_bytes(gzip.compress(f"#cloud-config\nrandom_seed: {{data: {env_text}}}\n".encode()))
    binfile = tmp_path / "seed.bin"
    binfile.write_bytes(b"head" + raw + b"tail")
    sizes = {p: p.stat().st_size for p in (yaml_file, pkl, js, binfile)}

    changed = scrub.scrub_tree(tmp_path, needles, trees=["."])
    assert sorted(Path(c).name for c in changed) == sorted(
        ["cloud-config.txt", "obj.pkl", "combined-cloud-config.json", "user-data.txt", "seed.bin"]
    )
    for p, size in sizes.items():
        assert p.stat().st_size == size  # length-preserving
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        if p.suffix == ".txt" and data.startswith(b"\x1f\x8b"):
            data = gzip.decompress(data)
        for needle in needles:
            assert needle not in data
        assert seed not in data
    # the edited files are still what they were: YAML-ish text, a pickle, JSON
    back = pickle.loads(pkl.read_bytes())
    assert env_text not in back["text"] and len(back["text"]) == len(env_text)
    assert env_text not in back["userdata"].as_string()
    assert json.loads(js.read_text())["random_seed"]["encoding"] == "b64"
    assert scrub.scrub_tree(tmp_path, needles, trees=["."]) == []


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("durable", [True, False])
def test_scrub_tree_fsyncs_each_changed_file_only_when_durable(
        tmp_path: Path, env_text: str, durable: bool) -> None:
    for i in range(4):
        (tmp_path / f"copy{i}.txt").write_text(f"random_seed: {{data: {env_text}}}\n")
    (tmp_path / "clean.txt").write_text("nothing to see")
    code = ("import sys; from pathlib import Path; from seedtool.guest import scrub; "
            "print(len(scrub.scrub_tree(Path(sys.argv[1]), scrub.needles_for(sys.argv[2]), "
            f"trees=['.'], durable={durable})))")
    p = subprocess.run(["strace", "-f", "-e", "trace=fsync,fdatasync,syncfs,sync",
                        sys.executable, "-c", code, str(tmp_path), env_text],
                       capture_output=True, text=True, check=True, cwd=REPO)
    assert p.stdout.strip() == "4"
    calls = [ln for ln in p.stderr.splitlines() if re.match(r"(\[pid +\d+\] )?\w+\(", ln)]
    assert [c.split("(")[0].split()[-1] for c in calls] == ["fsync"] * (4 if durable else 0)
    for i in range(4):
        assert env_text not in (tmp_path / f"copy{i}.txt").read_text()


def test_scrub_tree_skips_the_journal_and_symlinks(tmp_path: Path, env_text: str) -> None:
    needles = scrub.needles_for(env_text)
    journal = tmp_path / "var/log/journal/x"
    journal.mkdir(parents=True)
    (journal / "system.journal").write_text(env_text)
    outside = tmp_path / "outside.txt"
    outside.write_text(env_text)
    (tmp_path / "var/log/link.txt").symlink_to(outside)
    assert scrub.scrub_tree(tmp_path, needles) == []
    assert outside.read_text() == env_text


class FakeDataSource:
    """A stand-in with the attributes cloud-init's DataSource keeps user-data in."""


FakeDataSource.__module__ = "cloudinit.sources.DataSourceFake"


def test_scrub_object_finds_the_seed_in_ascii_and_non_ascii_strings(env_text: str) -> None:
    raw = envelope.decode_text(env_text)
    hidden = raw.decode("utf-8", "surrogateescape")  # raw bytes carried in a str
    obj = {"ascii": f"data: {env_text}", "accented": f"donn\u00e9es: {env_text} \u2713",
           "raw": f"\u00e9{hidden}", "clean": "nothing \u00e9 here", "plain": "nothing"}
    assert scrub.scrub_object(obj, scrub.needles_for(env_text)) == 3
    assert env_text not in obj["ascii"] and env_text not in obj["accented"]
    assert hidden not in obj["raw"] and obj["accented"].endswith(" \u2713")
    assert obj["clean"] == "nothing \u00e9 here" and obj["plain"] == "nothing"


def test_scrub_object_reaches_datasource_attributes(env_text: str) -> None:
    ds = FakeDataSource()
    msg = MIMEMultipart()
    msg.attach(MIMEText(f"random_seed: {{data: {env_text}}}", "cloud-config"))
    ds.userdata_raw = gzip.compress(f"random_seed: {{data: {env_text}}}".encode())  # type: ignore[attr-defined]
    ds.userdata = msg  # type: ignore[attr-defined]
    ds._crawled_metadata = {"user-data": env_text, "list": [env_text.encode()]}  # type: ignore[attr-defined]
    ds.metadata = {"instance-id": "i-1"}  # type: ignore[attr-defined]
    # after consume_data cloud-init gives the datasource the merged config, user-data's too
    ds.sys_cfg = {"random_seed": {"data": env_text, "encoding": "b64"}}  # type: ignore[attr-defined]
    needles = scrub.needles_for(env_text)
    assert scrub.scrub_object(ds, needles) == 5
    blob = pickle.dumps(vars(ds))
    assert env_text.encode() not in blob
    assert env_text.encode() not in gzip.decompress(ds.userdata_raw)  # type: ignore[attr-defined]
    assert ds.metadata == {"instance-id": "i-1"}  # type: ignore[attr-defined]


# ---- GCE guest attribute ----------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None, bytes]] = []

    def do_PUT(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).seen.append(
            (self.command, self.path, self.headers.get("Metadata-Flavor"), body)
        )
        ok = self.headers.get("Metadata-Flavor") == "Google"
        self.send_response(200 if ok else 403)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def metadata_server() -> Iterator[str]:
    _Recorder.seen = []
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_gce_guest_attribute_put(metadata_server: str) -> None:
    url = metadata_server + "/computeMetadata/v1/instance/guest-attributes/seedtool/consumed"
    sid = "c0ffee00" * 4
    assert gce.report_consumed(sid, url=url) is True
    assert _Recorder.seen == [
        ("PUT", "/computeMetadata/v1/instance/guest-attributes/seedtool/consumed", "Google",
         sid.encode())
    ]


def test_gce_guest_attribute_errors_are_ignored(metadata_server: str) -> None:
    port = int(metadata_server.rsplit(":", 1)[1])
    srv_gone = f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/x"
    assert gce.report_consumed("a" * 32, url=srv_gone, timeout=1) is False
    assert gce.report_consumed("not an id", url=metadata_server) is False
    assert _Recorder.seen == []


def test_gce_default_url_is_the_documented_one() -> None:
    assert gce.GUEST_ATTRIBUTE_URL == (
        "http://metadata.google.internal/computeMetadata/v1/instance/guest-attributes/"
        "seedtool/consumed"
    )


# ---- cc_seedtool's decoding of random_seed (as cc_seed_random decodes it) -----------------


def _cc() -> Any:
    import importlib

    root = Path(__file__).resolve().parents[2] / "cloud_init_modules"
    import sys

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("cc_seedtool")


@pytest.mark.parametrize("encoding", ["b64", "base64", "B64", "BASE64"])
def test_cc_decodes_base64_like_seed_random(env_text: str, encoding: str) -> None:
    assert _cc()._decode(env_text, encoding) == envelope.decode_text(env_text)


@pytest.mark.parametrize("encoding", ["gz", "gzip"])
def test_cc_decodes_gzip_like_seed_random(env_text: str, encoding: str) -> None:
    raw = envelope.decode_text(env_text)
    assert _cc()._decode(gzip.compress(raw), encoding) == raw
    assert envelope.parse(_cc()._decode(gzip.compress(env_text.encode()), encoding))


@pytest.mark.parametrize("encoding", [None, "", "raw"])
def test_cc_passes_unencoded_text_through(env_text: str, encoding: str | None) -> None:
    assert _cc()._decode(env_text, encoding) == env_text


def test_cc_undecodable_data_reaches_the_parser_unchanged() -> None:
    cc = _cc()
    assert cc._decode(b"\x00not gzip", "gzip") == b"\x00not gzip"
    with pytest.raises(envelope.MalformedEnvelope):
        envelope.parse(cc._decode("@@@", "b64"))


def test_cc_handle_takes_both_cloud_init_calling_conventions() -> None:
    import inspect

    params = list(inspect.signature(_cc().handle).parameters)
    # 22.4: handle(name, cfg, cloud, log, args) positionally; 23.2+: keywords name, cfg,
    # cloud, args, and `log=` only for a handle of exactly five parameters
    assert params[:4] == ["name", "cfg", "cloud", "args"] and len(params) == 6
