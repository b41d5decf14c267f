"""Fast tests for `seedtool.deliver.userdata` and `seedtool userdata`.

Every user part must come out of cloud-init's way of reading user-data with the same
type, bytes and headers, and `find_seed` must give back exactly the envelope added.
The proof with cloud-init's own code is in test_userdata_cloudinit.py.
"""

from __future__ import annotations

import base64
import email
import gzip
import json
import os
import re
import stat
import subprocess
import sys
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seedtool.deliver import userdata as ud
from seedtool.generate import SeedFactory
from seedtool.shared import envelope
from seedtool.shared.errors import DeliveryError, EnvelopeError

_FACTORY = SeedFactory(Ed25519PrivateKey.generate())


def fresh() -> str:
    return _FACTORY.new().text


def gunzip(b: bytes) -> bytes:
    return gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b


SINGLE_DOCS: dict[str, bytes] = {
    "cloud-config": b"#cloud-config\npackages: [vim]\nruncmd:\n  - [touch, /tmp/x]\n",
    "script": b"#!/bin/sh\necho 'hello from user' > /tmp/hello\n",
    "include": b"#include\nhttps://example.invalid/a.cfg\n# comment\n\n/srv/local.cfg\n",
    "include-once": b"#include-once\nfile:///srv/once.cfg\n",
    "boothook": b"#cloud-boothook\n#!/bin/sh\necho boot > /run/bh\n",
    "jinja-cloud-config": b"## template: jinja\n#cloud-config\nhostname: {{ v1.instance_id }}\n",
    "jinja-script": b"## template: jinja\n#!/bin/sh\necho {{ v1.instance_id }}\n",
    "archive": b"#cloud-config-archive\n- type: text/cloud-config\n  content: 'a: 1'\n"
    b"- '#!/bin/sh\n\n  echo x'\n",
    "part-handler": b"#part-handler\ndef list_types():\n    return []\n",
    "jsonp": b'#cloud-config-jsonp\n[{"op": "add", "path": "/a", "value": 1}]\n',
    "cloud-config-crlf": b"#cloud-config\r\nruncmd:\r\n  - [echo, hi]\r\n",
    "script-no-final-newline": b"#!/bin/sh\necho no newline",
    "script-ends-cr": b"#!/bin/sh\necho cr\r",
    "script-utf8": "#!/bin/sh\necho 'grüße, 世界'\n".encode(),
    "leading-space-header": b"  \n #CLOUD-CONFIG\nhostname: up\n",
    # cloud-init reads these as MIME (mime-version: in the first 4 KB): one part each
    "script-mentions-mime-version": b'#!/bin/sh\necho "MIME-Version: 1.0"\n',
    "cloud-config-mentions-mime-version": b"#cloud-config\n# mime-version: no\nruncmd: [[a]]\n",
    "one-part-mime": b"MIME-Version: 1.0\nContent-Type: text/x-shellscript\nX-Custom: kept\n\n"
    b"#!/bin/sh\necho one part\n",
}


def multipart(*parts: email.message.Message, boundary: str = "XyZ") -> bytes:
    msg = MIMEMultipart(boundary=boundary)
    for p in parts:
        msg.attach(p)
    return msg.as_bytes()


# --- no user-data -------------------------------------------------------------------


@pytest.mark.parametrize("given_", [None, b"", b"\n \n"])
def test_no_user_data_gives_a_plain_cloud_config_with_only_the_seed(given_: bytes | None) -> None:
    seed = fresh()
    out = ud.add_seed(given_, seed)
    assert out == f'#cloud-config\nrandom_seed:\n  data: "{seed}"\n  encoding: b64\n'.encode()
    assert ud.find_seed(out) == seed
    assert ud.user_parts(out) == []
    assert ud.check(given_) == "none"


# --- single documents: wrapped, byte for byte -----------------------------------------


