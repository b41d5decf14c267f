"""`seedtool nocloud`: a NoCloud `cidata` seed ISO carrying a fresh seed in its user-data."""

from __future__ import annotations

import json

import click

from ._io import read_user_data
from ._options import SeedOptions, seed_options


@click.command("nocloud")
@seed_options
@click.option("--user-data", "user_data_path", metavar="FILE", default=None,
              help="Your own user-data ('-' is standard input); the seed is added to it, "
                   "every part kept as is.")
@click.option("--instance-id", default=None, metavar="ID",
              help="Instance id for meta-data (default: a fresh one, so cloud-init runs "
                   "its first-boot modules).")
@click.option("--hostname", default=None, help="local-hostname for meta-data.")
@click.option("-o", "--output", required=True, metavar="FILE",
              help="Where to write the ISO (mode 0600: it holds the seed).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the seed's summary and instance id (never the seed) as JSON.")
def command(seeds: SeedOptions, user_data_path: str | None,
            instance_id: str | None, hostname: str | None, output: str,
            as_json: bool) -> None:
    """Write a NoCloud seed ISO (volume label cidata) whose user-data carries a fresh
    signed seed.

    Attach it to a VM as a CD-ROM or second disk; cloud-init's NoCloud datasource
    reads it. Each ISO holds its own seed: make one per VM.
    """
    from ..deliver.nocloud import nocloud_iso
    from ..deliver.userdata import add_seed
    from ..shared.fileio import atomic_write

    user_data = read_user_data(user_data_path)
    with seeds.factory() as f:
        seed = f.new()
    image, iid = nocloud_iso(
        add_seed(user_data, seed.text), instance_id=instance_id, hostname=hostname
    )
    atomic_write(output, image, mode=0o600)
    if as_json:
        click.echo(json.dumps({"output": output, "instance_id": iid, **seed.summary},
                              sort_keys=True))
    else:
        click.echo(f"{output}: instance {iid}, seed {seed.seed_id} signed by key "
                   f"{seed.summary['key_id']}", err=True)
