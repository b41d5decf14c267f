"""The guest core crediting seed servers' envelopes (issue 11, "The guest side").

Real parts: TLS seed servers on 127.0.0.1 (tests/guest/test_netseed.py's `SeedServer`,
certificates from a CA made here), the image's files in a temporary root read by
`netseed.fetch_for_image` exactly as at boot, the real ledger, and this machine's real
kernel RNG (RNDADDENTROPY as root), observed through audit events (PEP 578). The
temporary root and its devices are test_core's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seedtool.generate import SeedFactory
from seedtool.guest import core, kernel, netseed
from seedtool.guest.core import credit_seed
from seedtool.guest.policy import Policy
from seedtool.keys import generate_keypair, load_private_key
from seedtool.shared import envelope
from tests.guest.audit import recording
from tests.guest.test_core import (
    LINE_CREDITED,
    Guest,
    all_outputs,
    assert_no_seed,
    guest,
    needs_root,
    seed_of,
)
from tests.guest.test_netseed import TOKEN, TestCa, ca, closed_port, servers

# fixtures used by name below; test_netseed's `servers` takes this module's `factory`
# (signing with the key the guest fixture's image trusts)
__all__ = ["ca", "guest", "servers"]

REPO = Path(__file__).resolve().parents[2]
pytestmark = needs_root


@pytest.fixture
def factory(guest: Guest) -> Iterator[SeedFactory]:
    """Overrides test_netseed's: the servers sign with the key the guest trusts."""
    with SeedFactory(guest.private_key) as f:
        yield f




def bake(g: Guest, ca: TestCa, *urls: str, timeout: float = 10) -> None:
    """The files `seedtool bake --seed-server ... --seed-server-identity token:...` writes."""
    etc = g.root / "etc/seedtool"
    etc.mkdir(parents=True, exist_ok=True)
    ca.write(etc / "seed-server-ca.pem")
    (etc / "token").write_text(TOKEN + "\n")
    (etc / "seed-servers.json").write_text(json.dumps(
        {"version": 1, "servers": list(urls), "ca": netseed.CA_PATH, "timeout": timeout,
         "identity": "token:/etc/seedtool/token"}))


def ask(g: Guest) -> netseed.NetOutcome:
    out = netseed.fetch_for_image(str(g.root))
    assert out is not None
    return out


def boot(g: Guest, network: netseed.NetOutcome | None, data: bytes | str | None = None,
         **kw: Any) -> tuple[core.Outcome, list[tuple[str, Any]]]:
    """credit_seed as cc_seedtool calls it; the outcome and the (event, first arg) seen."""
    with recording() as seen:
        out = credit_seed(data, "user-data", stage=core.STAGE_CLOUD_INIT, paths=g.paths,
                          network=network, **kw)
    events = [(e, a[0] if e == "open" else a[1]) for e, a in seen
              if e in ("open", "fcntl.ioctl")]
    return out, events


def credits(events: list[tuple[str, Any]]) -> int:
    return sum(1 for e, a in events if e == "fcntl.ioctl" and a == kernel.RNDADDENTROPY)


def network_seeds(net: netseed.NetOutcome) -> list[bytes]:
    return [seed_of(envelope.decode_text(text)) for text, _ in net.envelopes()]


def kmsg_line(g: Guest) -> str:
    return g.kmsg_text().splitlines()[-1][3:]


def ledger_ids(g: Guest) -> list[str]:
    return [line.split()[0] for line in g.ledger().splitlines()]


# --- credited ---------------------------------------------------------------------------


def test_two_servers_and_a_user_data_seed_are_one_credit_of_512_bits(
        guest: Guest, ca: TestCa, servers: Any, factory: SeedFactory) -> None:
    a, b = servers(), servers()
    bake(guest, ca, a.url, b.url)
    net = ask(guest)
    user = factory.new()
    out, events = boot(guest, net, user.text)
    assert out.credited_bits == envelope.MAX_CREDIT_BITS and out.reason == ""
    assert credits(events) == 1  # one RNDADDENTROPY for all three seeds
    ids = [r.seed_id for r in net.results]
    assert sorted(ledger_ids(guest)) == sorted([user.seed_id, *ids])
    # every seed id on disk (fsynced by Ledger.consume) before the kernel saw a seed
    first_device_use = events.index(("open", guest.paths.urandom))
    assert max(i for i, ev in enumerate(events) if ev == ("open", guest.paths.ledger)) \
        < first_device_use
    status = guest.status()
    assert status["credited_bits"] == 512 and status["seed_id"] == user.seed_id
    assert status["servers"] == [
        {"url": s.url, "result": "ok", "seed_id": i, "credited": True} for s, i in zip((a, b), ids)]
    assert "seed-servers:64" in status["local_inputs"]
    line = kmsg_line(guest)
    assert line.startswith(f"seedtool: credited 512 bits from seeds {user.seed_id}, {ids[0]}, "
                           f"{ids[1]} signed by keys {out.key_id} (user-data + seed-server, crng ")
    assert line.endswith(f"; servers: {a.url} ok, {b.url} ok")
    for seed in [seed_of(user.raw), *network_seeds(net)]:
        assert_no_seed(seed, *all_outputs(guest), repr(out), repr(net))


