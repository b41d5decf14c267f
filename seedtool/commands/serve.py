"""`seedtool serve`: the host's entropy daemon (EGD for virtio-rng); `serve status`."""

from __future__ import annotations

import json
from typing import Any

import click

from ..shared.errors import UsageError
from ._options import echo_json

CONTROL_HELP = ("Control socket (default /run/seedtool/control.sock as root, else "
                "$XDG_RUNTIME_DIR/seedtool/control.sock).")


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
@click.option("--json", "as_json", is_flag=True, help="Log one JSON object per line.")
@click.pass_context
def command(ctx: click.Context, egd: tuple[str, ...], sources: tuple[str, ...],
            required: tuple[str, ...], rate: float | None, max_clients: int | None,
            control: str | None, no_control: bool, as_json: bool) -> None:
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
    """
    if ctx.invoked_subcommand is not None:
        if egd or sources or required or rate is not None or max_clients or control \
                or no_control or as_json:
            raise UsageError("give serve's options after `status`, or run `seedtool serve` "
                             "without a subcommand to start the daemon")
        return
    from ..serve.daemon import ServeConfig, listen_specs, run
    from ..serve.egd import DEFAULT_MAX_CLIENTS, DEFAULT_RATE
    from ..serve.log import EventLog

    if not egd:
        raise UsageError("seedtool serve needs at least one --egd unix:PATH or "
                         "--egd tcp:127.0.0.1:PORT to listen on")
    if rate is not None and rate < 0:
        raise UsageError("--rate is in bytes per second and cannot be negative; 0 means none")
    config = ServeConfig(
        egd=listen_specs(egd), sources=sources, required=required,
        control=None if no_control else _control_path(control),
        rate=DEFAULT_RATE if rate is None else rate,
        max_clients=max_clients or DEFAULT_MAX_CLIENTS,
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
