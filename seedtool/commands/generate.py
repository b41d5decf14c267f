"""`seedtool generate`: one fresh signed seed envelope, written atomically 0600."""

from __future__ import annotations

import json
import sys

import click

from ..shared.errors import UsageError
from ..shared.fileio import atomic_write
from ._options import SeedOptions, seed_options


@click.command("generate")
@seed_options
@click.option("-o", "--output", default="-", metavar="FILE|-",
              help="Where to write the envelope (base64 text); '-' is standard output.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the envelope's summary (never the seed) as JSON on stderr.")
def command(seeds: SeedOptions, output: str,
            as_json: bool) -> None:
    """Make a fresh seed from the chosen sources (always mixed with the OS CSPRNG),
    sign it, and write the envelope.

    The envelope holds the seed itself: treat the output like a private key and give
    each VM its own.
    """
    with seeds.factory() as f:
        seed = f.new()
    text = (seed.text + "\n").encode()
    if output == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to print a seed to a terminal; use -o FILE or a pipe")
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
    else:
        atomic_write(output, text, mode=0o600)
    if as_json:
        click.echo(json.dumps(seed.summary, sort_keys=True), err=True)
    else:
        click.echo(f"seed {seed.seed_id} ({seeds.nbytes} bytes) signed by key "
                   f"{seed.summary['key_id']}", err=True)
