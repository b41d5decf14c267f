"""`seedtool launch openstack`: Nova servers, one create call and one fresh seed each.

Thin: parses the options (those of `openstack server create`), connects with
openstacksdk's own configuration, runs the `OpenStackLauncher`
(seedtool.launch.openstack) on the launch engine and prints the table or JSON. Never
prints a seed or user-data.
"""

from __future__ import annotations

import click

from ._launching import announce_interrupt, finish, launch_with_progress
from ._options import SeedOptions, echo_json, seed_options

_HELP = """Launch COUNT OpenStack servers, each by its own "create server" call with its own
fresh seed merged into your user-data (nova's limit: 65,535 bytes of base64).

Why not --min/--max, a Heat ResourceGroup or an AutoScalingGroup: every server they
make gets the same user-data, so a seed stored there is shared, and a shared seed is
worse than none. --min/--max above 1, and user-data that already holds a seed, are
refused; keep your user-data without a seed and let seedtool add one per server (for
Heat and Terraform, make each server's user-data with `seedtool userdata`). A server
group (--hint group=ID) is a scheduling policy and fine: each member still gets its own
call and seed.

Servers are named NAME, or NAME-INDEX when --count is above 1, and carry metadata
seedtool:launch-id, seedtool:index and seedtool:seed-id (the seed's public id, never
the seed). Re-running with --launch-id lists the project's servers and launches only
the missing indices, each with a new seed (a server in ERROR is not counted: delete it).
Nova has no idempotency token, so after a failure on the cloud's side seedtool lists
the servers again before trying once more, and never makes an index twice that it can
see.

Credentials: --os-cloud (or OS_CLOUD) names a cloud in clouds.yaml; without it the
OS_* variables of an openrc file are used, as by the openstack command line.
Exit status: 0 when every server exists, 1 when some failed, 2 for a refused request,
130 after Ctrl-C (the table lists every server that exists).
"""


@click.command("openstack", help=_HELP)
@seed_options
@click.option("--name", required=True, help="Server name (NAME-INDEX when --count > 1).")
@click.option("--image", default=None, metavar="NAME|ID", help="Image to boot.")
@click.option("--flavor", default=None, metavar="NAME|ID", help="Flavor, e.g. m1.small.")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1000),
              help="How many servers, each with its own call and its own seed.")
@click.option("--network", "networks", multiple=True, metavar="NAME|ID",
              help="Network to attach (repeatable); default: nova's automatic choice.")
@click.option("--no-network", is_flag=True, help="Attach no network.")
@click.option("--key-name", default=None, metavar="NAME", help="Nova key pair name.")
@click.option("--security-group", "security_groups", multiple=True, metavar="NAME",
              help="Security group (repeatable).")
@click.option("--availability-zone", default=None, metavar="ZONE",
              help="Availability zone (ZONE, or ZONE:HOST for administrators).")
@click.option("--config-drive", is_flag=True,
              help="Attach a config drive (which keeps the user-data, and so the seed "
                   "envelope, for the server's life).")
@click.option("--property", "properties", multiple=True, metavar="KEY=VALUE",
              help="Metadata item for each server (repeatable); seedtool:* keys are reserved.")
@click.option("--hint", "hints", multiple=True, metavar="KEY=VALUE",
              help="Scheduler hint (repeatable), e.g. group=SERVER_GROUP_ID.")
@click.option("--min", "min_count", default=1, type=int, hidden=True,
              help="Refused above 1: nova's multi-create shares one user-data.")
@click.option("--max", "max_count", default=1, type=int, hidden=True,
              help="Refused above 1: nova's multi-create shares one user-data.")
@click.option("--user-data", "user_data_path", default=None, metavar="FILE",
              help="Your user-data (any format cloud-init reads); each server gets it plus "
                   "its own seed.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Create calls in flight at once.")
@click.option("--launch-id", default=None, metavar="ID",
              help="Resume or retry an earlier launch: indices that exist under this id are "
                   "reported, not launched again; the rest get new seeds.")
@click.option("--os-cloud", default=None, metavar="NAME",
              help="Cloud in clouds.yaml [default: $OS_CLOUD, else the OS_* variables].")
@click.option("--os-region-name", default=None, metavar="REGION",
              help="Region [default: from clouds.yaml or $OS_REGION_NAME].")
@click.option("--json", "as_json", is_flag=True,
              help="Print the launch id and every server as JSON (never the seeds).")
def command(seeds: SeedOptions, name: str, image: str | None, flavor: str | None,
            count: int, networks: tuple[str, ...], no_network: bool, key_name: str | None,
            security_groups: tuple[str, ...], availability_zone: str | None,
            config_drive: bool, properties: tuple[str, ...], hints: tuple[str, ...],
            min_count: int, max_count: int, user_data_path: str | None, concurrency: int,
            launch_id: str | None, os_cloud: str | None, os_region_name: str | None,
            as_json: bool) -> None:
    from ..clouds import openstack as cloud
    from ..launch import openstack as osl
    from ..launch.base import check_launch_id, new_launch_id, render_table
    from ._io import read_user_data

    request = osl.ServerRequest(
        name=name, image=image, flavor=flavor, networks=networks, no_network=no_network,
        key_name=key_name, security_groups=security_groups,
        availability_zone=availability_zone, config_drive=config_drive,
        properties=osl.parse_pairs(properties, "--property"),
        hints=osl.parse_pairs(hints, "--hint"), min_count=min_count, max_count=max_count,
    )
    request.check()  # refuse bad options before touching the cloud or the key
    lid = check_launch_id(launch_id) if launch_id else new_launch_id()
    user_data = read_user_data(user_data_path)
    conn = cloud.connect(os_cloud, region=os_region_name)

    with seeds.factory() as f, osl.OpenStackLauncher(
            conn, request, launch_id=lid, user_data=user_data, cloud_name=os_cloud) as launcher:
        with announce_interrupt(lid):
            report = launch_with_progress(launcher, f, count, concurrency=concurrency,
                                          resume=launch_id is not None)

    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(render_table(report.results, report.columns))
    finish(report, count)
