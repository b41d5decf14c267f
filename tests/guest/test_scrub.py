"""The guest's scrub on its own: every form cloud-init keeps an envelope in, only ours, bounded.

Each form case builds a file the way cloud-init or a datasource writes one (YAML
re-dumped, JSON, pickle, MIME, gzip, logs), checks that reading it back the natural
way (the container's own loader, then the encodings of that form) gives the envelope,
scrubs it, and checks that the same reading still works on a file of the same length
and no longer gives the envelope or its text.
"""

from __future__ import annotations

import ast
import base64
import email
import gzip
import hashlib
import json
import pickle
import quopri
import re
import resource
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest
import yaml

from seedtool.generate import SeedFactory
from seedtool.guest import scrub
from seedtool.shared import envelope

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(private_key: Any) -> tuple[bytes, str]:
    new = SeedFactory(private_key).new()
    return new.raw, new.text


def _wrap(text: str, width: int, sep: str = "\n") -> str:
    return sep.join(text[i:i + width] for i in range(0, len(text), width))


def _holds(blob: bytes, raw: bytes, text: str) -> bool:
    """Whether `blob` holds the envelope raw, or its base64 text with layout removed."""
    if raw in blob:
        return True
    flat = blob.replace(b"\\n", b"").translate(None, b" \t\r\n\"'\\")
    return text.rstrip("=").encode() in flat


def _cfg(blob: bytes) -> Any:
    return yaml.safe_load(blob)["random_seed"]["data"]


def _mime_payloads(blob: bytes) -> bytes:
    msg = email.message_from_bytes(blob)
    out = b""
    for p in msg.walk():
        payload = None if p.is_multipart() else p.get_payload(decode=True)
        out += payload if isinstance(payload, bytes) else b""
    return out


# name -> (build(raw, text) -> file bytes, read(file bytes) -> what cloud-init would decode)
FORMS: dict[str, tuple[Callable[[bytes, str], bytes], Callable[[bytes], bytes]]] = {
    "yaml double-quoted": (
        lambda raw, text: f'#cloud-config\nrandom_seed:\n  data: "{text}"\n'.encode(),
        lambda b: _cfg(b).encode()),
    "yaml folded, narrow": (
        lambda raw, text: ("random_seed:\n  data: >\n    " + _wrap(text, 11, "\n    ")
                           + "\n  encoding: b64\n").encode(),
        lambda b: _cfg(b).encode()),
    "yaml plain, line-wrapped and indented": (
        lambda raw, text: ("random_seed:\n  data:\n      " + _wrap(text, 7, "\n      ")
                           + "\n").encode(),
        lambda b: _cfg(b).encode()),
    "yaml single-quoted, wrapped": (
        lambda raw, text: ("random_seed: {data: '" + _wrap(text, 13, "\n   ") + "'}\n").encode(),
        lambda b: _cfg(b).encode()),
    "yaml !!binary raw (re-dumped by cloud-init)": (
        lambda raw, text: yaml.safe_dump({"random_seed": {"data": raw}}).encode(),
        lambda b: _cfg(b)),
    "yaml !!binary of gzip, encoding gz": (
        lambda raw, text: yaml.safe_dump({"random_seed": {
            "data": gzip.compress(text.encode(), mtime=0), "encoding": "gz"}}).encode(),
        lambda b: gzip.decompress(_cfg(b))),
    "json with escaped line breaks (instance-data-sensitive.json)": (
        lambda raw, text: json.dumps({"merged_cfg": {"random_seed": {
            "data": _wrap(text, 60)}}}, indent=1).encode(),
        lambda b: json.loads(b)["merged_cfg"]["random_seed"]["data"].encode()),
    "json ci-b64 bytes (combined-cloud-config.json)": (
        lambda raw, text: json.dumps({"random_seed": {
            "data": "ci-b64:" + base64.b64encode(gzip.compress(raw)).decode()}}).encode(),
        lambda b: gzip.decompress(base64.b64decode(
            json.loads(b)["random_seed"]["data"][len("ci-b64:"):]))),
    "gce attributes: base64 of gzip user-data in JSON": (
        lambda raw, text: json.dumps({"user-data-encoding": "base64", "user-data":
            base64.b64encode(gzip.compress(
                f'#cloud-config\nrandom_seed: {{data: "{text}"}}\n'.encode())).decode()
        }).encode(),
        lambda b: gzip.decompress(base64.b64decode(json.loads(b)["user-data"]))),
    "mime part, base64 transfer encoding": (
        lambda raw, text: _mime(text, "base64"),
        _mime_payloads),
    "mime part, quoted-printable": (
        lambda raw, text: _mime(text, "quoted-printable"),
        _mime_payloads),
    "pickle of gzip bytes and str": (
        lambda raw, text: pickle.dumps({"userdata_raw": gzip.compress(text.encode()),
                                        "text": _wrap(text, 76)}),
        lambda b: (lambda o: gzip.decompress(o["userdata_raw"]) + o["text"].encode())(
            pickle.loads(b))),
    "log line quoting a bytes value (schema warning)": (
        lambda raw, text: (f"2026 - schema.py[WARNING]: random_seed.data: {raw!r} is not of "
                           "type 'string'\nnext line\n").encode(),
        lambda b: _literal(b.decode())),
    "result.json quoting a gzip bytes value": (
        lambda raw, text: json.dumps({"errors": [
            f"random_seed.data: {gzip.compress(raw)!r} is not of type 'string'"]}).encode(),
        lambda b: _degzip(_literal(json.loads(b)["errors"][0]))),
    "azure ovf-env.xml CustomData": (
        lambda raw, text: (
            '<?xml version="1.0"?><Environment><ns1:ProvisioningSection '
            'xmlns:ns1="http://schemas.microsoft.com/windowsazure"><ns1:CustomData>'
            + base64.b64encode(f"#cloud-config\nrandom_seed: {{data: {text}}}\n".encode())
            .decode() + "</ns1:CustomData></ns1:ProvisioningSection></Environment>").encode(),
        lambda b: base64.b64decode(ET.fromstring(b)[0][0].text or "")),
    "raw envelope appended to a file (seed_random's random_seed.file)": (
        lambda raw, text: b"\x00" * 100 + raw,
        lambda b: b),
}