@pytest.mark.parametrize("name", sorted(SINGLE_DOCS))
def test_every_single_document_survives_byte_for_byte(name: str) -> None:
    doc = SINGLE_DOCS[name]
    seed = fresh()
    out = ud.add_seed(doc, seed)
    before = ud.parts(doc)
    assert len(before) == 1
    assert ud.user_parts(out) == before
    assert ud.parts(out)[0].payload == (
        doc if not name.endswith("mime") else doc.split(b"\n\n", 1)[1]
    )
    assert ud.find_seed(out) == seed
    # the seed part is the last part and the only one holding the seed
    assert len(ud.parts(out)) == 2
    assert ud.parts(out)[-1].filename == ud.SEED_PART_NAME
    assert out.count(seed.encode()) == 1


@pytest.mark.parametrize("name", ["script", "script-ends-cr", "cloud-config-crlf",
                                  "script-no-final-newline"])
def test_ascii_documents_are_carried_as_plain_text(name: str) -> None:
    doc = SINGLE_DOCS[name]
    out = ud.add_seed(doc, fresh())
    assert doc in out and b"Content-Transfer-Encoding" not in out


def test_other_documents_are_carried_in_base64() -> None:
    utf8 = SINGLE_DOCS["script-utf8"]
    out = ud.add_seed(utf8, fresh())
    assert b"Content-Transfer-Encoding: base64" in out
    assert base64.b64encode(utf8)[:40] in out.replace(b"\n", b"")


def test_detected_types_match_cloud_init_first_lines() -> None:
    assert ud.check(SINGLE_DOCS["cloud-config"]) == "text/cloud-config"
    assert ud.check(SINGLE_DOCS["archive"]) == "text/cloud-config-archive"
    assert ud.check(SINGLE_DOCS["jsonp"]) == "text/cloud-config-jsonp"
    assert ud.check(SINGLE_DOCS["include-once"]) == "text/x-include-once-url"
    assert ud.check(SINGLE_DOCS["jinja-script"]) == "text/jinja2"
    assert ud.check(SINGLE_DOCS["leading-space-header"]) == "text/cloud-config"
    assert ud.check(SINGLE_DOCS["one-part-mime"]) == "mime"


def test_headers_of_a_one_part_mime_message_are_kept() -> None:
    out = ud.add_seed(SINGLE_DOCS["one-part-mime"], fresh())
    assert b"X-Custom: kept\n" in out
    assert ud.user_parts(out)[0].content_type == "text/x-shellscript"


# --- MIME multipart: one part inserted, nothing else touched -------------------------


def _split_at_close(doc: bytes, boundary: bytes) -> tuple[bytes, bytes]:
    i = doc.index(b"--" + boundary + b"--")
    return doc[:i], doc[i:]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_multipart_keeps_every_byte_and_inserts_before_the_closing_delimiter(eol: bytes) -> None:
    lines = [
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="BND"',
        b"X-Top: stays",
        b"",
        b"This is the preamble.",
        b"--BND",
        b"Content-Type: text/cloud-config; charset=\"us-ascii\"",
        b"Merge-Type: list(append)+dict(recurse_array)+str()",
        b'Content-Disposition: attachment; filename="a.cfg"',
        b"",
        b"#cloud-config",
        b"runcmd: [[echo, a]]",
        b"",
        b"--BND",
        b"Content-Type: text/x-shellscript",
        b"Content-Transfer-Encoding: base64",
        b"",
        base64.b64encode(b"#!/bin/sh\necho b\n"),
        b"--BND--",
        b"epilogue stays",
        b"",
    ]
    doc = eol.join(lines)
    seed = fresh()
    out = ud.add_seed(doc, seed)
    head, tail = _split_at_close(doc, b"BND")
    assert out.startswith(head) and out.endswith(tail)
    inserted = out[len(head) : len(out) - len(tail)]
    assert inserted.startswith(b"--BND" + eol)
    assert inserted.count(eol) == inserted.count(b"\n")  # same line ending as the input
    assert ud.user_parts(out) == ud.parts(doc)
    assert [p.filename for p in ud.parts(out)] == ["a.cfg", None, ud.SEED_PART_NAME]
    assert ud.find_seed(out) == seed


