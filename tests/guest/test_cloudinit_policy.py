"""Policy and datasource seeds under the REAL cloud-init of Debian 12 (22.4.2) and 13 (25.1.4).

The same namespaced overlay chroots as tests/guest/test_cloudinit.py (its
`run_in_chroot`): cloud-init's own stages load cc_seedtool and call `handle`, and
its own datasources build `metadata["random_seed"]`:

* an invalid /etc/seedtool/policy.json is an error cloud-init records
  (status.json, result.json, `cloud-init status --long`) after the seed was mixed
  and scrubbed, while the boot goes on (later modules and stages still run); the
  early unit's own ExecStart exits 1 on it;
* ConfigDrive parses a real `openstack/latest/meta_data.json` (helpers/openstack.py)
  and its 512-byte seed is credited 512 bits, not 4096;
* DataSourceAzure's own `_get_random_seed` reads an OEM0 ACPI table file: only the
  bytes after its 36-byte header are counted, and a table whose payload the kernel
  already zeroed credits nothing;
* NoCloud, which defines no seed format, has its `random_seed` mixed only.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from seedtool.generate import SeedFactory
from tests.guest.test_cloudinit import (
    INIT,
    RELEASES,
    Run,
    early_exec_start,
    run_in_chroot,
    seed_needles,
    signer,  # noqa: F401 - a fixture
    user_data_with,
)

POLICY_FILE = "/etc/seedtool/policy.json"
#: a policy that says fail_closed false, in a file that is not valid JSON
BROKEN_POLICY = '{"fail_closed": false, "trusted_platforms": ["nocloud"'
FIX = "rebuild the image with `seedtool bake` or fix the JSON in /etc/seedtool/policy.json"
FINAL = [["cloud-init", "modules", "--mode", "config"],
         ["cloud-init", "modules", "--mode", "final"]]
STATUS = [["cloud-init", "status", "--long"], ["cat", "/run/cloud-init/result.json"]]


def write_file(path: str, text: str, mode: str = "644") -> list[str]:
    """A chroot step that writes `text` to `path` (the image as it was built)."""
    return ["python3", "-c",
            "import os, sys; os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True); "
            "open(sys.argv[1], 'w').write(sys.argv[2]); os.chmod(sys.argv[1], int(sys.argv[3], 8))",
            path, text, mode]


#: minbase roots have no en_US.UTF-8, so cc_locale (config stage) would fail by itself
LOCALE = write_file("/etc/cloud/cloud.cfg.d/07_locale.cfg", "locale: C.UTF-8\n")


def step_named(run: Run, argv0: list[str]) -> dict[str, Any]:
    steps = [s for s in run.result["steps"] if s["argv"][: len(argv0)] == argv0]
    assert len(steps) == 1, [s["argv"][:3] for s in run.result["steps"]]
    found: dict[str, Any] = steps[0]
    return found


# ---- an invalid policy is loud ----------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_invalid_policy_is_an_error_in_cloud_init_status_and_the_boot_goes_on(
        tmp_path: Path, release: str, signer: tuple[Any, Path]) -> None:  # noqa: F811
    key, pub = signer
    new = SeedFactory(key).new()
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data=user_data_with(new.text),
        steps=[write_file(POLICY_FILE, BROKEN_POLICY), LOCALE, *INIT, *FINAL, *STATUS],
        needles=seed_needles(new.raw, new.text),
    )
    # nothing credited, the envelope still mixed (its id named) and scrubbed everywhere
    (line,) = run.kmsg_lines()
    assert line == f"<5>seedtool: mixed seed {new.seed_id} uncredited (user-data): policy invalid"
    st = run.result["status"]
    assert st["credited_bits"] == 0 and st["reason"] == "policy invalid"
    assert run.result["ledger"] is None  # never consumed: a fixed image may still credit it
    assert run.result["hits"] == []
    # cloud-init recorded the error of the init stage, naming the file and the fix
    errors = run.result["ci_status"]["v1"]["init"]["errors"]
    mine = [e for e in errors if POLICY_FILE in e]
    assert len(mine) == 1 and "is not valid JSON" in mine[0] and FIX in mine[0], errors
    assert "the image is misbuilt" in mine[0]
    result = json.loads(step_named(run, ["cat", "/run/cloud-init/result.json"])["out"])
    assert any(FIX in e for e in result["v1"]["errors"]), result
    status = step_named(run, ["cloud-init", "status"])
    assert status["rc"] == 1, status  # cloud-init status: error
    assert status["out"].startswith("status: error\n"), status
    assert f"PolicyInvalid('seed policy {POLICY_FILE} is not valid JSON" in status["out"]
    assert FIX in status["out"], status
    # the boot went on: the init stage's later modules ran (host keys), then the
    # config and final stages, all with exit status 0 except init's, which failed
    order = run.module_order()
    assert order.index("seedtool") < order.index("ssh")
    assert run.result["host_keys"], "cc_ssh made no host keys"
    assert "final_message" in order or "final-message" in order, order
    for step in run.result["steps"]:
        if step["argv"][:3] == ["cloud-init", "modules", "--mode"]:
            assert step["rc"] == 0, step


@pytest.mark.parametrize("release", RELEASES)
def test_invalid_policy_fails_the_early_unit(tmp_path: Path, release: str,
                                             signer: tuple[Any, Path]) -> None:  # noqa: F811
    """The unit's own ExecStart, under the image's python3: exit 1 (systemd: failed)."""
    key, pub = signer
    new = SeedFactory(key).new()
    exec_start = early_exec_start()
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data="#cloud-config\n{}\n", disk_seed=new.text,
        steps=[write_file(POLICY_FILE, json.dumps({"fail_closed": False, "clock_skew": "5m"})),
               exec_start.split()],
        needles=seed_needles(new.raw, new.text),
    )
    launched = run.step(1)
    assert launched["rc"] == 1, launched
    assert POLICY_FILE in launched["err"] and FIX in launched["err"], launched
    assert "'clock_skew' must be" in launched["err"]
    (line,) = run.kmsg_lines()
    assert line == f"<5>seedtool: mixed seed {new.seed_id} uncredited (disk): policy invalid"
    assert not run.result["seed_file_exists"] and run.result["ledger"] is None
    assert run.result["hits"] == []


# ---- datasource seeds, as the real datasources build them ----------------------------------

TRUST = {"credit_datasource": True}


def configdrive_steps(meta: dict[str, Any]) -> list[list[str]]:
    """A ConfigDrive seed directory (what a config drive holds) and the datasource list."""
    base = "/var/lib/cloud/seed/config_drive/openstack/latest"
    return [write_file(f"{base}/meta_data.json", json.dumps(meta)),
            write_file("/etc/cloud/cloud.cfg.d/06_configdrive.cfg",
                       "datasource_list: [ConfigDrive, None]\n")]


@pytest.mark.parametrize("release", RELEASES)
def test_configdrive_seed_is_credited_for_what_it_holds(tmp_path: Path, release: str,
                                                        signer: tuple[Any, Path]) -> None:  # noqa: F811
    """cloud-init's OpenStack metadata parsing decodes nova's 512-byte seed; 512 bits.

    A credited seed is ours to keep secret: afterwards no copy is left in cloud-init's
    state (obj.pkl, instance-data*.json holding it as ci-b64:, the seed directory)."""
    key, pub = signer
    seed = os.urandom(512)
    b64 = base64.b64encode(seed).decode()
    meta = {"uuid": f"iid-configdrive-{release}", "hostname": "seedtest", "random_seed": b64}
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data="#cloud-config\n{}\n",
        steps=[*configdrive_steps(meta), *INIT],
        needles=[seed, b64.encode()],
        policy={**TRUST, "trusted_platforms": ["configdrive"]},
    )
    for step in run.result["steps"]:
        assert step["rc"] == 0, step
    (line,) = run.kmsg_lines()
    assert line.startswith("<5>seedtool: credited 512 bits from seed - signed by key - "
                           "(datasource:configdrive, crng "), line
    assert run.result["status"]["credited_bits"] == 512
    assert run.result["hits"] == []


@pytest.mark.parametrize("release", RELEASES)
def test_nocloud_seed_has_no_format_and_is_mixed_only(tmp_path: Path, release: str,
                                                      signer: tuple[Any, Path]) -> None:  # noqa: F811
    key, pub = signer
    seed = os.urandom(64)
    b64 = base64.b64encode(seed).decode()
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data="#cloud-config\n{}\n", steps=INIT,
        needles=[seed, b64.encode()], meta_extra=f"random_seed: {b64}\n",
        policy={**TRUST, "trusted_platforms": ["nocloud"]},
    )
    (line,) = run.kmsg_lines()
    assert line == ("<5>seedtool: mixed seed - uncredited (datasource:nocloud): "
                    "platform nocloud seed not creditable: format unknown")


# Hyper-V's side: an OEM0 table as /sys/firmware/acpi/tables/OEM0 shows it, then the
# roots' own DataSourceAzure._get_random_seed reads it, and cc_seedtool.handle runs on
# a DataSourceAzure carrying that metadata (what _get_data leaves in it).
AZURE = r'''
import json, os, struct, sys
sys.path.insert(0, "/usr/lib/python3/dist-packages")
import cc_seedtool
from cloudinit.sources import DataSourceAzure as az

def table(payload):
    head = struct.pack("<4sIBB6s8sI4sI", b"OEM0", 36 + len(payload), 1, 0, b"VRTUAL",
                       b"MICROSFT", 1, b"MSFT", 0x01000013)
    t = bytearray(head + payload)
    t[9] = (-sum(t)) % 256
    return bytes(t)

payload = {"random": os.urandom(32), "zeroed": bytes(64)}[sys.argv[1]]
with open("/root/OEM0", "wb") as f:
    f.write(table(payload))
value = az._get_random_seed("/root/OEM0")
ds = az.DataSourceAzure.__new__(az.DataSourceAzure)
ds.metadata = {"random_seed": value}

class Cloud:
    datasource = ds

try:
    cc_seedtool.handle("cc_seedtool", {}, Cloud(), None)
finally:
    print(json.dumps({"platform": ds.platform_type, "value_type": type(value).__name__,
                      "value_len": len(value)}))
'''


@pytest.mark.parametrize("release", RELEASES)
def test_azure_oem0_header_is_never_credited(tmp_path: Path, release: str,
                                             signer: tuple[Any, Path]) -> None:  # noqa: F811
    key, pub = signer
    run = run_in_chroot(
        tmp_path, release, key, pub, user_data="#cloud-config\n{}\n",
        steps=[["python3", "-c", AZURE, "random"], ["python3", "-c", AZURE, "zeroed"]],
        needles=[], policy={**TRUST, "trusted_platforms": ["azure"]},
    )
    for i, table_len in ((0, 36 + 32), (1, 36 + 64)):
        step = run.step(i)
        assert step["rc"] == 0, step
        facts = json.loads(step["out"].strip().splitlines()[-1])
        # cloud-init's own form: base64 text of the whole table, header included
        assert facts == {"platform": "azure", "value_type": "str",
                         "value_len": 4 * ((table_len + 2) // 3)}
    random_line, zeroed_line = run.kmsg_lines()
    # 32 random bytes after the 36-byte header: 256 bits, not 8 x 68
    assert random_line.startswith("<5>seedtool: credited 256 bits from seed - signed by key - "
                                  "(datasource:azure, crng "), random_line
    assert zeroed_line == ("<5>seedtool: mixed seed - uncredited (datasource:azure): "
                           "platform azure seed not creditable: all its bytes are equal")
