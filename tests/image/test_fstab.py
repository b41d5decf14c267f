"""The fstab reader and resolver on their own: fstab(5) syntax, and arbitrary input
never giving anything but a placement or a refusal. (The real images are in
test_image_seed.py.)"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtool.image.fstab import MountRefused, Volume, parse_fstab, place

ROOT = Volume(1, 1 << 20, "ext", "aaaaaaaa-0000-4000-8000-000000000001", "root",
              "11111111-01", "")
VAR = Volume(2, 9 << 20, "ext", "aaaaaaaa-0000-4000-8000-000000000002", "my var",
             "11111111-02", "var part")
VOLUMES = (ROOT, VAR)


def test_octal_escapes_comments_and_missing_fields() -> None:
    entries = parse_fstab(
        "  # a comment\n\n"
        "LABEL=my\\040var\t/var/\text4\tdefaults,noatime\n"  # no dump/pass fields
        "/dev/vda3 none swap sw 0 0\n"
        "UUID=x /srv\\011data auto\n"
        "onlyone\n")
    assert [(e.source, e.point, e.fstype, e.options, e.line) for e in entries] == [
        ("LABEL=my var", "/var", "ext4", ("defaults", "noatime"), 3),
        ("UUID=x", "/srv\tdata", "auto", (), 5)]
    p = place("/var/lib/seedtool", entries, VOLUMES, ROOT, "img")
    assert (p.volume, p.path, p.where) == (VAR, "/lib/seedtool",
                                           "partition 2 (mounted at /var)")


def test_udev_escapes_in_by_label() -> None:
    entries = parse_fstab("/dev/disk/by-label/my\\x20var /var ext4 defaults 0 2\n")
    assert place("/var/lib/seedtool", entries, VOLUMES, ROOT, "img").volume == VAR


def test_a_bind_loop_is_refused() -> None:
    entries = parse_fstab("/a /var none bind 0 0\n/var/x /a none bind 0 0\n")
    with pytest.raises(MountRefused, match=r"mounts /\S+ from /\S+ \(none\).*bind mounts do "
                                           r"not end in a file system of this image"):
        place("/var/x/seed", entries, VOLUMES, ROOT, "img")


_tokens = st.sampled_from([
    "UUID=aaaaaaaa-0000-4000-8000-000000000002", "LABEL=root", "PARTUUID=11111111-02",
    "PARTLABEL=var\\040part", "/dev/vda2", "/dev/vdb1", "/dev/mapper/x", "tmpfs", "none",
    "host:/x", "//s/x", "/var", "/var/lib", "/var/lib/seedtool", "/", "/srv", "/a",
    "bind", "defaults", "noauto", "ext4", "nfs", "swap", "overlay", "auto", "#", "\\",
    "\\777", "=", "0", "\t", " ", "UUID=", "/dev/disk/by-uuid/", "/dev/nvme0n1p2"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_tokens | st.text(max_size=8), max_size=7), max_size=12))
def test_any_fstab_gives_a_placement_or_a_refusal(lines: list[list[str]]) -> None:
    text = "\n".join(" ".join(words) for words in lines)
    entries = parse_fstab(text)
    try:
        p = place("/var/lib/seedtool", entries, VOLUMES, ROOT, "img")
    except MountRefused as e:
        assert "/etc/fstab" in str(e)
    else:
        assert p.volume in VOLUMES and p.path.startswith("/")