def test_multipart_without_closing_delimiter_gets_one() -> None:
    doc = (
        b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
        b"--b\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho x\n"
    )
    seed = fresh()
    out = ud.add_seed(doc, seed)
    assert out.startswith(doc)
    assert out.rstrip().endswith(b"--b--")
    assert ud.user_parts(out) == ud.parts(doc)
    assert ud.find_seed(out) == seed


def test_nested_multipart_and_gzip_parts_survive() -> None:
    inner = MIMEMultipart("alternative", boundary="inner")
    inner.attach(MIMEText("#cloud-config\nhostname: nested\n", "cloud-config"))
    gz = MIMEApplication(gzip.compress(b"#!/bin/sh\necho gz\n", mtime=0), "gzip")
    gz.add_header("Merge-Type", "dict(replace)")
    doc = multipart(inner, gz, MIMEText("#!/bin/sh\necho 3\n", "x-shellscript"))
    out = ud.add_seed(doc, fresh())
    head, tail = _split_at_close(doc, b"XyZ")
    assert out.startswith(head) and out.endswith(tail)
    before = ud.parts(doc)
    assert [p.content_type for p in before] == [
        "text/cloud-config", "text/x-shellscript", "text/x-shellscript",
    ]
    assert before[1].payload == b"#!/bin/sh\necho gz\n"
    assert before[1].merge_type is None  # cloud-init drops it when it gunzips a part
    assert ud.user_parts(out) == before


def test_gzip_input_gives_gzip_output_holding_the_same_parts() -> None:
    doc = SINGLE_DOCS["cloud-config"]
    seed = fresh()
    out = ud.add_seed(gzip.compress(doc), seed)
    assert out[:2] == b"\x1f\x8b"
    assert ud.user_parts(out) == ud.parts(doc)
    assert ud.find_seed(out) == seed
    plain = ud.add_seed(gzip.compress(doc), seed, compress="never")
    assert plain == gunzip(out)
    mime = multipart(MIMEText("#!/bin/sh\necho z\n", "x-shellscript"))
    out2 = ud.add_seed(gzip.compress(mime), seed)
    assert gunzip(out2).startswith(_split_at_close(mime, b"XyZ")[0])


def test_output_is_deterministic_apart_from_the_seed() -> None:
    doc = SINGLE_DOCS["script"]
    seed = fresh()
    assert ud.add_seed(doc, seed) == ud.add_seed(doc, seed)
    assert ud.add_seed(doc, seed, compress="always") == ud.add_seed(doc, seed, compress="always")
    other = fresh()
    a, b = ud.add_seed(doc, seed), ud.add_seed(doc, other)
    sid_a = envelope.parse(seed).seed_id_hex
    sid_b = envelope.parse(other).seed_id_hex
    assert a.replace(seed.encode(), b"S").replace(sid_a.encode(), b"I") == b.replace(
        other.encode(), b"S"
    ).replace(sid_b.encode(), b"I")


def test_boundary_avoids_text_the_user_data_contains() -> None:
    seed = fresh()
    sid = envelope.parse(seed).seed_id_hex
    doc = f"#!/bin/sh\n# --seedtool-{sid}\necho\n".encode()
    out = ud.add_seed(doc, seed)
    assert f'boundary="seedtool-{sid}-1"'.encode() in out
    assert ud.user_parts(out) == ud.parts(doc)


# --- the user's own random_seed ------------------------------------------------------


def test_user_random_seed_keeps_file_and_command_and_our_data_wins() -> None:
    doc = (
        b"#cloud-config\nrandom_seed:\n  file: /dev/urandom\n  data: my-static-data\n"
        b"  encoding: raw\n  command: [sh, -c, 'echo re-seeded']\n  command_required: true\n"
    )
    seed = fresh()
    out = ud.add_seed(doc, seed)
    assert ud.find_seed(out) == seed
    assert ud.user_parts(out)[0].payload == doc
    assert ud.merged_cloud_config(out) == {
        "random_seed": {
            "file": "/dev/urandom",
            "data": seed,
            "encoding": "b64",
            "command": ["sh", "-c", "echo re-seeded"],
            "command_required": True,
        }
    }


