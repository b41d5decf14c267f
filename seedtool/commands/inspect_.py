"""`seedtool inspect`: everything about an envelope except the seed bytes."""

from __future__ import annotations

import time

import click

from ..shared import envelope
from ._io import read_envelope_file
from ._options import echo_json


@click.command("inspect")
@click.argument("file", metavar="FILE|-")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def command(file: str, as_json: bool) -> None:
    """Show an envelope's seed id, key id, times and provenance.

    This does not check the signature: use `seedtool verify` for that.
    """
    env = envelope.parse(read_envelope_file(file))
    info = env.summary()
    info["seed_bytes"] = env.seed_len
    info["signature"] = "not checked (use seedtool verify)"
    if as_json:
        echo_json(info)
        return
    now = time.time()
    click.echo(f"format:     {info['format']}")
    click.echo(f"seed id:    {info['seed_id']}")
    click.echo(f"key id:     {info['key_id']}")
    credit = min(8 * env.seed_len, envelope.MAX_CREDIT_BITS)
    click.echo(f"seed size:  {env.seed_len} bytes (at most {credit} bits credited)")
    click.echo(f"issued at:  {_ts(env.issued_at)}")
    state = "expired" if now > env.not_after else f"{int(env.not_after - now)} s left"
    click.echo(f"not after:  {_ts(env.not_after)} ({state})")
    for src in info["provenance"].get("sources", []):
        if not isinstance(src, dict):
            continue
        extras = ", ".join(f"{k}={v}" for k, v in src.items() if k not in ("name", "bytes"))
        click.echo(f"source:     {src.get('name')}: {src.get('bytes')} bytes"
                   + (f" ({extras})" if extras else ""))
    click.echo(f"signature:  {info['signature']}")


def _ts(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
