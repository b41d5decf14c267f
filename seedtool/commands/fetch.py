"""`seedtool fetch`: ask seed servers for envelopes from a shell, with the guest's own client.

The same code the guest runs at boot (`seedtool.guest.evidence`, `seedtool.guest.netseed`):
evidence, every server at once under one deadline, TLS trusting only --ca. For scripts
on machines without a cloud identity (a bootstrap token) and for debugging a server.
It prints one line per server (never an envelope), writes the envelopes it got to -o
(0600, atomically: nothing is written when none came), and checks them only when given
--trusted-key (signature, validity and the binding to this instance and nonce, as the
guest checks them; not the guest's ledger).
"""

from __future__ import annotations

import os
import time
from typing import Any

import click

from ..shared.errors import SeedtoolError, UsageError
from ._options import echo_json


class NoEnvelope(SeedtoolError):
    """No seed server gave an envelope (or, with --trusted-key, none verified)."""


def _identity(value: str) -> str:
    if value in ("aws-iid", "gce-iit"):
        return value
    if value.startswith("token:") and len(value) > len("token:"):
        return "token:" + os.path.abspath(value[len("token:"):])
    raise UsageError("--identity must be aws-iid, gce-iit or token:FILE (a bootstrap token's "
                     "file)")


def _line(r: Any, verdict: str | None) -> str:
    if r.ok:
        text = f"{r.server}: ok (seed {r.seed_id}"
        text += f", issued {r.issued})" if r.issued is not None else ")"
        if verdict is not None:
            text += f"; {verdict}"
        return text
    return f"{r.server}: {r.reason}" + (f" ({r.detail})" if r.detail else "")


@click.command("fetch")
@click.option("--server", "servers", multiple=True, required=True, metavar="URL",
              help="An https seed server (repeatable; all are asked at once).")
@click.option("--ca", "ca", required=True, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate(s) of the CA the servers' certificates chain to (the "
                   "system store is never used).")
@click.option("--identity", required=True, metavar="aws-iid|gce-iit|token:FILE",
              help="The evidence to present: the AWS identity document (IMDSv2), the GCE "
                   "identity token (audience: each server's URL), or a bootstrap token file.")
@click.option("--imds", default=None, metavar="URL",
              help="The instance metadata service (default http://169.254.169.254).")
@click.option("--metadata", default=None, metavar="URL",
              help="The GCE metadata server (default http://metadata.google.internal).")
@click.option("--timeout", type=click.FloatRange(1, 60), default=10.0, show_default=True,
              metavar="S", help="Seconds for everything: evidence and every server.")
@click.option("-o", "--output", required=True, metavar="FILE",
              help="Where to write the envelope(s), one base64 line each (0600).")
@click.option("--trusted-key", "trusted", multiple=True, metavar="PUB",
              help="Also check each envelope as the guest would (repeatable); then only "
                   "verified envelopes are written.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(servers: tuple[str, ...], ca: str, identity: str, imds: str | None,
            metadata: str | None, timeout: float, output: str, trusted: tuple[str, ...],
            as_json: bool) -> None:
    """Ask seed servers for a fresh envelope bound to this machine's identity.

    Exits 0 when at least one server gave an envelope (with --trusted-key: one that
    verified) and writes them to FILE; otherwise exits 1 and writes nothing.
    """
    from ..bake.install import ca_certificates
    from ..guest import evidence, netseed
    from ..guest.policy import Policy
    from ..shared.fileio import atomic_write
    from ..shared.pubkeys import load_public_keys

    config = netseed.config_from_mapping(
        {"servers": list(servers), "ca": os.path.abspath(ca), "timeout": timeout,
         "identity": _identity(identity)}, "the command line")
    with open(ca, "rb") as f:
        ca_certificates(f.read(netseed.MAX_CONFIG_SIZE), ca)
    keys = load_public_keys(trusted) if trusted else []
    if trusted and not keys:
        raise UsageError("no trusted public keys found in the given --trusted-key paths")
    deadline = time.monotonic() + timeout
    ev = evidence.gather(config, imds=imds, metadata=metadata, deadline=deadline)
    out = netseed.fetch_seeds(config, ev, deadline=deadline)
    verdicts: dict[str, str] = {}
    good = [r for r in out.results if r.ok and r.envelope is not None]
    if keys:
        checked = netseed.check_envelopes(out, keys, Policy(), time.time())
        verdicts = {r.server: ("verified: signed by a trusted key, bound to this instance "
                               "and nonce" if v is not None else f"not verified: {why}")
                    for r, v, why in checked}
        good = [r for r, v, _ in checked if v is not None]
    if good:
        text = "".join(f"{r.envelope}\n" for r in good)
        atomic_write(output, text.encode("ascii"), mode=0o600)
    if as_json:
        echo_json({"servers": [dict(r.status_json(), **(
            {"instance": r.expect[0]} if r.expect else {}),
            **({"verdict": verdicts[r.server]} if r.server in verdicts else {}))
            for r in out.results],
            "written": output if good else None, "envelopes": len(good)})
    else:
        for r in out.results:
            click.echo(_line(r, verdicts.get(r.server)))
        if good:
            click.echo(f"wrote {len(good)} envelope(s) to {output}")
    if not good:
        what = "a verified envelope" if keys else "an envelope"
        raise NoEnvelope(f"no seed server gave {what} ({out.summary()}); nothing was "
                         "written")
