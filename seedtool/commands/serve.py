"""`seedtool serve`: the host's entropy daemon (EGD for virtio-rng, HTTPS seed API);
`serve status`, `serve token create`, `serve ledger show|list`."""

from __future__ import annotations

import json
from typing import Any

import click

from ..shared.errors import UsageError
from ._options import echo_json

CONTROL_HELP = ("Control socket (default /run/seedtool/control.sock as root, else "
                "$XDG_RUNTIME_DIR/seedtool/control.sock).")


LEDGER_HELP = ("The issuance ledger: sqlite:PATH, a postgresql:// URL, or postgres (PG* "
               "environment); default sqlite at /var/lib/seedtool/ledger.sqlite as root, "
               "else $XDG_STATE_HOME/seedtool/ledger.sqlite.")


def _open_ledger(spec: str | None) -> Any:
    from ..serve.daemon import default_ledger_path
    from ..serve.ledger import open_ledger

    return open_ledger(spec, default_path=None if spec else default_ledger_path())


def _control_path(path: str | None) -> str:
    from ..serve.control import default_control_path

    return path or default_control_path()


@click.group("serve", invoke_without_command=True)
@click.option("--egd", "egd", multiple=True, metavar="ADDRESS",
              help="Listen for EGD clients (QEMU rng-egd, libvirt backend model='egd'): "
                   "unix:PATH[,mode=0660,group=NAME] or tcp:127.0.0.1:PORT. Repeatable.")
@click.option("--source", "sources", multiple=True, metavar="NAME[:k=v,...]",
              help="An entropy source, as for generate (os is always mixed in). Repeatable.")
@click.option("--require", "required", multiple=True, metavar="NAME[:k=v,...]",
              help="Serve only while this source passes its health tests; clients wait "
                   "otherwise. Repeatable.")
@click.option("--rate", type=float, default=None, metavar="BYTES/S",
              help="Per-connection rate limit (default 1048576; 0 = none).")
@click.option("--max-clients", type=click.IntRange(min=1), default=None, metavar="N",
              help="Connections served at once, over all listeners (default 1024).")
@click.option("--control", metavar="PATH", default=None, help=CONTROL_HELP)
@click.option("--no-control", is_flag=True, help="Run without a control socket.")
@click.option("--https", "https", metavar="HOST:PORT", default=None,
              help="Serve the seed API (POST /v1/seed, /healthz, /metrics) over TLS 1.3; "
                   "HOST:PORT[,rate=R,burst=B] sets the per-address request rate "
                   "(default 20/s, burst 100; rate=0: none).")
@click.option("--cert", metavar="FILE", default=None,
              help="TLS certificate chain (PEM) for --https; reloaded on SIGHUP.")
@click.option("--key", metavar="FILE", default=None,
              help="TLS private key (PEM) for --https; reloaded on SIGHUP.")
@click.option("--identity", "identities", multiple=True, metavar="KIND[:k=v,...]",
              help="An identity the seed API accepts: aws-iid:accounts=...,regions=..., "
                   "gce-iit:projects=...,audience=URL, token. Repeatable.")
@click.option("--ledger", metavar="SPEC", default=None, help=LEDGER_HELP)
@click.option("--issue-limit", type=click.IntRange(min=1), default=3, show_default=True,
              metavar="K", help="Seeds issued per instance boot.")
@click.option("--signing-key", metavar="FILE", default=None,
              help="The Ed25519 private key (`seedtool keygen`) envelopes are signed with.")