def test_the_users_other_keys_are_untouched_by_the_seed_part() -> None:
    doc = multipart(
        MIMEText("#cloud-config\nruncmd: [[echo, a]]\nwrite_files: [{path: /a}]\n",
                 "cloud-config"),
        MIMEText("#cloud-config\nruncmd: [[echo, b]]\nusers: [default]\n", "cloud-config"),
    )
    before = ud.merged_cloud_config(doc)
    assert before == {"runcmd": [["echo", "b"]], "write_files": [{"path": "/a"}],
                      "users": ["default"]}
    seed = fresh()
    after = ud.merged_cloud_config(ud.add_seed(doc, seed))
    assert after == {**before, "random_seed": {"data": seed, "encoding": "b64"}}


def test_random_seed_in_a_later_replace_part_is_still_overridden_by_ours() -> None:
    doc = multipart(
        MIMEText("#cloud-config\nrandom_seed: {data: one}\n", "cloud-config"),
        MIMEText("#cloud-config\nrandom_seed: {file: /dev/random, data: two}\n",
                 "cloud-config"),
    )
    seed = fresh()
    assert ud.find_seed(ud.add_seed(doc, seed)) == seed
    assert ud.find_seed(doc) == "two"  # cloud-init's default merge: later part replaces


@pytest.mark.parametrize(
    "doc, words",
    [
        (b"#cloud-config\nrandom_seed:\n", "other than a mapping"),
        (b"#cloud-config\nrandom_seed: some-text\n", "other than a mapping"),
        (b"#cloud-config\nrandom_seed:\n  data: 12345\n", "other than a string"),
        (b"#cloud-config\nrandom_seed:\n  data:\n", "other than a string"),
    ],
)
def test_random_seed_that_would_swallow_ours_is_refused(doc: bytes, words: str) -> None:
    with pytest.raises(ud.UserDataRefused, match=words):
        ud.add_seed(doc, fresh())


@pytest.mark.parametrize("target", ["/var/tmp/seed", "/dev/null", "", "urandom"])
def test_random_seed_file_other_than_the_kernel_devices_is_refused(target: str) -> None:
    """cloud-init's seed_random appends random_seed.data to random_seed.file: a
    regular file there would keep the seed; check and add_seed refuse alike."""
    doc = multipart(
        MIMEText("#!/bin/sh\necho hi\n", "x-shellscript"),
        MIMEText(f"#cloud-config\nrandom_seed: {{file: '{target}', command: [true]}}\n",
                 "cloud-config"),
    )
    with pytest.raises(ud.UserDataRefused, match="part 2 sets random_seed.file") as e:
        ud.add_seed(doc, fresh())
    assert "remove random_seed.file" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ud.UserDataRefused, match="random_seed.file"):
        ud.check(doc)
    for device in ud.SEED_DEVICES:
        ok = doc.replace(f"'{target}'".encode(), device.encode())
        assert ud.find_seed(ud.add_seed(ok, seed := fresh())) == seed


def test_user_data_that_already_carries_a_seed_is_refused() -> None:
    once = ud.add_seed(SINGLE_DOCS["script"], fresh())
    with pytest.raises(ud.UserDataRefused, match="already carries a seedtool seed"):
        ud.add_seed(once, fresh())
    plain = ud.add_seed(None, fresh())
    with pytest.raises(ud.UserDataRefused, match="already carries a seedtool seed"):
        ud.add_seed(plain, fresh())


# --- limits -------------------------------------------------------------------------


