"""`seedtool launch gce`: Compute Engine instances, one insert and one fresh seed each.

Thin: parses the options, builds the `GceLauncher` (seedtool.launch.gce), shows
progress on stderr and prints the table or JSON. Never prints a seed or user-data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from . import _launching as launching
from ._options import SeedOptions, echo_json, seed_options

_HELP = """Launch COUNT Compute Engine instances, each by its own instances.insert with
its own fresh seed merged into your user-data (metadata key user-data).

Why not bulkInsert, an instance template or a managed instance group: every instance
they make gets the same metadata, so a seed stored there is shared, and a shared seed
is worse than none. Keep your user-data in the template if you like and launch with
--params '{"sourceInstanceTemplate": "projects/P/global/instanceTemplates/T"}': its
user-data (unless --user-data) gets a fresh seed per instance. A template whose
user-data already holds a seed, and bulkInsert fields in --params, are refused. For
Terraform and other tools, make each instance's user-data with `seedtool userdata`.

Names: --name web gives web-0, web-1, ...; --name 'web-{index}-a' places the index.
Instances are labelled seedtool-launch-id, seedtool-index and seedtool-seed-id (the
seed's public id, never the seed).

Re-running: each launch has an id (printed first, on stderr). Each insert's requestId
is derived from it and the index, so retries never make a second instance, and
re-running with --launch-id first lists the instances labelled with that id and
launches only the missing indices, each with a new seed.

--scrub-after-boot: GCE can change the metadata of a running VM. With guest
attributes turned on, the guest reports the seed id it consumed; seedtool then
rewrites the instance's metadata with your own user-data (or none) so the seed stops
being readable from the metadata server. An instance whose guest does not report in
--scrub-timeout seconds keeps its seed in metadata and is listed with a warning on
stderr and "scrubbed": false in --json (the exit status stays 0: it exists).

Without --network, --subnet or --params networkInterfaces each instance gets the
default network with an external address, as gcloud gives.

Credentials are Application Default Credentials (gcloud auth application-default
login, or GOOGLE_APPLICATION_CREDENTIALS); the project defaults to theirs.
Exit status: 0 when every instance exists, 1 when some failed, 130 after Ctrl-C (in
both cases the table lists every instance that exists).
"""


@click.command("gce", help=_HELP)
@seed_options
@launching.launch_options(
    call="insert", limit="GCE's 256 KB per value", tagged="labelled with",
    params="Instance fields (REST names), merged in; may name a sourceInstanceTemplate. "
           "bulkInsert fields are refused.")
@click.option("--project", default=None, help="Project [default: from your ADC, or "
              "GOOGLE_CLOUD_PROJECT].")
@click.option("--zone", required=True, help="Zone, e.g. us-central1-a.")
@click.option("--name", default="seedtool", show_default=True, metavar="NAME",
              help="Instances are NAME-<index>, or NAME with {index} filled in.")
@click.option("--machine-type", default=None, metavar="TYPE",
              help="e.g. e2-small [default: e2-medium, or the template's].")
@click.option("--image", default=None, metavar="IMAGE",
              help="Boot image: projects/P/global/images/NAME or "
                   "projects/P/global/images/family/FAMILY.")
@click.option("--network", default=None, help="VPC network [default: default].")
@click.option("--subnet", default=None, help="Subnetwork in the zone's region.")
@click.option("--service-account", default=None, metavar="EMAIL",
              help="Service account for the instances.")
@click.option("--scopes", default=None, metavar="SCOPE[,SCOPE]",
              help="OAuth scopes for the service account [default with "
                   "--service-account: cloud-platform].")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Label for each instance (repeatable); seedtool-* keys are reserved.")
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
              help="Metadata item for each instance (repeatable); not user-data: use "
                   "--user-data.")
@click.option("--scrub-after-boot", is_flag=True,
              help="Remove the seed from each instance's metadata once its guest reports "
                   "it consumed it (turns on guest attributes).")
@click.option("--scrub-timeout", default=900, show_default=True, type=click.IntRange(1),
              help="Seconds to wait for the guests' reports.")
@click.option("--endpoint", default=None, metavar="URL",
              help="Compute Engine API endpoint (a private endpoint, or a test server).")
def command(seeds: SeedOptions, project: str | None, zone: str,
            name: str, count: int, machine_type: str | None, image: str | None,
            network: str | None, subnet: str | None, service_account: str | None,
            scopes: str | None, labels: tuple[str, ...], metadata: tuple[str, ...],
            user_data_path: str | None, params_path: str | None, concurrency: int,
            launch_id: str | None, scrub_after_boot: bool, scrub_timeout: int,
            endpoint: str | None, as_json: bool) -> None:
    from ..launch import gce
    from ..launch.base import InstanceResult
    from ._io import read_user_data

    spec = gce.GceSpec(
        zone=zone, name=name, machine_type=machine_type, image=image, network=network,
        subnet=subnet, service_account=service_account,
        scopes=tuple(s.strip() for s in (scopes or "").split(",") if s.strip()),
        labels=gce.check_labels(gce.parse_pairs(labels, "--label")),
        metadata=gce.check_metadata(gce.parse_pairs(metadata, "--metadata")),
        user_data=read_user_data(user_data_path),
        params=launching.read_params(params_path, "Instance fields",
                           '{"scheduling": {"preemptible": true}}'),
        scrub_after_boot=scrub_after_boot,
    )
    spec.check()  # refuse bad options before touching GCE or the key
    gce.instance_names(name, count)
    resume = launch_id is not None
    lid = gce.check_launch_id(launch_id) if launch_id else gce.new_launch_id()

    with seeds.factory() as f, \
            gce.GceLauncher(spec, launch_id=lid, project=project,
                            endpoint=endpoint) as launcher:

        def scrub_line(r: InstanceResult) -> None:
            what = "seed removed from metadata" if r.extra.get("scrubbed") else "not scrubbed"
            click.echo(f"  index {r.index}: {r.instance_id}: {what}", err=True)

        with launching.announce_interrupt(lid):
            report = launching.launch_with_progress(launcher, f, count, concurrency=concurrency,
                                          resume=resume)
            if scrub_after_boot and not report.interrupted:
                click.echo(f"seedtool: waiting up to {scrub_timeout} s for the guests to "
                           "report their seeds, to remove them from metadata", err=True)
                report.interrupted = launcher.scrub(report, timeout=float(scrub_timeout),
                                                    on_done=scrub_line)

    if as_json:
        echo_json(report.as_dict())
    else:
        _table(report)
    for r, warning in report.warnings():
        click.echo(f"seedtool: warning: index {r.index} ({r.instance_id}): {warning}", err=True)
    _finish(report, count)


def _table(report: Any) -> None:
    from ..launch.base import render_table

    if "scrubbed" not in report.columns:
        click.echo(render_table(report.results))
        return
    shown = [dataclasses.replace(r, extra={"scrubbed": "yes" if r.extra.get("scrubbed")
                                           else "no"}) for r in report.results]
    click.echo(render_table(shown, columns=["scrubbed"]))


def _finish(report: Any, count: int) -> None:
    from ..launch import gce

    bad = [r for r in report.results if not r.ok]
    if report.interrupted and not bad:
        left = [str(r.instance_id) for r in report.results if not r.extra.get("scrubbed")]
        raise gce.LaunchInterrupted(
            f"interrupted while waiting for the guests: the seed is still in the metadata of "
            f"{', '.join(left) or 'no instance'}; re-run with --launch-id {report.launch_id} "
            "--scrub-after-boot and the same options to remove it"
        )
    launching.finish(report, count)
