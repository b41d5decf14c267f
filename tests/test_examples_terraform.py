"""examples/terraform/aws-asg and gce-mig: fleets that share user-data, seeded by seed servers.

Terraform is not packaged by Debian (nor on PyPI), so the files are parsed as HCL2 with
python-hcl2 and the resources that matter are checked: the image comes from a variable,
the shared user-data holds no seed, the group uses the template, and the instances may
reach the seed servers on 443. The `seedtool bake` command in each file's header runs
for real against an empty root (`--dry-run`).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from seedtool.deliver.userdata import find_seed
from tests.guest.test_netseed import TestCa
from tests.test_examples import EXAMPLES, blocks, keys, load_hcl, seedtool  # noqa: F401 - fixture

TERRAFORM = EXAMPLES / "terraform"
ASG = TERRAFORM / "aws-asg/main.tf"
MIG = TERRAFORM / "gce-mig/main.tf"


def resources(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    doc = load_hcl(path)
    return doc, blocks(doc, "resource")


def variables(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: body for entry in doc["variable"] for name, body in entry.items()}


def assert_shared_without_seed(expr: str, function: str, tf: Path) -> None:
    """`expr` reads one fixed file, the same for every instance, and it holds no seed."""
    text = expr.removeprefix("${").removesuffix("}")
    prefix = f'{function}("${{path.module}}/'
    assert text.startswith(prefix) and text.endswith('")'), f"not one fixed file: {expr}"
    rel = text[len(prefix):-2]
    assert "${" not in rel, f"a file chosen per instance: {expr}"
    data = (tf.parent / rel).read_bytes()
    assert data and find_seed(data) is None, f"{rel} holds a seed"


def test_the_user_data_check_can_fail(keys: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    # per-instance seed files (the for_each example) are not shared user-data
    _, per_instance = resources(TERRAFORM / "aws/main.tf")
    with pytest.raises(AssertionError, match="per instance|not one fixed file"):
        assert_shared_without_seed(per_instance["aws_instance.vm"]["user_data_base64"],
                                   "filebase64", TERRAFORM / "aws/main.tf")
    # and a fixed file that holds a seed is found
    (tmp_path / "m").mkdir()
    p = seedtool("userdata", "--in", str(EXAMPLES / "userdata/cloud-config.yaml"), "--target",
                 "aws", "-o", str(tmp_path / "seeded"), env={"SEEDTOOL_KEY": str(keys[0])})
    assert p.returncode == 0, p.stderr
    with pytest.raises(AssertionError, match="holds a seed"):
        assert_shared_without_seed('${filebase64("${path.module}/../seeded")}', "filebase64",
                                   tmp_path / "m/main.tf")


def test_aws_auto_scaling_group_with_a_launch_template() -> None:
    doc, res = resources(ASG)
    ami = variables(doc)["ami_id"]
    assert "default" not in ami and "--seed-server" in ami["description"]

    lt = res["aws_launch_template.fleet"]
    assert lt["image_id"] == "${var.ami_id}"
    assert_shared_without_seed(lt["user_data"], "filebase64", ASG)
    assert lt["metadata_options"][0]["http_tokens"] == "required"  # IMDSv2 for the evidence
    assert lt["vpc_security_group_ids"] == ["${aws_security_group.fleet.id}"]

    asg = res["aws_autoscaling_group.fleet"]
    assert asg["launch_template"][0]["id"] == "${aws_launch_template.fleet.id}"
    assert asg["launch_template"][0]["version"] == "${aws_launch_template.fleet.latest_version}"
    assert "user_data" not in asg and "count" not in asg and "for_each" not in asg

    out = res["aws_vpc_security_group_egress_rule.to_seed_servers"]
    into = res["aws_vpc_security_group_ingress_rule.seed_servers_from_fleet"]
    for rule, own, other in ((out, "${aws_security_group.fleet.id}",
                              "${var.seed_server_security_group_id}"),
                             (into, "${var.seed_server_security_group_id}",
                              "${aws_security_group.fleet.id}")):
        assert (rule["ip_protocol"], rule["from_port"], rule["to_port"]) == ("tcp", 443, 443)
        assert rule["security_group_id"] == own and rule["referenced_security_group_id"] == other


def test_gce_managed_instance_group_with_an_instance_template() -> None:
    doc, res = resources(MIG)
    image = variables(doc)["image"]
    assert "default" not in image and "--seed-server" in image["description"]

    tpl = res["google_compute_instance_template.fleet"]
    (disk,) = tpl["disk"]
    assert disk["source_image"] == "${var.image}" and disk["boot"] is True
    assert_shared_without_seed(tpl["metadata"]["user-data"], "file", MIG)
    # the identity token is served under service-accounts/default
    assert tpl["service_account"][0]["email"] == "${var.service_account_email}"

    mig = res["google_compute_region_instance_group_manager.fleet"]
    assert mig["version"][0]["instance_template"] == "${google_compute_instance_template.fleet.id}"
    assert "count" not in mig and "for_each" not in mig

    out = res["google_compute_firewall.fleet_to_seed_servers"]
    into = res["google_compute_firewall.seed_servers_from_fleet"]
    for rule in (out, into):
        (allow,) = rule["allow"]
        assert (allow["protocol"], allow["ports"]) == ("tcp", ["443"])
        assert rule["network"] == "${var.network}" == tpl["network_interface"][0]["network"]
    assert out["direction"] == "EGRESS" and out["target_tags"] == tpl["tags"]
    assert out["destination_ranges"] == "${var.seed_server_ranges}"
    assert out["priority"] < 1000  # before a default-priority deny-egress rule
    assert into["direction"] == "INGRESS" and into["source_tags"] == tpl["tags"]
    assert into["target_tags"] == ["${var.seed_server_tag}"]


def header_bake(path: Path) -> list[str]:
    """The `seedtool bake ...` command in the file's header comment."""
    lines = [line.removeprefix("#").strip() for line in path.read_text().splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("seedtool bake "))
    text = ""
    for line in lines[start:]:
        text += line.removesuffix("\\") + " "
        if not line.endswith("\\"):
            break
    return shlex.split(text)


@pytest.mark.parametrize("path,identity", [(ASG, "aws-iid"), (MIG, "gce-iit")])
def test_the_bake_command_of_the_header_runs(path: Path, identity: str,
                                             keys: tuple[Path, Path],  # noqa: F811
                                             tmp_path: Path) -> None:
    argv = header_bake(path)
    assert argv[:2] == ["seedtool", "bake"]
    assert argv[argv.index("--seed-server-identity") + 1] == identity
    assert argv.count("--seed-server") == 2
    files = {"/": str(tmp_path / "root"), "seed-server.pub": str(keys[1]),
             "seed-server-ca.pem": str(TestCa().write(tmp_path / "ca.pem"))}
    (tmp_path / "root").mkdir()
    p = seedtool(*[files.get(a, a) for a in argv[1:]], "--dry-run")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "seed-server" in p.stdout + p.stderr