def _script_of_size(n: int, compressible: bool) -> bytes:
    head = b"#!/bin/sh\n"
    if compressible:
        body = (b"echo same line again\n" * (n // 21 + 1))[: n - len(head)]
    else:
        body = base64.b64encode(os.urandom(n))[: n - len(head)]
    return head + body


def test_aws_output_is_gzipped_only_when_it_must_be() -> None:
    seed = fresh()
    small = _script_of_size(4000, compressible=True)
    assert ud.add_seed(small, seed, target="aws")[:2] != b"\x1f\x8b"
    overhead = len(ud.add_seed(small, seed)) - len(small)
    exact = _script_of_size(16384 - overhead, compressible=True)
    out = ud.add_seed(exact, seed, target="aws")
    assert len(out) == 16384 and out[:2] != b"\x1f\x8b"
    over = _script_of_size(16384 - overhead + 1, compressible=True)
    out = ud.add_seed(over, seed, target="aws")
    assert out[:2] == b"\x1f\x8b" and len(out) <= 16384
    assert ud.find_seed(out) == seed
    assert ud.user_parts(out) == ud.parts(over)


def test_what_cannot_fit_even_gzipped_is_refused_naming_limit_and_size() -> None:
    big = _script_of_size(40000, compressible=False)
    with pytest.raises(ud.UserDataTooLarge) as e:
        ud.add_seed(big, fresh(), target="aws")
    msg = str(e.value)
    assert "16384" in msg and re.search(r"is \d{5} bytes \(\d{5} gzipped\)", msg)
    assert "\n" not in msg
    with pytest.raises(ud.UserDataTooLarge):
        ud.add_seed(_script_of_size(20000, compressible=True), fresh(), target="aws",
                    compress="never")
    ud.add_seed(big, fresh(), target="raw")  # no limit


def test_gce_limit_counts_the_base64_of_gzip() -> None:
    seed = fresh()
    big = _script_of_size(300_000, compressible=True)
    out = ud.add_seed(big, seed, target="gce")
    assert out[:2] == b"\x1f\x8b"
    meta = ud.gce_metadata(out)
    assert meta["user-data-encoding"] == "base64"
    assert len(meta["user-data"]) <= 256 * 1024
    assert ud.find_seed(base64.b64decode(meta["user-data"])) == seed
    text = ud.add_seed(SINGLE_DOCS["script"], seed, target="gce")
    assert ud.gce_metadata(text) == {"user-data": text.decode()}
    with pytest.raises(ud.UserDataTooLarge, match="262144"):
        ud.add_seed(_script_of_size(300_000, compressible=False), seed, target="gce")


def test_build_reports_what_it_did_without_the_seed() -> None:
    seed = fresh()
    res = ud.build(gzip.compress(SINGLE_DOCS["cloud-config"]), seed, target="aws")
    s = res.summary()
    assert s == {
        "input_format": "text/cloud-config",
        "user_parts": 1,
        "gzipped": True,
        "target": "aws",
        "limit": 16384,
        "size": len(res.data),
    }
    assert seed not in json.dumps(s)


# --- refusals -----------------------------------------------------------------------

SECRET = "hunter2-user-password"


@pytest.mark.parametrize(
    "doc, words",
    [
        (f"just text {SECRET}\n".encode(), "no header cloud-init recognises"),
        (b"\xff\xfe#!/bin/sh\n", "no header cloud-init recognises"),
        (f"#cloud-config\n- {SECRET}\n- b\n".encode(), "not a\\s+mapping"),
        (f"#cloud-config\npassword: {SECRET}\n  bad: [\n".encode(), "not valid YAML at line"),
        (b"#cloud-config-archive\na: 1\n", "not a YAML list"),
        (b"#cloud-config-jsonp\n{not json}\n", "not a JSON patch"),
        (b"#include\nnot a url\n", "line 2 of the user-data"),
        (b"\x1f\x8b\x08\x00garbage", "does not decompress"),
        (gzip.compress(b"#!/bin/sh\n")[:-6], "does not decompress"),
        (b"MIME-Version: 1.0\nContent-Type: multipart/mixed\n\n", "without a boundary"),
        (b"MIME-Version: 1.0\nContent-Type: text/plain\n\n\xff\n", "not UTF-8"),
    ],
)
def test_input_that_is_not_what_its_header_says_is_refused(doc: bytes, words: str) -> None:
    with pytest.raises(ud.UserDataRefused, match=words) as e:
        ud.add_seed(doc, fresh())
    assert SECRET not in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ud.UserDataRefused):
        ud.check(doc)


def test_bad_parts_inside_multipart_are_refused_by_number() -> None:
    doc = multipart(
        MIMEText("#!/bin/sh\necho ok\n", "x-shellscript"),
        MIMEText("#cloud-config\n[1, 2]\n", "cloud-config"),
    )
    with pytest.raises(ud.UserDataRefused, match="part 2 says #cloud-config"):
        ud.add_seed(doc, fresh())
    fake_gz = MIMEApplication(b"not gzip", "gzip")
    with pytest.raises(ud.UserDataRefused, match="not gzip data"):
        ud.add_seed(multipart(fake_gz), fresh())


def test_archive_entries_are_checked() -> None:
    doc = b"#cloud-config-archive\n- type: text/cloud-config\n  content: '- a'\n"
    with pytest.raises(ud.UserDataRefused, match="entry 1 of the archive"):
        ud.add_seed(doc, fresh())


def test_gzip_bomb_is_refused() -> None:
    bomb = gzip.compress(b"#!/bin/sh\n" + b"\0" * (ud.MAX_DECOMPRESSED + 1))
    with pytest.raises(ud.UserDataRefused, match="decompresses to more than"):
        ud.add_seed(bomb, fresh())


def test_bad_seed_or_options_are_refused() -> None:
    with pytest.raises(DeliveryError, match="not base64"):
        ud.add_seed(None, "not base64 at all!")
    with pytest.raises(EnvelopeError):
        ud.add_seed(None, base64.b64encode(b"x" * 64).decode())
    with pytest.raises(DeliveryError, match="unknown target"):
        ud.add_seed(None, fresh(), target="azure")
    with pytest.raises(DeliveryError, match="unknown compress"):
        ud.add_seed(None, fresh(), compress="zstd")


def test_find_seed_of_user_data_without_one_is_none() -> None:
    assert ud.find_seed(None) is None
    assert ud.find_seed(SINGLE_DOCS["script"]) is None
    assert ud.find_seed(b"#cloud-config\nrandom_seed: {file: /dev/urandom}\n") is None


def test_find_seed_follows_merge_headers_and_skips_broken_parts() -> None:
    keep = MIMEText("#cloud-config\nrandom_seed: {data: first}\n", "cloud-config")
    later = MIMEText("#cloud-config\nrandom_seed: {data: second}\n", "cloud-config")
    later.add_header("Merge-Type", "dict(no_replace)+list()+str()")
    assert ud.find_seed(multipart(keep, later)) == "first"
    broken = MIMEText("#cloud-config\nrandom_seed: {data: third}\n", "cloud-config")
    broken.add_header("Merge-Type", "nonsense")
    assert ud.find_seed(multipart(keep, broken)) == "first"
    appended = MIMEText("#cloud-config\nrandom_seed: {data: -x}\n", "cloud-config")
    appended.add_header("Merge-Type", "dict(no_replace,recurse_str)+str(append)")
    assert ud.find_seed(multipart(keep, appended)) == "first-x"


# --- property tests -----------------------------------------------------------------

_HEADERS = [
    "#cloud-config\n", "#!/bin/sh\n", "#cloud-boothook\n", "## template: jinja\n",
    "#part-handler\n", "#!/usr/bin/env python3\n", "#include\n",
]
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300
)
_lines = st.lists(
    st.tuples(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                             blacklist_characters="\r\n"), max_size=40),
              st.sampled_from(["\n", "\r\n", "\r", ""])),
    max_size=12,
).map(lambda ls: "".join(a + b for a, b in ls))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.sampled_from(_HEADERS[1:5]), body=st.one_of(_text, _lines),
       gz=st.booleans())