def test_servers_alone_are_credited_with_the_seed_server_origin(
        guest: Guest, ca: TestCa, servers: Any) -> None:
    a, b = servers(), servers()
    bake(guest, ca, a.url, b.url)
    net = ask(guest)
    out, events = boot(guest, net)
    assert out.credited_bits == 512 and credits(events) == 1 and out.failure() == ""
    assert out.seed_id is None and guest.status()["reason"] is None
    line = kmsg_line(guest)
    assert f"from seeds {net.results[0].seed_id}, {net.results[1].seed_id} " in line
    assert "(seed-server, crng " in line


def test_one_good_server_is_enough(guest: Guest, ca: TestCa, servers: Any) -> None:
    good, refusing = servers(), servers("error", status=409, code="too-many")
    bake(guest, ca, refusing.url, good.url)
    out, events = boot(guest, ask(guest))
    assert out.credited_bits == 512 and credits(events) == 1
    assert [(s["result"], s["credited"]) for s in guest.status()["servers"]] == [
        ("too-many", False), ("ok", True)]


def test_a_refused_user_data_seed_does_not_stop_the_servers_credit(
        guest: Guest, ca: TestCa, servers: Any) -> None:
    generate_keypair(guest.tmp / "other.key", guest.tmp / "other.pub")
    other = SeedFactory(load_private_key(guest.tmp / "other.key"))
    s = servers()
    bake(guest, ca, s.url)
    out, _ = boot(guest, ask(guest), other.new().text)
    assert out.credited_bits == 512 and not out.verified
    assert any(n.startswith("user-data seed not credited: signed by untrusted key")
               for n in out.notes)


# --- not credited -----------------------------------------------------------------------


def test_a_replayed_server_envelope_is_not_counted(guest: Guest, ca: TestCa,
                                                  servers: Any) -> None:
    s = servers()
    bake(guest, ca, s.url)
    net = ask(guest)
    first, _ = boot(guest, net)
    assert first.credited_bits == 512
    # the same reply again (its seed id is in the ledger): mixed, not counted
    again, events = boot(guest, net)
    assert again.credited_bits == 0 and credits(events) == 0
    assert again.reason == core.NO_SERVER_SEED
    assert guest.status()["servers"] == [{"url": s.url, "result": "already consumed",
                                          "seed_id": net.results[0].seed_id,
                                          "credited": False}]
    assert ledger_ids(guest) == [net.results[0].seed_id]


def test_a_replayed_server_envelope_beside_a_user_data_seed_counts_only_that_seed(
        guest: Guest, ca: TestCa, servers: Any) -> None:
    s = servers()
    bake(guest, ca, s.url)
    net = ask(guest)
    boot(guest, net)
    with SeedFactory(guest.private_key, nbytes=16) as small:
        user = small.new()
    out, events = boot(guest, net, user.text)
    assert out.credited_bits == 128 and credits(events) == 1  # the user-data seed's 16 bytes
    assert guest.status()["servers"][0]["result"] == "already consumed"
    assert LINE_CREDITED.match(kmsg_line(guest).split("; servers: ")[0])


@pytest.mark.parametrize(("mode", "reason"), [
    ("other-nonce", "bound to another request"),
    ("other-instance", "bound to another instance"),
    ("unbound", "not bound to this request"),
])
def test_an_envelope_bound_to_anything_else_is_not_counted(
        guest: Guest, ca: TestCa, servers: Any, mode: str, reason: str) -> None:
    s = servers(mode)
    bake(guest, ca, s.url)
    net = ask(guest)
    assert net.reasons() == {s.url: "ok"}  # the transport was fine; the binding is not
    out, events = boot(guest, net)
    assert out.credited_bits == 0 and credits(events) == 0
    assert guest.status()["servers"][0]["result"] == reason
    assert guest.ledger() == ""  # never a candidate: not recorded
    assert kmsg_line(guest) == (f"seedtool: mixed seed - uncredited (user-data): "
                                f"{core.NO_SERVER_SEED}; servers: {s.url} {reason}")