def _literal(line: str) -> bytes:
    """The bytes literal a schema warning quotes (a same-length marker once scrubbed)."""
    m = re.search(r"""b(['"]).*\1(?= is not of type)""", line)
    assert m is not None
    value = ast.literal_eval(m.group())
    assert isinstance(value, bytes)
    return value


def _degzip(value: bytes) -> bytes:
    try:
        return gzip.decompress(value)
    except (OSError, EOFError, zlib.error):
        return value


def _mime(text: str, cte: str) -> bytes:
    msg = MIMEMultipart(boundary="b0undary")
    raw = (f"#cloud-config\nrandom_seed: {{data: {text}}}\n" + "x: 1\n" * 30).encode()
    part = MIMEText("", "cloud-config", "utf-8")
    del part["Content-Transfer-Encoding"]
    if cte == "base64":
        part.set_payload(base64.encodebytes(raw).decode())
    else:
        part.set_payload(quopri.encodestring(raw).decode())
        assert b"=\n" in quopri.encodestring(raw)  # soft line breaks inside the text
    part["Content-Transfer-Encoding"] = cte
    msg.attach(part)
    return msg.as_bytes()


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_is_scrubbed_in_place_and_stays_readable(
        tmp_path: Path, env: tuple[bytes, str], form: str) -> None:
    raw, text = env
    build, read = FORMS[form]
    blob = build(raw, text)
    assert _holds(read(blob), raw, text), "the case does not hold the envelope"
    path = tmp_path / "copy"
    path.write_bytes(blob)
    scrubber = scrub.Scrubber(scrub.needles_for(text))
    assert scrubber.scrub_file(path) >= 1
    after = path.read_bytes()
    assert len(after) == len(blob)
    assert not _holds(after, raw, text)
    assert not _holds(read(after), raw, text)  # still loads: pickle, JSON, YAML, MIME, XML
    assert scrubber.changed == [str(path)] and scrubber.incomplete == {}
    assert scrub.Scrubber(scrub.needles_for(text)).scrub_file(path) == 0  # nothing left