def test_random_single_documents_survive(header: str, body: str, gz: bool) -> None:
    doc = (header + body).encode("utf-8")
    if b"mime-version:" in doc[:4096].lower():
        return  # cloud-init would read it as MIME; covered by the MIME tests
    seed = fresh()
    out = ud.add_seed(gzip.compress(doc) if gz else doc, seed)
    assert ud.user_parts(out) == ud.parts(doc)
    assert ud.user_parts(out)[0].payload == doc
    assert ud.find_seed(out) == seed


_ctypes = st.sampled_from(
    ["x-shellscript", "cloud-boothook", "plain", "x-shellscript-per-boot", "jinja2"]
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.tuples(_ctypes, _text, st.booleans(), st.booleans()), min_size=1,
                   max_size=5),
    preamble=st.booleans(),
)
def test_random_multipart_user_data_survives_byte_for_byte(
    parts: list[tuple[str, str, bool, bool]], preamble: bool
) -> None:
    msg = MIMEMultipart()
    if preamble:
        msg.preamble = "preamble text"
    msg.epilogue = "epilogue text"
    for i, (sub, text, named, b64) in enumerate(parts):
        p = MIMEText("#!/bin/sh\n" + text, sub, "utf-8" if b64 else None)
        if named:
            p.add_header("Content-Disposition", "attachment", filename=f"p{i}.sh")
        msg.attach(p)
    doc = msg.as_bytes()
    seed = fresh()
    out = ud.add_seed(doc, seed)
    boundary = msg.get_boundary()
    assert boundary is not None
    head, tail = _split_at_close(doc, boundary.encode())
    assert out.startswith(head) and out.endswith(tail)
    assert ud.user_parts(out) == ud.parts(doc)
    assert ud.find_seed(out) == seed