@click.option("--json", "as_json", is_flag=True, help="Log one JSON object per line.")
@click.pass_context
def command(ctx: click.Context, egd: tuple[str, ...], sources: tuple[str, ...],
            required: tuple[str, ...], rate: float | None, max_clients: int | None,
            control: str | None, no_control: bool, https: str | None, cert: str | None,
            key: str | None, identities: tuple[str, ...], ledger: str | None,
            issue_limit: int, signing_key: str | None, as_json: bool) -> None:
    """Serve health-tested entropy through a DRBG to local hypervisors, in the foreground.

    Sources are opened once and read continuously through the SP 800-90B health tests;
    every byte served comes from an HMAC_DRBG reseeded from them and from os. Logs go
    to stderr (ids and counts, never bytes). SIGTERM/SIGINT stop, SIGHUP reopens the
    sources. `seedtool serve status` asks a running daemon through its control socket.

    \b
    Example (QEMU: -chardev socket,id=egd,path=/run/seedtool/egd.sock,reconnect=5
    -object rng-egd,id=rng0,chardev=egd -device virtio-rng-pci,rng=rng0):
      seedtool serve --egd unix:/run/seedtool/egd.sock,mode=0660,group=kvm \\
                     --source hwrng --require hwrng

    \b
    The seed API for fleets (VMs prove who they are; every issuance is in the ledger
    before it is sent, at most --issue-limit per instance boot):
      seedtool serve --https 0.0.0.0:8443 --cert server.pem --key server.key \\
                     --signing-key seed.key --identity aws-iid:accounts=123456789012 \\
                     --identity token --source hwrng --require hwrng
    """
    if ctx.invoked_subcommand is not None:
        if egd or sources or required or rate is not None or max_clients or control \
                or no_control or as_json or https or cert or key or identities or ledger \
                or signing_key or issue_limit != 3:
            raise UsageError("give serve's options after `status`, or run `seedtool serve` "
                             "without a subcommand to start the daemon")
        return
    from ..serve.daemon import ServeConfig, listen_specs, run
    from ..serve.egd import DEFAULT_MAX_CLIENTS, DEFAULT_RATE
    from ..serve.log import EventLog

    if not egd and not https:
        raise UsageError("seedtool serve needs at least one --egd unix:PATH or "
                         "--egd tcp:127.0.0.1:PORT, or --https HOST:PORT, to listen on")
    if rate is not None and rate < 0:
        raise UsageError("--rate is in bytes per second and cannot be negative; 0 means none")
    config = ServeConfig(
        egd=listen_specs(egd), sources=sources, required=required,
        control=None if no_control else _control_path(control),
        rate=DEFAULT_RATE if rate is None else rate,
        max_clients=max_clients or DEFAULT_MAX_CLIENTS,
        https=https, cert=cert, key=key, identities=identities, ledger=ledger,
        issue_limit=issue_limit, signing_key=signing_key,
    )
    run(config, EventLog(as_json=as_json))


