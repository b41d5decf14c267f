"""Every finding of the fuzz targets (fuzz/), kept as a test with its minimised input.

Each test states what went wrong before the fix and asserts the fixed behaviour on
the parser itself, then replays the input through its fuzz target, whose invariants
must hold (the target raises AssertionError or an untyped exception otherwise).
Inputs are inline; longer ones live in tests/fuzz_corpus/. See fuzz/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz import fuzz_partitions, fuzz_policy, fuzz_userdata
from seedtool.deliver import userdata as ud
from seedtool.deliver.userdata import UserDataRefused
from seedtool.guest.policy import PolicyError, policy_from_mapping
from seedtool.image import partitions as pt
from seedtool.shared.errors import SeedtoolError

CORPUS = Path(__file__).with_name("fuzz_corpus")


def replay(target: object, data: bytes) -> None:
    """Run one input through a fuzz target as the fuzzer does."""
    try:
        target.test_one_input(data)  # type: ignore[attr-defined]
    except SeedtoolError:
        pass


# --- user-data ---------------------------------------------------------------------------

_NAMED_LIKE_SEED = (
    b'Content-Type: multipart/mixed; boundary="B"\nMIME-Version: 1.0\n\n'
    b"--B\nContent-Type: text/cloud-config\n"
    b'Content-Disposition: attachment; filename="seedtool-seed.cfg"\n\n'
    b"#cloud-config\nrandom_seed:\n  data: not-an-envelope\n"
    b"--B--\n"
)


def test_a_user_part_named_like_the_seed_part_is_still_a_user_part() -> None:
    # Found by the userdata target (fuzz/README.md, finding U1): user_parts dropped
    # any cloud-config part called seedtool-seed.cfg, so after add_seed the user's own
    # part of that name was no longer reported among the user's parts.
    out = ud.add_seed(_NAMED_LIKE_SEED, fuzz_userdata.SEED)
    assert ud.user_parts(out) == ud.parts(_NAMED_LIKE_SEED)
    assert len(ud.user_parts(out)) == 1
    assert ud.find_seed(out) == fuzz_userdata.SEED
    replay(fuzz_userdata, _NAMED_LIKE_SEED)


@pytest.mark.parametrize("doc", [
    b"#cloud-config\n" + b"[" * 1000,
    b"#cloud-config\na: " + b"{a: " * 1000,
    b"#cloud-config-archive\n" + b"- " * 1000,
], ids=["flow-lists", "flow-maps", "archive-of-lists"])
def test_yaml_nested_too_deeply_is_refused_not_a_recursion_error(doc: bytes) -> None:
    # Finding U2: PyYAML's recursive composer raised RecursionError out of check,
    # find_seed and add_seed.
    with pytest.raises(UserDataRefused, match="nests too deeply"):
        ud.check(doc)
    if doc.startswith(b"#cloud-config-archive"):
        # an archive must be read to find cloud-config in it: refused, as any
        # unreadable archive already was
        with pytest.raises(UserDataRefused, match="nests too deeply"):
            ud.find_seed(doc)
    else:
        assert ud.find_seed(doc) is None  # cloud-init skips an unreadable part
    with pytest.raises(UserDataRefused):
        ud.add_seed(doc, fuzz_userdata.SEED)


@pytest.mark.parametrize("entry, before", [
    (b"- content: 99999999999999", "MemoryError"),
    (b"- content: [1, 300]", "ValueError"),
    (b"- content: {a: 1}", "TypeError"),
    (b"- content: -1", "ValueError"),
    (b"- content: null", "TypeError"),
    (b"- content: 5", "five NUL bytes read as YAML"),
    (b'- "\\ud800"', "UnicodeEncodeError"),
    (b"- {type: 5, content: a}", "a part of type '5'"),
    (b"- {type: cloud-config, content: 'a: 1'}", "a part of type 'cloud-config'"),
    (b"- {filename: 5, content: 'a: 1'}", "an int file name"),
    (b"- {content: 'a: 1', 7: x}", "an int header name"),
])
def test_archive_entries_cloud_init_cannot_use_are_refused(entry: bytes, before: str) -> None:
    # Finding U3: entries of a #cloud-config-archive whose content is not text went
    # through bytes(content) (`before` says what that did); cloud-init's
    # _explode_archive fails on such entries and on a type without '/', a file
    # name or a header name that is not a string.
    doc = b"#cloud-config-archive\n" + entry + b"\n"
    with pytest.raises(UserDataRefused, match="entry 1 of the archive"):
        ud.check(doc)
    assert ud.find_seed(doc) is None
    assert [p.content_type for p in ud.parts(doc)] == ["text/cloud-config-archive"]
    replay(fuzz_userdata, doc)


def test_good_archive_entries_still_pass() -> None:
    doc = (b"#cloud-config-archive\n- {type: text/cloud-config, content: 'a: 1', "
           b"filename: a.cfg, X-Extra: kept}\n- '#!/bin/sh\n\n  echo x'\n"
           b"- content: !!binary I2Nsb3VkLWNvbmZpZwpiOiAy\n")
    assert ud.check(doc) == "text/cloud-config-archive"
    assert ud.merged_cloud_config(doc) == {"a": 1, "b": 2}


@pytest.mark.parametrize("line", [b"https://]", b"http://[::1", b"https://[x]/a"])
def test_include_line_that_urlsplit_rejects_is_refused(line: bytes) -> None:
    # Finding U6 (userdata target): urlsplit raised ValueError ("Invalid IPv6 URL")
    # out of check for an #include line such as "https://]".
    doc = b"#include\n" + line + b"\n"
    with pytest.raises(UserDataRefused, match="line 2 of the user-data"):
        ud.check(doc)
    assert ud.check(b"#include\nhttps://[::1]/a.cfg\n") == "text/x-include-url"
    replay(fuzz_userdata, doc)


def test_random_seed_encoding_that_is_not_a_string_is_refused() -> None:
    # Finding U5 (a property in test_properties.py): the seed part's merge keeps a
    # user's random_seed.encoding that is null or a number, so cloud-init's
    # seed_random got encoding 5 (it calls .lower() on it) or none at all.
    for value in (b"5", b"null", b"true", b"[b64]"):
        doc = b"#cloud-config\nrandom_seed: {file: /dev/urandom, encoding: " + value + b"}\n"
        with pytest.raises(UserDataRefused, match="random_seed.encoding"):
            ud.add_seed(doc, fuzz_userdata.SEED)
    out = ud.add_seed(b"#cloud-config\nrandom_seed: {encoding: raw}\n", fuzz_userdata.SEED)
    assert ud.merged_cloud_config(out) == {
        "random_seed": {"data": fuzz_userdata.SEED, "encoding": "b64"}}


def _alias_bomb(levels: int) -> bytes:
    lines = ["#cloud-config", "l0: &l0 {a: 1, b: 2}"]
    lines += [f"l{i}: &l{i} {{a: *l{i - 1}, b: *l{i - 1}}}" for i in range(1, levels + 1)]
    doc = "\n".join([*lines, f"x: *l{levels}"]) + "\n"
    return (
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=B\n\n"
        f"--B\nContent-Type: text/cloud-config\n\n{doc}"
        f"--B\nContent-Type: text/cloud-config\nMerge-Type: dict(no_replace)+list()+str()\n\n"
        f"{doc}--B--\n"
    ).encode()


def test_yaml_aliases_cannot_make_the_merge_run_for_ever() -> None:
    # Finding U4: two 1.2 KB cloud-config parts whose aliases double at each of 30
    # levels made find_seed's merge visit about 2**31 nodes (hours); each further
    # level doubled that. The merge now has a step budget and refuses.
    data = _alias_bomb(30)
    assert len(data) < 2500
    assert ud.check(data) == "mime-multipart"  # each part on its own is fine
    with pytest.raises(UserDataRefused, match="too long to merge"):
        ud.find_seed(data)
    with pytest.raises(UserDataRefused):
        ud.add_seed(data, fuzz_userdata.SEED)
    replay(fuzz_userdata, data)


def test_the_merge_budget_leaves_ordinary_aliases_alone() -> None:
    data = _alias_bomb(6)
    merged = ud.merged_cloud_config(data)
    assert merged is not None and merged["l0"] == {"a": 1, "b": 2}


# --- the guest policy ----------------------------------------------------------------------


def test_a_platform_name_with_a_trailing_newline_is_refused() -> None:
    # Finding P1: the platform pattern used re.match with '$', which also matches
    # before a final newline, so "openstack\n" was accepted as a platform name.
    with pytest.raises(PolicyError, match="is not a platform name"):
        policy_from_mapping({"trusted_platforms": ["openstack\n"]})
    assert policy_from_mapping({"trusted_platforms": ["OpenStack"]}).trusted_platforms == (
        "openstack",
    )
    replay(fuzz_policy, json.dumps({"trusted_platforms": ["openstack\n"]}).encode())


# --- partition tables ---------------------------------------------------------------------


def _gpt_with(tmp_path: Path, **fields: int) -> tuple[bytes, Path]:
    """The fuzz target's small valid GPT with primary header fields changed, CRCs fixed."""
    offsets = {"alternate_lba": 32, "first_usable": 40, "entries_lba": 72}
    image = bytearray(fuzz_partitions._hand_gpt())
    for name, value in fields.items():
        image[512 + offsets[name] : 512 + offsets[name] + 8] = value.to_bytes(8, "little")
    sparse = fuzz_partitions.SparseImage(len(image), [(0, bytes(image))])
    sparse.fix_gpt_crcs()
    data = sparse.read_at(0, len(image))
    path = tmp_path / "disk.img"
    path.write_bytes(data)
    return data, path