def test_every_server_failing_is_uncredited_with_a_reason_each_and_the_boot_goes_on(
        guest: Guest, ca: TestCa, servers: Any) -> None:
    refusing = servers("error", status=403, code="not-allowed")
    stranger = servers(other_ca=TestCa("another CA"))
    slow = servers("slow")
    down = f"https://127.0.0.1:{closed_port()}"
    bake(guest, ca, refusing.url, stranger.url, slow.url, down, timeout=1)
    net = ask(guest)
    slow.release()
    out, events = boot(guest, net)
    assert out.credited_bits == 0 and credits(events) == 0 and out.failure() == ""
    want = [(refusing.url, "not-allowed"), (stranger.url, "tls: certificate not trusted"),
            (slow.url, "timeout"), (down, "unreachable")]
    got = guest.status()["servers"]
    assert [(s["url"], s["result"], s["credited"]) for s in got] == [
        (u, r, False) for u, r in want]
    assert guest.status()["reason"] == core.NO_SERVER_SEED
    assert kmsg_line(guest).endswith("; servers: " + ", ".join(f"{u} {r}" for u, r in want))


def test_imds_unreachable_asks_no_server_and_is_uncredited(guest: Guest, ca: TestCa,
                                                           servers: Any) -> None:
    s = servers()
    bake(guest, ca, s.url)
    config = guest.root / "etc/seedtool/seed-servers.json"
    config.write_text(config.read_text().replace("token:/etc/seedtool/token", "aws-iid"))
    net = netseed.fetch_for_image(str(guest.root), imds=f"http://127.0.0.1:{closed_port()}")
    assert net is not None
    out, events = boot(guest, net)
    assert out.credited_bits == 0 and credits(events) == 0 and out.failure() == ""
    (entry,) = guest.status()["servers"]
    assert entry["result"].startswith("evidence: IMDS") and not entry["credited"]
    assert s.bodies == []  # nothing was sent without evidence
    assert kmsg_line(guest).endswith(f"; servers: {s.url} {entry['result']}")


def test_fail_closed_with_every_server_failing_is_the_error(guest: Guest, ca: TestCa) -> None:
    bake(guest, ca, f"https://127.0.0.1:{closed_port()}")
    out, _ = boot(guest, ask(guest), policy=Policy(fail_closed=True))
    assert not out.credited
    assert f"the seed was not credited ({core.NO_SERVER_SEED})" in out.failure()
    with pytest.raises(core.SeedNotCredited):
        out.raise_if_fail_closed()


def test_fail_closed_is_satisfied_by_a_server_seed(guest: Guest, ca: TestCa,
                                                   servers: Any) -> None:
    bake(guest, ca, servers().url)
    out, _ = boot(guest, ask(guest), policy=Policy(fail_closed=True))
    assert out.credited and out.failure() == ""


def test_an_invalid_policy_credits_no_server_seed(guest: Guest, ca: TestCa,
                                                  servers: Any) -> None:
    s = servers()
    bake(guest, ca, s.url)
    Path(guest.paths.policy).write_text("{")
    out, events = boot(guest, ask(guest))
    assert out.credited_bits == 0 and credits(events) == 0 and out.failure()
    assert guest.status()["servers"][0]["result"] == "policy invalid"
    assert guest.ledger() == ""


# --- no servers: today's behaviour ---------------------------------------------------------


def test_no_servers_configured_is_todays_behaviour(guest: Guest, factory: SeedFactory) -> None:
    assert netseed.fetch_for_image(str(guest.root)) is None
    user = factory.new()
    out, events = boot(guest, None, user.text)
    assert out.credited_bits == 512 and credits(events) == 1
    assert "servers" not in guest.status()
    assert LINE_CREDITED.match(kmsg_line(guest))
    nothing, _ = boot(guest, None)
    assert nothing.reason == "no seed offered" and "servers" not in guest.status()


def test_the_module_imports_no_tls_without_servers(tmp_path: Path) -> None:
    # cc_seedtool's own step, run where no seed-server configuration exists
    assert not os.path.exists(netseed.CONFIG_PATH)
    code = ("import sys; sys.path.insert(0, 'cloud_init_modules'); import cc_seedtool; "
            "assert cc_seedtool._ask_seed_servers() is None; "
            "print(sorted(m for m in ('ssl', 'http.client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(REPO))
    assert out.stdout.strip() == "[]"
