"""`seedtool userdata`: the user's own user-data plus one fresh seed, every user part kept.

The output holds the seed: it is written atomically with mode 0600, or to a pipe, and
never to a terminal. Only the seed id and a summary without the seed are printed.
"""

from __future__ import annotations

import json
import sys

import click

from ..launch import LAUNCHERS
from ..shared.errors import UsageError
from ._io import read_user_data
from ._options import SeedOptions, seed_options


@click.command("userdata")
@seed_options
@click.option("--in", "input_path", metavar="USER_DATA|-", default=None,
              help="Your user-data (any format cloud-init reads, gzip too); '-' is "
                   "standard input. Without it the output holds only the seed.")
@click.option("-o", "--output", default="-", metavar="FILE|-", show_default=True,
              help="Where to write the user-data with the seed; '-' is standard output "
                   "(refused on a terminal).")
@click.option("--target", type=click.Choice(["raw", *LAUNCHERS]), default="raw",
              show_default=True,
              help="The launcher whose user-data size limit to respect (aws 16384 bytes "
                   "before base64, gce 262144 per metadata value), or raw for none. Gzip is "
                   "used when only it fits.")
@click.option("--compress", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True,
              help="auto: gzip when the input was gzip or only gzip fits the target.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a summary (seed id, key, format, size; never the seed) as JSON.")
def command(seeds: SeedOptions, input_path: str | None,
            output: str, target: str, compress: str, as_json: bool) -> None:
    """Add a fresh signed seed to your user-data without changing any of your parts.

    The seed goes in as cloud-init's own `random_seed` (a cloud-config part merged after
    yours: your random_seed file and command are kept, its data is replaced). Each
    output holds its own seed: make one per VM.
    """
    from ..deliver import userdata
    from ..shared.fileio import atomic_write

    if output == "-" and sys.stdout.isatty():
        raise UsageError(
            "refusing to print user-data holding a seed to a terminal; use -o FILE or a pipe"
        )
    user_data = read_user_data(input_path)
    userdata.check(user_data)  # refuse bad input before reading any entropy source
    with seeds.factory() as f:
        seed = f.new()
    limit = "raw" if target == "raw" else LAUNCHERS.load(target).target
    result = userdata.build(user_data, seed.text, target=limit, compress=compress)
    if output == "-":
        sys.stdout.buffer.write(result.data)
        sys.stdout.flush()
    else:
        atomic_write(output, result.data, mode=0o600)
    if as_json:
        summary = {"output": output, "user_data": result.summary(), **seed.summary}
        click.echo(json.dumps(summary, sort_keys=True), err=output == "-")
    else:
        gz = ", gzipped" if result.gzipped else ""
        click.echo(
            f"seed {seed.seed_id} added to {result.input_format} user-data "
            f"({result.size} bytes{gz}, target {target})",
            err=True,
        )