@settings(max_examples=50, deadline=None)
@given(nbytes=st.integers(min_value=envelope.SEED_MIN, max_value=envelope.SEED_MAX))
def test_find_seed_gives_back_exactly_the_envelope(nbytes: int) -> None:
    with SeedFactory(Ed25519PrivateKey.generate(), nbytes=nbytes) as f:
        seed = f.new().text
    script = multipart(MIMEText("#!/bin/sh\n", "x-shellscript"))
    for doc in (None, SINGLE_DOCS["cloud-config"], script):
        assert ud.find_seed(ud.add_seed(doc, seed)) == seed


# --- the command --------------------------------------------------------------------


def _run(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "seedtool", *args], input=stdin, capture_output=True,
        check=False, timeout=120,
    )


@pytest.fixture
def key(tmp_path: Path) -> Path:
    r = _run(["keygen", "-o", str(tmp_path / "k.key")])
    assert r.returncode == 0, r.stderr
    return tmp_path / "k.key"


def test_command_writes_0600_and_prints_only_the_seed_id(key: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.cfg"
    src.write_bytes(SINGLE_DOCS["cloud-config"])
    out = tmp_path / "out.ud"
    r = _run(["userdata", "--key", str(key), "--in", str(src), "-o", str(out),
              "--target", "aws"])
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = out.read_bytes()
    seed = ud.find_seed(data)
    assert seed is not None
    sid = envelope.parse(seed).seed_id_hex
    assert r.stdout == b""
    assert sid.encode() in r.stderr and seed.encode() not in r.stderr
    assert ud.user_parts(data) == ud.parts(SINGLE_DOCS["cloud-config"])


def test_command_json_summary_and_pipes(key: Path, tmp_path: Path) -> None:
    r = _run(["userdata", "--key", str(key), "--in", "-", "--json", "--bytes", "32"],
             stdin=gzip.compress(SINGLE_DOCS["script"]))
    assert r.returncode == 0, r.stderr
    assert r.stdout[:2] == b"\x1f\x8b"
    seed = ud.find_seed(r.stdout)
    assert seed is not None
    summary = json.loads(r.stderr)
    assert summary["seed_id"] == envelope.parse(seed).seed_id_hex
    assert summary["user_data"]["gzipped"] is True
    assert summary["bytes"] == 32
    assert seed not in r.stderr.decode()
    out = tmp_path / "o"
    r = _run(["userdata", "--key", str(key), "-o", str(out), "--json"])
    assert json.loads(r.stdout)["user_data"]["input_format"] == "none"


def test_command_refuses_bad_input_before_making_a_seed(key: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    r = _run(["userdata", "--key", str(key), "--in", "-", "-o", str(out)], stdin=b"hello\n")
    assert r.returncode == 1
    assert r.stderr.count(b"\n") == 1 and b"no header cloud-init recognises" in r.stderr
    assert not out.exists()
    r = _run(["userdata", "--key", str(key), "--in", str(tmp_path / "missing")])
    assert r.returncode == 1 and b"cannot read user-data" in r.stderr
