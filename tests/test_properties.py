"""Hypothesis properties of the parsers, beyond the ones next to each module's tests.

Already elsewhere (not repeated here): sign-then-verify and a bit flip of one fixed
envelope (test_envelope.py), single documents and shell-only multipart surviving a
merge (test_userdata.py), health and mixing properties, arbitrary and mutated bytes
for the partition reader (test_partitions.py).

Here: user-data of every format, generated as a user would write it, keeps every
part and every cloud-config key through `add_seed`; bit flips and character
changes of random envelopes; the validity window; partition tables written by
sfdisk read back the same; policies and public key files round-trip, and invalid
ones are refused; Entropy Key streams deframe the same however they are split, and
tampering never yields a block the device did not send; TPM GetRandom replies are
accepted exactly when well formed.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import string
import struct
import subprocess
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from devtools.ekey_sim import EntropyKeySim
from seedtool.deliver import userdata as ud
from seedtool.guest import policy as pol
from seedtool.image import partitions as pt
from seedtool.keys import public_of
from seedtool.shared import ed25519, envelope
from seedtool.shared.errors import EnvelopeError, SigningKeyError, SourceError
from seedtool.shared.pubkeys import PublicKey, load_public_keys, parse_public_keys, trusted_pairs
from seedtool.sources import entropykey_protocol as ekp
from seedtool.sources import tpm

_KEY = Ed25519PrivateKey.generate()
_PUB = public_of(_KEY)
_TRUSTED = trusted_pairs([_PUB])
NOW = 1_800_000_000
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]


def _envelope(seed: bytes, prov: dict[str, Any], ttl: int = 3600, issued: int = NOW,
              seed_id: bytes = b"\x07" * 16) -> bytes:
    return envelope.build(seed, private_key=_KEY, key_id=_PUB.key_id, seed_id=seed_id,
                          provenance=prov, ttl=ttl, now=issued)


_SEED_TEXT = envelope.encode_text(_envelope(b"\x5a" * 64, {"v": 1}))


# --- user-data: every format, every part, every key ------------------------------------

_word = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=10)
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
                max_size=30)
_scalar = st.one_of(st.integers(-10**6, 10**6), st.booleans(), _text)
_value = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_word, inner, max_size=3)), max_leaves=8)
_cfg_keys = st.sampled_from(["runcmd", "packages", "users", "write_files", "hostname",
                             "bootcmd", "ssh_authorized_keys", "a", "b", "c"])
_user_random_seed = st.fixed_dictionaries({}, optional={
    # any other file is refused: seed_random would leave a copy of the seed there
    "file": st.sampled_from(["/dev/urandom", "/dev/random"]),
    "data": _text,
    "encoding": st.sampled_from(["raw", "b64", "gzip"]),
    "command": st.lists(_word, min_size=1, max_size=3),
    "command_required": st.booleans(),
})


@st.composite
def _cloud_config(draw: st.DrawFn) -> dict[str, Any]:
    cfg: dict[str, Any] = draw(st.dictionaries(_cfg_keys | _word, _value, max_size=5))
    if draw(st.booleans()):
        cfg["random_seed"] = draw(_user_random_seed)
    return cfg


def _yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, allow_unicode=True, sort_keys=False)


_url = st.builds(lambda scheme, host, path: f"{scheme}://{host}.example/{path}",
                 st.sampled_from(["http", "https"]), _word, _word)


@st.composite
def _document(draw: st.DrawFn) -> str:
    """One user-data document of any kind cloud-init recognises by its first line."""
    kind = draw(st.sampled_from(["cloud-config", "script", "boothook", "include",
                                 "include-once", "jinja", "part-handler", "jsonp", "archive"]))
    if kind == "cloud-config":
        return "#cloud-config\n" + _yaml(draw(_cloud_config()))
    if kind == "script":
        return "#!/bin/sh\n" + draw(_text) + "\n"
    if kind == "boothook":
        return "#cloud-boothook\n#!/bin/sh\necho " + draw(_word) + "\n"
    if kind in ("include", "include-once"):
        urls = draw(st.lists(_url | st.just("/srv/local.cfg"), min_size=1, max_size=3))
        return f"#{kind}\n" + "\n".join(urls) + "\n"
    if kind == "jinja":
        return "## template: jinja\n#cloud-config\nhostname: {{ v1.instance_id }}\n" + _yaml(
            draw(st.dictionaries(_word, _scalar, max_size=3)))
    if kind == "part-handler":
        return "#part-handler\ndef list_types():\n    return []\n"
    if kind == "jsonp":
        ops = draw(st.lists(st.builds(lambda k, v: {"op": "add", "path": "/" + k, "value": v},
                                      _word, _scalar), max_size=3))
        return "#cloud-config-jsonp\n" + json.dumps(ops) + "\n"
    entries = draw(st.lists(st.one_of(
        st.builds(lambda c: {"type": "text/cloud-config", "content": _yaml(c)},
                  st.dictionaries(_word, _scalar, max_size=3)),
        st.builds(lambda t: "#!/bin/sh\necho " + t, _word),
        st.builds(lambda c, n: {"content": "#cloud-config\n" + _yaml(c), "filename": n},
                  st.dictionaries(_word, _scalar, max_size=2), _word),
    ), max_size=3))
    return "#cloud-config-archive\n" + _yaml(entries)


_MERGE_TYPES = ["dict(replace)+list()+str()", "dict(recurse_array,no_replace)+list(append)",
                "list(extend)+dict(no_replace,recurse_list)", "dict(allow_delete)+str(append)"]


@st.composite
def _mime_part(draw: st.DrawFn, depth: int) -> Message:
    if depth < 1 and draw(st.integers(0, 5)) == 0:
        # explicit boundaries: email would draw them from `random`, unseen by Hypothesis
        inner = MIMEMultipart(boundary="inner-" + draw(_word))
        for p in draw(st.lists(_mime_part(depth + 1), min_size=1, max_size=2)):
            inner.attach(p)
        return inner
    doc = draw(_document())
    how = draw(st.sampled_from(["labelled", "sniffed", "base64", "gzip"]))
    part: Message
    if how == "gzip":
        part = MIMEApplication(gzip.compress(doc.encode(), mtime=0), "x-gzip")
    else:
        sub = ud.parts(doc.encode())[0].content_type.split("/", 1)[1] if how == "labelled" \
            else "plain"
        part = MIMEText(doc, sub, "utf-8" if how == "base64" or not doc.isascii() else None)
    if draw(st.booleans()):
        part.add_header("Content-Disposition", "attachment", filename=draw(_word) + ".txt")
    if draw(st.booleans()):
        part.add_header("Merge-Type", draw(st.sampled_from(_MERGE_TYPES)))
    if draw(st.integers(0, 4)) == 0:
        part.add_header("Launch-Index", str(draw(st.integers(0, 3))))
    return part


@st.composite
def _user_data(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["single", "multipart"]))
    if shape == "single":
        data = draw(_document()).encode()
        assume(b"mime-version:" not in data[:4096].lower())  # cloud-init would read MIME
    else:
        msg = MIMEMultipart(boundary="outer-" + draw(_word))
        if draw(st.booleans()):
            msg.preamble = "this is a multi-part message"
        for p in draw(st.lists(_mime_part(0), min_size=1, max_size=4)):
            msg.attach(p)
        data = msg.as_bytes()
    return gzip.compress(data, mtime=0) if draw(st.integers(0, 4)) == 0 else data


def _without_seed(cfg: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = dict(cfg or {})
    rs = cfg.pop("random_seed", None)
    return cfg, dict(rs) if isinstance(rs, dict) else {}


@settings(max_examples=120, deadline=None, suppress_health_check=SLOW)
@given(data=_user_data())
def test_merge_then_parse_gives_back_every_user_part_and_key(data: bytes) -> None:
    out = ud.add_seed(data, _SEED_TEXT)
    body = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    # every part, in order, with the same type, bytes, name, merge and launch index
    assert ud.user_parts(out) == ud.parts(body)
    assert len(ud.parts(out)) == len(ud.parts(body)) + 1
    assert ud.find_seed(out) == _SEED_TEXT
    # every cloud-config key the user set merges as before; random_seed keeps the
    # user's other settings and holds our data and encoding
    before, rs_before = _without_seed(ud.merged_cloud_config(body))
    after, rs_after = _without_seed(ud.merged_cloud_config(out))
    assert after == before
    rs_before.pop("data", None)
    rs_before.pop("encoding", None)
    assert rs_after == {**rs_before, "data": _SEED_TEXT, "encoding": "b64"}
    # gzip in, gzip out
    assert (out[:2] == b"\x1f\x8b") == (data[:2] == b"\x1f\x8b")


@settings(max_examples=60, deadline=None, suppress_health_check=SLOW)
@given(data=_user_data())
def test_a_seeded_user_data_is_refused_a_second_seed(data: bytes) -> None:
    out = ud.add_seed(data, _SEED_TEXT)
    with pytest.raises(ud.UserDataRefused, match="already carries a seedtool seed"):
        ud.add_seed(out, _SEED_TEXT)


# --- envelopes ---------------------------------------------------------------------------

_prov = st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=4)


@settings(max_examples=100, deadline=None)
@given(seed=st.binary(min_size=envelope.SEED_MIN, max_size=envelope.SEED_MAX), prov=_prov,
       bit=st.integers(min_value=0))
def test_any_bit_flip_of_any_envelope_fails_verification(seed: bytes, prov: dict[str, Any],
                                                         bit: int) -> None:
    raw = _envelope(seed, prov)
    bit %= 8 * len(raw)
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(EnvelopeError):
        envelope.verify(bytes(flipped), _TRUSTED, now=NOW)
    assert envelope.verify(raw, _TRUSTED, now=NOW).seed == seed


@settings(max_examples=100, deadline=None)
@given(seed=st.binary(min_size=envelope.SEED_MIN, max_size=128), pos=st.integers(0),
       char=st.sampled_from(string.ascii_letters + string.digits + "+/="))
def test_any_changed_character_of_the_text_form_fails(seed: bytes, pos: int, char: str) -> None:
    text = envelope.encode_text(_envelope(seed, {"v": 1}))
    pos %= len(text)
    assume(text[pos] != char)
    changed = text[:pos] + char + text[pos + 1 :]
    try:
        raw = base64.b64decode(changed, validate=True)
    except ValueError:
        raw = b""
    # some changes only touch the padding bits of the last group: the bytes are the same
    assume(raw != base64.b64decode(text))
    with pytest.raises(EnvelopeError):
        envelope.verify(changed, _TRUSTED, now=NOW)


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(1, 200), extra=st.binary(min_size=1, max_size=8))
def test_truncated_or_extended_envelopes_are_malformed(cut: int, extra: bytes) -> None:
    raw = _envelope(b"\x01" * 32, {"v": 1})
    with pytest.raises(envelope.MalformedEnvelope):
        envelope.parse(raw[: max(len(raw) - cut, 0)])
    with pytest.raises(envelope.MalformedEnvelope):
        envelope.parse(raw + extra)


@settings(max_examples=100, deadline=None)
@given(ttl=st.integers(1, envelope.TTL_MAX), skew=st.integers(0, 86400),
       offset=st.integers(-2 * 86400, envelope.TTL_MAX + 2 * 86400))
def test_verification_holds_exactly_inside_the_validity_window(ttl: int, skew: int,
                                                               offset: int) -> None:
    raw = _envelope(b"\x02" * 32, {}, ttl=ttl)
    now = NOW + offset
    inside = NOW - skew <= now <= NOW + ttl + skew
    if inside:
        assert envelope.verify(raw, _TRUSTED, now=now, skew=skew).seed == b"\x02" * 32
    else:
        with pytest.raises((envelope.EnvelopeExpired, envelope.EnvelopeNotYetValid)):
            envelope.verify(raw, _TRUSTED, now=now, skew=skew)


# --- partition tables written by sfdisk ---------------------------------------------------

needs_sfdisk = pytest.mark.skipif(shutil.which("sfdisk") is None,
                                  reason="sfdisk (Debian package fdisk) is not installed")
MiB = 1 << 20
_GPT_TYPES = [pt.GUID_LINUX_DATA, pt.GUID_ROOT_X86_64, pt.GUID_ROOT_ARM64, pt.GUID_ESP,
              pt.GUID_LINUX_LVM, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"]
_MBR_TYPES = [0x83, 0x8E, 0xEF, 0x82, 0x07, 0x0C]


def _sfdisk(img: Path, size: int, script: str) -> list[dict[str, Any]]:
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(img)],
                   input=script.encode(), check=True, capture_output=True)
    out = subprocess.run(["sfdisk", "-J", str(img)], check=True, capture_output=True).stdout
    parts: list[dict[str, Any]] = json.loads(out)["partitiontable"].get("partitions", [])
    return parts


def _theirs(parts: list[dict[str, Any]], gpt: bool) -> list[tuple[int, int, int, str]]:
    return [(int(str(p["node"]).rsplit("img", 1)[1]), int(p["start"]) * 512,
             int(p["size"]) * 512,
             str(p["type"]).lower() if gpt else f"0x{int(str(p['type']), 16):02x}")
            for p in parts]


@needs_sfdisk
@settings(max_examples=20, deadline=None, suppress_health_check=SLOW)
@given(layout=st.lists(st.tuples(st.integers(1, 6), st.sampled_from(_GPT_TYPES), _word),
                       min_size=1, max_size=8))
def test_gpt_written_by_sfdisk_reads_back_the_same(tmp_path_factory: pytest.TempPathFactory,
                                                   layout: list[tuple[int, str, str]]) -> None:
    img = tmp_path_factory.mktemp("gpt") / "disk.img"
    script = "label: gpt\n" + "".join(f"size={mib}M, type={t}, name={name}\n"
                                      for mib, t, name in layout)
    theirs = _sfdisk(img, (sum(m for m, _, _ in layout) + 2) * MiB, script)
    table = pt.read_partitions(img)
    assert table.scheme == "gpt" and table.warnings == ()
    assert [(p.number, p.start, p.size, p.type) for p in table.partitions] == _theirs(
        theirs, gpt=True)
    assert [p.name for p in table.partitions] == [name for _, _, name in layout]
    assert table == pt.parse_bytes(img.read_bytes())


@needs_sfdisk
@settings(max_examples=20, deadline=None, suppress_health_check=SLOW)
@given(primaries=st.lists(st.tuples(st.integers(1, 4), st.sampled_from(_MBR_TYPES)),
                          min_size=1, max_size=3),
       logicals=st.lists(st.tuples(st.integers(1, 3), st.sampled_from(_MBR_TYPES)),
                         max_size=5))
def test_mbr_written_by_sfdisk_reads_back_the_same(
    tmp_path_factory: pytest.TempPathFactory, primaries: list[tuple[int, int]],
    logicals: list[tuple[int, int]],
) -> None:
    img = tmp_path_factory.mktemp("mbr") / "disk.img"
    lines = [f",{mib}M,{t:x}" for mib, t in primaries]
    if logicals:
        lines.append(",,E")
        lines += [f",{mib}M,{t:x}" for mib, t in logicals]
    size = (sum(m for m, _ in primaries) + sum(m + 1 for m, _ in logicals) + 2) * MiB
    theirs = _sfdisk(img, size, "label: dos\n" + "\n".join(lines) + "\n")
    table = pt.read_partitions(img)
    assert table.scheme == "mbr" and table.warnings == ()
    assert [(p.number, p.start, p.size, p.type) for p in table.partitions] == _theirs(
        theirs, gpt=False)
    extended = 1 if logicals else 0
    assert len(table.partitions) == len(primaries) + extended + len(logicals)


# --- the guest policy ----------------------------------------------------------------------

_platform = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)
_valid_policy = st.fixed_dictionaries({}, optional={
    "trusted_keys": st.builds(lambda parts: "/" + "/".join(parts), st.lists(_word, max_size=4)),
    "trusted_platforms": st.lists(_platform, max_size=4),
    "clock_skew": st.integers(0, pol.MAX_CLOCK_SKEW),
    "fail_closed": st.booleans(),
    "credit_datasource": st.booleans(),
})


@settings(max_examples=150, deadline=None)
@given(data=_valid_policy)
def test_valid_policies_round_trip(tmp_path_factory: pytest.TempPathFactory,
                                   data: dict[str, Any]) -> None:
    path = tmp_path_factory.mktemp("policy") / "policy.json"
    path.write_text(json.dumps(data))
    policy = pol.load_policy(path)
    for key, value in data.items():
        got = policy.to_json()[key]
        assert got == (list(dict.fromkeys(value)) if key == "trusted_platforms" else value)
    path.write_text(json.dumps(policy.to_json()))
    assert pol.load_policy(path) == policy


_bad_setting = st.one_of(
    st.tuples(st.just("trusted_keys"), st.one_of(_word, st.integers(), st.none(),
                                                  st.just("/a\x00b"))),
    st.tuples(st.just("trusted_platforms"), st.one_of(
        _word, st.lists(st.integers(), min_size=1),
        st.lists(st.sampled_from(["", "-x", "a b", "open\nstack", "x" * 65, "é"]), min_size=1),
    )),
    st.tuples(st.just("clock_skew"), st.one_of(
        st.integers(max_value=-1), st.integers(min_value=pol.MAX_CLOCK_SKEW + 1),
        st.booleans(), st.floats(0, 10), _word)),
    st.tuples(st.sampled_from(["fail_closed", "credit_datasource"]),
              st.one_of(st.integers(), _word, st.none())),
    st.tuples(_word.filter(lambda w: w not in pol.Policy().to_json()), _scalar),
)


@settings(max_examples=150, deadline=None)
@given(base=_valid_policy, bad=_bad_setting)
def test_invalid_policies_raise_policy_error(tmp_path_factory: pytest.TempPathFactory,
                                            base: dict[str, Any], bad: tuple[str, Any]) -> None:
    path = tmp_path_factory.mktemp("policy") / "policy.json"
    path.write_text(json.dumps({**base, bad[0]: bad[1]}))
    with pytest.raises(pol.PolicyError):
        pol.load_policy(path)


# --- trusted public key files --------------------------------------------------------------

_comment = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl",
                                                                             "Zp")),
                   max_size=20).map(str.strip)


def _public_of_secret(secret: bytes) -> bytes:
    return public_of(Ed25519PrivateKey.from_private_bytes(secret)).raw


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.tuples(st.binary(min_size=32, max_size=32).map(_public_of_secret),
                               _comment), max_size=5),
       noise=st.lists(st.sampled_from(["", "# a comment", "   ", "#seedtool-ed25519 x"]),
                      max_size=3))
def test_public_key_files_round_trip(tmp_path_factory: pytest.TempPathFactory,
                                     keys: list[tuple[bytes, str]], noise: list[str]) -> None:
    want = [PublicKey(raw, comment) for raw, comment in keys]
    text = "\n".join(noise) + "\n" + "".join(k.line() for k in want)
    path = tmp_path_factory.mktemp("keys") / "trusted.pub"
    path.write_text(text, encoding="utf-8")
    assert load_public_keys([path]) == want
    assert parse_public_keys("".join(k.line() for k in want)) == want


@settings(max_examples=100, deadline=None)
@given(line=st.one_of(
    st.builds(lambda n: f"seedtool-ed25519 {base64.b64encode(bytes(n)).decode()}",
              st.integers(0, 64).filter(lambda n: n != 32)),
    st.builds(lambda w: f"{w} {base64.b64encode(bytes(32)).decode()}",
              _word.filter(lambda w: w != "seedtool-ed25519")),
    st.just("seedtool-ed25519"),
    st.just("seedtool-ed25519 not*base64"),
))
def test_lines_that_are_not_keys_are_refused(line: str) -> None:
    good = PublicKey(bytes(range(32))).line()
    with pytest.raises(SigningKeyError, match="line 2"):
        parse_public_keys(good + line + "\n")


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(min_size=32, max_size=32))
def test_a_32_byte_key_is_accepted_exactly_when_usable(raw: bytes) -> None:
    """Curve points of large order only: not a point, or small order (forgeable), is refused."""
    line = f"seedtool-ed25519 {base64.b64encode(raw).decode()}\n"
    if ed25519.usable_public_key(raw):
        assert parse_public_keys(line) == [PublicKey(raw)]
    else:
        with pytest.raises(SigningKeyError, match="no usable Ed25519 key"):
            parse_public_keys(line)


@pytest.mark.parametrize("raw", [bytes(32), b"\x01" + bytes(31)], ids=["zero", "identity"])
def test_small_order_trusted_keys_are_refused(raw: bytes) -> None:
    with pytest.raises(SigningKeyError, match="small order"):
        parse_public_keys(f"seedtool-ed25519 {base64.b64encode(raw).decode()}\n")


# --- Entropy Key frames ----------------------------------------------------------------------

_SERIAL, _LTK = b"prop-serial!", bytes(range(32))


def _honest_stream(nframes: int) -> bytes:
    """What the device sent in an untouched conversation of `nframes` frames."""
    sim = EntropyKeySim(_SERIAL, _LTK)
    host = ekp.HostSession({_SERIAL: _LTK}, lambda n: b"\x11" * n)
    host.start()
    stream = sim.converse(host, nframes)
    assert host.available, "the honest conversation delivered no entropy"
    return stream


_STREAM = _honest_stream(10)


@settings(max_examples=80, deadline=None)
@given(cuts=st.lists(st.integers(0, len(_STREAM)), max_size=30),
       junk=st.binary(max_size=70))
def test_deframing_does_not_depend_on_how_the_stream_is_split(cuts: list[int],
                                                               junk: bytes) -> None:
    data = junk + _STREAM
    whole = [f.raw for f in ekp.Deframer().feed(data)]
    pieces, d, last = [], ekp.Deframer(), 0
    for cut in sorted(cuts) + [len(data)]:
        pieces += [f.raw for f in d.feed(data[last:cut])]
        last = max(last, cut)
    assert pieces == whole
    assert whole[-10:] == [_STREAM[i : i + 64] for i in range(0, len(_STREAM), 64)]


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["pass", "flip", "drop", "dup", "replay"]),
                              st.integers(0, 63), st.integers(1, 255)), min_size=1,
                    max_size=24))
def test_tampering_never_yields_entropy_the_device_did_not_send(
    ops: list[tuple[str, int, int]],
) -> None:
    sim = EntropyKeySim(_SERIAL, _LTK)
    host = ekp.HostSession({_SERIAL: _LTK}, lambda n: b"\x22" * n, max_rejected=1000)
    host.start()
    sent: list[bytes] = []
    out = b""
    for op, i, x in ops:
        sim.host_write(host.take_writes())
        frame = sim.next_frame()
        sent.append(frame)
        feed = {"pass": frame, "drop": b"", "dup": frame + frame,
                "flip": frame[:i] + bytes([frame[i] ^ x]) + frame[i + 1 :],
                "replay": sent[i % len(sent)]}[op]
        try:
            host.receive(feed)
        except SourceError:  # e.g. WrongLongTermKey after a flipped re-key frame: stops
            break
        finally:
            out += host.take_entropy(host.available)
    blocks = [out[k : k + 32] for k in range(0, len(out), 32)]
    assert len(out) % 32 == 0 and len(set(blocks)) == len(blocks)
    assert set(blocks) <= set(sim.sent_entropy)


# --- TPM GetRandom replies -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(requested=st.integers(1, 64), count=st.integers(0, 80), size_delta=st.integers(-3, 3),
       tag=st.sampled_from([tpm.TPM_ST_NO_SESSIONS, tpm.TPM_ST_SESSIONS, 0x00C4, 0x1234]))
def test_get_random_replies_are_accepted_exactly_when_well_formed(
    requested: int, count: int, size_delta: int, tag: int,
) -> None:
    body = struct.pack(">H", count) + bytes(range(count))
    reply = struct.pack(">HII", tag, 10 + len(body) + size_delta, 0) + body
    good = (tag == tpm.TPM_ST_NO_SESSIONS and size_delta == 0 and 1 <= count <= requested)
    try:
        tpm.parse_header(reply, "a TPM")
        got = tpm.parse_get_random(reply, requested, "a TPM")
    except tpm.TpmError:
        assert not good
    else:
        assert good and got == bytes(range(count))
