"""NoCloud seed ISOs: the files cloud-init reads, under the names it looks for."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pycdlib
import pytest

from seedtool.deliver.nocloud import build_iso, meta_data, new_instance_id, nocloud_iso, write_iso
from seedtool.shared.errors import DeliveryError


def _read(iso_bytes: bytes, **where: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(iso_bytes))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, **where)
        return out.getvalue()
    finally:
        iso.close()


def _names(iso_bytes: bytes) -> tuple[set[str], set[str], str]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(iso_bytes))
    try:
        rr = {c.rock_ridge.name().decode() for c in iso.list_children(rr_path="/")
              if c.is_file()}
        joliet = {c.file_identifier().decode("utf-16_be").split(";")[0]
                  for c in iso.list_children(joliet_path="/") if c.is_file()}
        label = iso.pvd.volume_identifier.decode().strip()
        return rr, joliet, label
    finally:
        iso.close()


USER_DATA = b"#cloud-config\nruncmd:\n - [echo, hello]\n"


def test_iso_holds_user_data_and_meta_data_under_cloud_init_names() -> None:
    image, iid = nocloud_iso(USER_DATA, hostname="web-1")
    rr, joliet, label = _names(image)
    assert rr == {"user-data", "meta-data"}
    assert joliet == {"user-data", "meta-data"}
    assert label == "cidata"
    assert _read(image, rr_path="/user-data") == USER_DATA
    assert _read(image, joliet_path="/user-data") == USER_DATA
    meta = _read(image, rr_path="/meta-data").decode()
    assert meta.splitlines() == [f"instance-id: {iid}", "local-hostname: web-1"]


def test_blkid_sees_an_iso9660_filesystem_labelled_cidata(tmp_path: Path) -> None:
    # cloud-init finds the NoCloud seed by this label through blkid
    path = tmp_path / "seed.iso"
    write_iso(path, USER_DATA)
    out = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert "LABEL=cidata" in out
    assert "TYPE=iso9660" in out


def test_each_iso_gets_a_fresh_instance_id_unless_one_is_given() -> None:
    (_, a), (_, b) = nocloud_iso(USER_DATA), nocloud_iso(USER_DATA)
    assert a != b
    image, iid = nocloud_iso(USER_DATA, instance_id="i-0abc")
    assert iid == "i-0abc"
    assert b"instance-id: i-0abc\n" in _read(image, rr_path="/meta-data")
    assert new_instance_id() != new_instance_id()


def test_optional_network_config_is_added() -> None:
    net = b"version: 2\nethernets: {eth0: {dhcp4: true}}\n"
    image, _ = nocloud_iso(USER_DATA, network_config=net)
    assert _read(image, rr_path="/network-config") == net


def test_write_iso_is_private_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    iid = write_iso(path, USER_DATA)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["seed.iso"]
    assert iid in _read(path.read_bytes(), rr_path="/meta-data").decode()


def test_write_iso_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DeliveryError):
        write_iso(tmp_path / "seed.iso", USER_DATA, instance_id="../../etc")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "x" * 200, "has space", "-lead"])
def test_unusable_instance_ids_are_refused(bad: str) -> None:
    with pytest.raises(DeliveryError, match="instance id"):
        meta_data(bad)


def test_bad_hostname_is_refused() -> None:
    with pytest.raises(DeliveryError, match="hostname"):
        meta_data("i-1", hostname="under_score")


def test_file_names_that_cannot_live_on_the_iso_are_refused() -> None:
    with pytest.raises(DeliveryError):
        build_iso({"sub/dir": b""})


def test_large_user_data_survives_intact() -> None:
    big = b"#cloud-config\n# " + os.urandom(300_000).hex().encode() + b"\n"
    image, _ = nocloud_iso(big)
    assert _read(image, rr_path="/user-data") == big


def test_nocloud_command_writes_an_iso_whose_user_data_carries_a_fresh_seed(
    tmp_path: Path, keypair: tuple[Path, Path, object]
) -> None:
    from click.testing import CliRunner

    from seedtool.cli import cli
    from seedtool.deliver.userdata import find_seed
    from seedtool.shared.envelope import parse

    own = b"#!/bin/sh\necho my own script\n"
    (tmp_path / "ud").write_bytes(own)
    runner = CliRunner()
    seeds = []
    for name in ("a.iso", "b.iso"):
        res = runner.invoke(cli, ["nocloud", "--key", str(keypair[0]), "--user-data",
                                  str(tmp_path / "ud"), "-o", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        image = (tmp_path / name).read_bytes()
        user_data = _read(image, rr_path="/user-data")
        assert own in user_data  # the user's part survives byte for byte
        text = find_seed(user_data)
        assert text is not None
        env = parse(text)
        assert text not in res.output and env.seed_id.hex() in res.output
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
        seeds.append(env.seed_id)
    assert seeds[0] != seeds[1]


def test_nocloud_command_names_a_missing_user_data_file(
    tmp_path: Path, keypair: tuple[Path, Path, object]
) -> None:
    from seedtool.cli import main

    with pytest.raises(SystemExit) as e:
        main(["nocloud", "--key", str(keypair[0]), "--user-data", str(tmp_path / "nope"),
              "-o", str(tmp_path / "x.iso")])
    assert e.value.code == 1
    assert not (tmp_path / "x.iso").exists()