def test_gpt_lba_beyond_any_file_offset_is_read_as_absent(tmp_path: Path) -> None:
    # Finding T1: read_partitions seeked to LBA * 512 for a backup LBA of 2**63 from
    # a header with a good CRC, and f.seek raised ValueError.
    data, path = _gpt_with(tmp_path, alternate_lba=2**63)
    table = pt.read_partitions(path)
    assert table == pt.parse_bytes(data)
    assert table.scheme == "gpt" and len(table.partitions) == 1
    assert any("beyond the end" in w for w in table.warnings)
    _, path = _gpt_with(tmp_path, entries_lba=2**60)
    table = pt.read_partitions(path)  # primary array unreadable: the backup is used
    assert any("using the backup" in w for w in table.warnings)


def test_gpt_usable_area_over_the_table_is_not_trusted(tmp_path: Path) -> None:
    # Finding T2: a primary header with first_usable 0 (good CRC) let an entry
    # starting at sector 0 through, a "partition" overlaying the MBR and the GPT.
    data, _ = _gpt_with(tmp_path, first_usable=0)
    table = pt.parse_bytes(data)
    assert any("using the backup" in w for w in table.warnings)
    assert all(p.start >= 34 * 512 for p in table.partitions)
    data, _ = _gpt_with(tmp_path, first_usable=2)  # overlaps the entry array at LBA 2
    assert any("using the backup" in w for w in pt.parse_bytes(data).warnings)


# --- saved crash inputs --------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*/*")) if CORPUS.is_dir() else [],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_saved_inputs_replay_cleanly(path: Path) -> None:
    """Every file under tests/fuzz_corpus/TARGET/ runs through fuzz/fuzz_TARGET.py."""
    import importlib

    target = importlib.import_module(f"fuzz.fuzz_{path.parent.name}")
    replay(target, path.read_bytes())