@command.command("status")
@click.option("--control", metavar="PATH", default=None, help=CONTROL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(control: str | None, as_json: bool) -> None:
    """Show a running daemon's sources, health, listeners and bytes served per client."""
    from ..serve.control import query

    answer = query(_control_path(control))
    if as_json:
        echo_json(answer)
        return
    for line in format_status(answer):
        click.echo(line)


def format_status(s: dict[str, Any]) -> list[str]:
    core = s.get("core") or {}
    lines = [f"serving: {'yes' if s.get('serving') else 'NO (a required source is unhealthy)'}"]
    lines.append("listeners: " + (", ".join(map(str, s.get("listeners") or [])) or "-"))
    lines.append("sources:")
    for src in core.get("sources") or []:
        health = "healthy" if src.get("healthy") else "UNHEALTHY"
        row = (f"  {src.get('name')}: {health}, {src.get('bytes', 0)} bytes read, "
               f"{src.get('failures', 0)} failures")
        if src.get("last_error"):
            row += f"; last error: {src['last_error']}"
        lines.append(row)
    drbg = core.get("drbg") or {}
    if drbg:
        lines.append("drbg: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in drbg.items()))
    lines.append(f"clients: {len(s.get('clients') or [])} connected, "
                 f"{s.get('connections_total', 0)} since start, "
                 f"{s.get('connections_refused', 0)} refused, "
                 f"{s.get('bytes_total', 0)} bytes served")
    for title, key in (("connected", "clients"), ("recently closed", "recently_closed")):
        rows = s.get(key) or []
        if rows:
            lines.append(f"{title}:")
        for c in rows:
            row = (f"  {c.get('id')} {c.get('listener')} {c.get('peer')}: "
                   f"{c.get('bytes', 0)} bytes in {c.get('requests', 0)} requests, "
                   f"{c.get('age_s', 0)} s")
            if c.get("closed"):
                row += f" ({c['closed']})"
            lines.append(row)
    return lines


@command.group("token")
def token() -> None:
    """Bootstrap tokens for the `token` identity (machines with no cloud identity)."""


@token.command("create")
@click.option("--count", type=click.IntRange(min=1, max=100000), default=1, show_default=True)
@click.option("--ttl", default="24h", show_default=True, metavar="T",
              help="How long the tokens are valid: seconds, or with s, m, h, d.")
@click.option("--ledger", metavar="SPEC", default=None, help=LEDGER_HELP)
def token_create(count: int, ttl: str, ledger: str | None) -> None:
    """Make COUNT tokens, store their SHA-256 digests in the ledger, print them one per line."""
    import time

    from ..identity.token import make_tokens, token_digest

    seconds = _duration(ttl, "--ttl")
    tokens = make_tokens(count)
    led = _open_ledger(ledger)
    try:
        now = time.time()
        led.add_tokens([token_digest(t) for t in tokens], created=now, expires=now + seconds)
    finally:
        led.close()
    for t in tokens:
        click.echo(t)


@command.group("ledger")
def ledger_group() -> None:
    """Audit the issuance ledger: ids, times, client addresses (never seeds)."""


@ledger_group.command("show")
@click.argument("instance")
@click.option("--ledger", metavar="SPEC", default=None, help=LEDGER_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def ledger_show(instance: str, ledger: str | None, as_json: bool) -> None:
    """Every issuance and refusal of INSTANCE (e.g. aws:123456789012:us-east-1:i-0abc)."""
    led = _open_ledger(ledger)
    try:
        _print_events(led.show(instance), as_json)
    finally:
        led.close()


@ledger_group.command("list")
@click.option("--since", required=True, metavar="WHEN",
              help="Seconds since the epoch, an ISO 8601 time, or an age such as 2h or 7d.")
@click.option("--ledger", metavar="SPEC", default=None, help=LEDGER_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def ledger_list(since: str, ledger: str | None, as_json: bool) -> None:
    """Every issuance and refusal at or after WHEN, oldest first."""
    when = _since(since)
    led = _open_ledger(ledger)
    try:
        _print_events(led.list(when), as_json)
    finally:
        led.close()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str, flag: str) -> float:
    t = text.strip()
    unit = _UNITS.get(t[-1:], None)
    number = t[:-1] if unit else t
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a duration such as 3600, 90m, 24h or 7d") \
            from None
    if not value > 0:
        raise UsageError(f"{flag} must be positive")
    return value


def _since(text: str) -> float:
    import time
    from datetime import datetime

    t = text.strip()
    if t[-1:] in _UNITS:
        return time.time() - _duration(t, "--since")
    try:
        return float(t)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r} is not epoch seconds, an ISO 8601 time or an "
                         "age such as 2h") from None


def _print_events(events: list[Any], as_json: bool) -> None:
    from dataclasses import asdict
    from datetime import datetime, timezone

    rows = [asdict(e) for e in events]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        at = datetime.fromtimestamp(r["at"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        what = f"issued {r['number']}" if r["event"] == "issued" else "REFUSED (too many)"
        line = f"{at} {r['instance']} {what} kind={r['kind']} client={r['client']}"
        if r.get("seed_id"):
            line += f" seed_id={r['seed_id']} key_id={r['key_id']}"
        click.echo(line)