def test_a_gzip_file_is_refitted_to_its_length_and_gzip_reads_it(
        tmp_path: Path, env: tuple[bytes, str]) -> None:
    raw, text = env
    doc = f"#cloud-config\nrandom_seed:\n  data: {text}\n".encode() + b"# pad\n" * 50
    gz = tmp_path / "user-data.txt"
    gz.write_bytes(gzip.compress(doc, mtime=0))
    inode, size = gz.stat().st_ino, gz.stat().st_size
    assert scrub.scrub_file(gz, scrub.needles_for(text)) == 1
    assert gz.stat().st_ino == inode and gz.stat().st_size == size  # in place
    out = subprocess.run(["gzip", "-dc"], input=gz.read_bytes(), capture_output=True,
                         check=True).stdout
    assert not _holds(out, raw, text) and out.endswith(b"# pad\n" * 50)
    assert len(out) == len(doc)


def test_a_gzip_member_needing_more_padding_than_fextra_holds_is_still_valid(
        tmp_path: Path, env: tuple[bytes, str]) -> None:
    """Stored (level 0) member, recompressed at level 9: the slack is far over 65535
    bytes, so empty stored blocks take the rest (RFC 1951 3.2.4)."""
    raw, text = env
    filler_text = base64.b64encode(hashlib.shake_256(b"x").digest(300_000)).decode()
    doc = f"data: {text}\n{filler_text}\n".encode()
    member = gzip.compress(doc, compresslevel=0, mtime=0)
    blob = b"head " + base64.b64encode(member) + b" tail"
    out, n = scrub.scrub_bytes(blob, scrub.needles_for(text))
    assert n == 1 and len(out) == len(blob)
    inner = base64.b64decode(out[5:-5])
    assert len(inner) == len(member) and len(inner) - 10 - 8 > 65535 + 100_000
    plain = subprocess.run(["gzip", "-dc"], input=inner, capture_output=True,
                           check=True).stdout
    assert plain.endswith(filler_text.encode() + b"\n") and not _holds(plain, raw, text)


def test_not_an_envelope_changes_nothing_at_all(tmp_path: Path, env: tuple[bytes, str]) -> None:
    """Point 3: the user's own random_seed.data (long base64, not ours) is left alone,
    and so is a tree that holds none of the envelope being scrubbed."""
    raw, text = env
    mine = base64.b64encode(hashlib.sha512(b"the user's own seed").digest() * 4).decode()
    files = {
        "var/lib/cloud/instance/cloud-config.txt":
            f"#cloud-config\nrandom_seed:\n  data: {mine}\n  encoding: b64\n".encode(),
        "var/lib/cloud/instance/user-data.txt":
            gzip.compress(f"#cloud-config\nrandom_seed: {{data: {mine}}}\n".encode()),
        "run/cloud-init/combined-cloud-config.json":
            json.dumps({"random_seed": {"data": _wrap(mine, 40)}}).encode(),
        "var/log/cloud-init.log": (f"data {mine!r} b'{mine}'\n" * 3).encode(),
        "var/lib/cloud/instance/obj.pkl": pickle.dumps({"u": mine.encode(), "g": gzip.compress(
            mine.encode())}),
    }
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)

    def state() -> dict[str, tuple[bytes, int]]:
        return {str(p): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = state()
    assert scrub.needles_for(mine) == ()
    assert scrub.needles_for(mine).targets == ()
    assert scrub.scrub_tree(tmp_path, scrub.needles_for(mine)) == []
    assert scrub.scrub_tree(tmp_path, [mine.encode(), b"x" * 40]) == []  # old-style list
    other = scrub.Scrubber(scrub.needles_for(text))  # a real envelope, not in the tree
    assert other.scrub_tree(tmp_path) == [] and other.replaced == 0
    obj = {"data": mine, "nested": [mine.encode()]}
    assert other.scrub_object(obj) == 0 and obj == {"data": mine, "nested": [mine.encode()]}
    assert state() == before


def test_scrub_object_reaches_gce_instance_data_in_memory(env: tuple[bytes, str]) -> None:
    raw, text = env
    attrs = json.dumps({"user-data-encoding": "base64", "user-data": base64.b64encode(
        gzip.compress(f'random_seed: {{data: "{text}"}}\n'.encode())).decode()}).encode()
    md: dict[str, bytes] = {"instance-data": attrs, "instance-id": b"1"}
    assert scrub.scrub_object(md, scrub.needles_for(text)) == 1
    assert len(md["instance-data"]) == len(attrs)
    ud = gzip.decompress(base64.b64decode(json.loads(md["instance-data"])["user-data"]))
    assert not _holds(ud, raw, text) and ud.startswith(b'random_seed: {data: "')


def _nested(blob: bytes, levels: int) -> bytes:
    for _ in range(levels):
        blob = b"x: " + base64.b64encode(gzip.compress(blob, mtime=0)) + b"\n"
    return blob


def test_nesting_is_followed_to_the_depth_bound_and_beyond_is_reported(
        tmp_path: Path, env: tuple[bytes, str]) -> None:
    raw, text = env
    inner = f"data: {text}\n".encode()
    ok, deep = tmp_path / "ok", tmp_path / "deep"
    ok.write_bytes(_nested(inner, 2))  # base64 > gzip > base64 > gzip: 4 layers
    deep.write_bytes(_nested(inner, 3))  # 6 layers: over MAX_DEPTH
    s = scrub.Scrubber(scrub.needles_for(text))
    assert s.scrub_file(ok) == 1 and s.incomplete == {}
    before = deep.read_bytes()
    assert s.scrub_file(deep) == 0
    assert s.incomplete == {str(deep): "depth"} and deep.read_bytes() == before


def test_a_huge_base64_run_and_a_large_file_hit_their_bounds(
        tmp_path: Path, env: tuple[bytes, str]) -> None:
    raw, text = env
    run = tmp_path / "run.txt"
    run.write_bytes(b"A" * (4 << 20) + b"\n" + f"data: {text}\n".encode())
    s = scrub.Scrubber(scrub.needles_for(text), max_decoded=1 << 20)
    assert s.scrub_file(run) == 1  # the envelope itself is still found
    assert s.incomplete == {str(run): "decode budget"}
    big = tmp_path / "logs/big.txt"
    big.parent.mkdir()
    big.write_bytes(text.encode() + b"\n" * 2000)
    s = scrub.Scrubber(scrub.needles_for(text), max_file=1000)
    assert s.scrub_tree(tmp_path, trees=["logs"]) == []
    assert s.incomplete == {str(big): "too large"}
    assert big.read_bytes().startswith(text.encode())


def test_the_time_bound_stops_the_walk_and_says_how_many_files(
        tmp_path: Path, env: tuple[bytes, str]) -> None:
    raw, text = env
    (tmp_path / "t").mkdir()
    for i in range(3):
        (tmp_path / f"t/f{i}").write_text(f"data: {text}\n")
    s = scrub.Scrubber(scrub.needles_for(text), time_limit=-1)
    assert s.scrub_tree(tmp_path, trees=["t"]) == []
    assert s.incomplete == {"3 files not searched": "time"}
    assert (tmp_path / "t/f0").read_text() == f"data: {text}\n"


BOMB = r"""
import gzip, resource, sys
from pathlib import Path
from seedtool.guest import scrub
path, text = sys.argv[1], sys.argv[2]
s = scrub.Scrubber(scrub.needles_for(text))
n = s.scrub_file(path)
print(n, s.incomplete.get(path), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sep="|")
"""


def test_a_gzip_bomb_is_reported_within_the_decode_budget(
        tmp_path: Path, env: tuple[bytes, str]) -> None:
    raw, text = env
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    bomb = b"".join([c.compress(chunk) for _ in range(1024)] + [c.flush()])  # 1 GiB of zeros
    path = tmp_path / "bomb"
    path.write_bytes(b"x: " + base64.b64encode(bomb) + b"\n" + f"data: {text}\n".encode())
    p = subprocess.run([sys.executable, "-c", BOMB, str(path), text], capture_output=True,
                       text=True, check=True, cwd=REPO)
    n, reason, maxrss_kib = p.stdout.strip().split("|")
    assert n == "1" and reason == "decode budget"
    # the budget (64 MiB decoded) bounds the memory, not the 1 GiB the bomb holds
    assert int(maxrss_kib) < 512 * 1024
    assert not _holds(path.read_bytes(), raw, text)


def test_needles_only_from_an_envelope_and_old_callers_still_work(env: tuple[bytes, str]) -> None:
    raw, text = env
    n = scrub.needles_for(_wrap(text, 76))
    assert raw in n and text.encode() in n and len(n.targets) == 1
    assert scrub.needles_for(raw) == n and scrub.needles_for("not an envelope") == ()
    assert scrub.as_needles([b"junk", text.encode()]).targets[0].raw == raw
    seed = envelope.parse(raw).uncredited_seed
    secret = scrub.Needles.secret(seed)
    blob, count = scrub.scrub_bytes(b"{" + base64.b64encode(seed) + b"}", secret)
    assert count == 1 and base64.b64encode(seed) not in blob
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


@pytest.mark.parametrize("wrap", ["bytes literal", "bytes literal in a bytes literal", "base64"])
def test_a_stored_gzip_member_inside_another_container_keeps_its_crc(
        env: tuple[bytes, str], wrap: str) -> None:
    """A stored (level 0) member shows the envelope's text; the container is handled
    first, so no edit lands inside the member (fuzz finding S1, fuzz/README.md)."""
    raw, text = env
    member = gzip.compress(f"data: {text}\n".encode(), compresslevel=0, mtime=0)
    if wrap == "base64":
        blob = b"x: " + base64.b64encode(member) + b"\n"
    else:
        blob = repr(member).encode()
        if wrap == "bytes literal in a bytes literal":
            blob = repr(blob).encode()
    out, n = scrub.scrub_bytes(b"log: " + blob + b"\n", scrub.needles_for(text))
    assert n == 1 and len(out) == len(blob) + 6
    inner = out[5:-1]
    if wrap == "base64":
        plain = gzip.decompress(base64.b64decode(inner[3:-1]))  # CRC checked
        assert plain.startswith(b"data: ") and not _holds(plain, raw, text)
    else:
        assert ast.literal_eval(inner.decode()).startswith(b"[seedtool: scrubbed]")


# ---- cc_seedtool: only the form seedtool writes is creditable ------------------------------


def _cc() -> Any:
    import importlib

    root = str(REPO / "cloud_init_modules")
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("cc_seedtool")


def _forms(raw: bytes, text: str) -> dict[str, tuple[dict[str, Any], str]]:
    """random_seed as cloud-init hands it over (YAML already loaded) -> the reason."""
    folded = " ".join(text[i:i + 20] for i in range(0, len(text), 20))
    wrapped = _wrap(text, 60) + "\n"
    return {
        "canonical": ({"data": text, "encoding": "b64"}, ""),
        "canonical, file /dev/urandom": (
            {"data": text, "encoding": "b64", "file": "/dev/urandom"}, ""),
        "folded": ({"data": folded, "encoding": "b64"}, "data is not the one-line base64 text"),
        "wrapped": ({"data": wrapped, "encoding": "b64"}, "data is not the one-line base64 text"),
        "base64 spelled out": ({"data": text, "encoding": "base64"},
                               "encoding is 'base64', not 'b64'"),
        "!!binary raw": ({"data": raw, "encoding": "raw"},
                         "data is binary (!!binary); encoding is 'raw', not 'b64'"),
        "!!binary gz": ({"data": gzip.compress(text.encode()), "encoding": "gz"},
                        "data is binary (!!binary); encoding is 'gz', not 'b64'"),
        "raw text": ({"data": text}, "encoding is not set (raw), not 'b64'"),
        "file": ({"data": text, "encoding": "b64", "file": "/root/seed"},
                 "random_seed.file is /root/seed, where seed_random copied it"),
    }


def test_cc_credits_only_the_form_seedtool_writes(env: tuple[bytes, str]) -> None:
    raw, text = env
    cc = _cc()
    for name, (mycfg, reason) in _forms(raw, text).items():
        data = cc._decode(mycfg["data"], mycfg.get("encoding"))
        assert envelope.decode_text(data) == raw, name  # cloud-init reads the envelope
        got = cc._form_problem(mycfg, data)
        assert got == (f"not in the form seedtool writes: {reason}" if reason else ""), name
    # not an envelope: no form problem (core says it is malformed), nothing to scrub
    assert cc._form_problem({"data": "bm90IGFuIGVudmVsb3Bl", "encoding": "gz"}, b"x") == ""


def test_cc_scrubs_nothing_and_says_so_when_nothing_is_ours(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cc = _cc()
    mine = base64.b64encode(hashlib.sha512(b"user's own").digest() * 3).decode()
    cfg = {"random_seed": {"data": mine, "encoding": "b64"}}
    with caplog.at_level("DEBUG", logger="cc_seedtool"):
        cc._scrub(None, cfg, [mine, base64.b64decode(mine), None], None, None)
    assert cfg == {"random_seed": {"data": mine, "encoding": "b64"}}
    assert [r.getMessage() for r in caplog.records] == [
        "seedtool: scrubbed nothing: no seedtool envelope was offered"]
