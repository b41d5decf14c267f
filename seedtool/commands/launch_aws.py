"""`seedtool launch aws`: EC2 instances, one RunInstances call and one fresh seed each.

Thin: parses the options, builds the `AwsLauncher` (seedtool.launch.aws), shows
progress on stderr and prints the table or JSON. Never prints a seed or user-data.
"""

from __future__ import annotations

import click

from ._launching import (
    announce_interrupt,
    finish,
    launch_options,
    launch_with_progress,
    read_params,
)
from ._options import SeedOptions, echo_json, seed_options

_HELP = """Launch COUNT EC2 instances, each by its own RunInstances call with its own fresh
seed merged into your user-data.

Why not one call with MaxCount, a launch template or an Auto Scaling group:
every instance they start gets the same user-data, so a seed stored there is shared,
and a shared seed is worse than none. Launch templates and ASGs must never hold a
seed: keep your user-data in the template and launch with
`seedtool launch aws --launch-template NAME`, which reads the template's user-data and
overrides UserData per instance with it plus a fresh seed; or, for Terraform and
other tools, make the user-data of each instance with `seedtool userdata`. A template
whose user-data already holds a seed, or --params with MaxCount above 1, is refused.

IMDSv2 is required (HttpTokens=required, hop limit 1) unless --allow-imdsv1: the
user-data holds the seed, and anything that reaches the instance metadata service
can read it.

Re-running: each launch has an id (printed first, on stderr). Each instance's
ClientToken is derived from it and its index, and re-running with --launch-id first
finds the instances already tagged with that id and launches only the missing
indices, each with a new seed. Instances are tagged seedtool:launch-id,
seedtool:index and seedtool:seed-id (the seed's public id, never the seed).

Credentials come from boto3's standard chain (environment, --profile, SSO, instance
role); retries use botocore's standard mode (AWS_MAX_ATTEMPTS sets the attempts).
Exit status: 0 when every instance exists, 1 when some failed, 130 after Ctrl-C (in
both cases the table lists every instance that exists).
"""


@click.command("aws", help=_HELP)
@seed_options
@launch_options(
    call="RunInstances call", limit="AWS's 16 KB limit", tagged="running under",
    params="RunInstances parameters, merged in; UserData, ClientToken, DryRun and a "
           "MaxCount above 1 are refused.")
@click.option("--image-id", default=None, metavar="AMI", help="AMI to launch (ami-...).")
@click.option("--instance-type", default=None, metavar="TYPE", help="e.g. t3.micro.")
@click.option("--subnet-id", default=None, metavar="SUBNET", help="Subnet (and so zone).")
@click.option("--security-group-ids", "security_groups", multiple=True, metavar="SG[,SG]",
              help="Security group ids (repeatable, or a comma-separated list).")
@click.option("--key-name", default=None, metavar="NAME", help="EC2 key pair name.")
@click.option("--iam-instance-profile", default=None, metavar="NAME|ARN",
              help="Instance profile by name or ARN.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
              help="Tag for each instance (repeatable); seedtool:* keys are reserved.")
@click.option("--launch-template", default=None, metavar="ID|NAME[:VERSION]",
              help="Launch from this template; its user-data (unless --user-data) gets a "
                   "fresh seed per instance. It must not hold a seed itself.")
@click.option("--dry-run", is_flag=True,
              help="Ask EC2 whether each call would succeed (DryRun); launches nothing.")
@click.option("--allow-imdsv1", is_flag=True,
              help="Do not require IMDSv2. The user-data holds the seed, and without a "
                   "session token any request that reaches the metadata service (an SSRF, "
                   "a container) can read it.")
@click.option("--profile", default=None, help="AWS profile from ~/.aws/config.")
@click.option("--region", default=None, help="AWS region [default: from the profile/env].")
@click.option("--endpoint-url", default=None, metavar="URL",
              help="EC2 endpoint (a VPC endpoint, or a test server).")
def command(seeds: SeedOptions, image_id: str | None,
            instance_type: str | None, count: int, subnet_id: str | None,
            security_groups: tuple[str, ...], key_name: str | None,
            iam_instance_profile: str | None, tags: tuple[str, ...],
            launch_template: str | None, user_data_path: str | None, params_path: str | None,
            concurrency: int, dry_run: bool, launch_id: str | None, allow_imdsv1: bool,
            profile: str | None, region: str | None, endpoint_url: str | None,
            as_json: bool) -> None:
    from ..launch import aws
    from ..launch.base import render_table
    from ._io import read_user_data

    request = aws.LaunchRequest(
        image_id=image_id, instance_type=instance_type, subnet_id=subnet_id,
        security_group_ids=aws.parse_security_groups(security_groups), key_name=key_name,
        iam_instance_profile=iam_instance_profile, tags=aws.parse_tags(tags),
        launch_template=launch_template,
        params=read_params(params_path, "RunInstances parameters", '{"EbsOptimized": true}'),
        allow_imdsv1=allow_imdsv1,
    )
    request.base_params()  # refuse bad options before touching AWS or the key
    resume = launch_id is not None
    lid = aws.check_launch_id(launch_id) if launch_id else aws.new_launch_id()
    user_data = read_user_data(user_data_path)
    client = aws.make_client(profile=profile, region=region, endpoint_url=endpoint_url)
    launcher = aws.AwsLauncher(client, request, launch_id=lid, user_data=user_data,
                               dry_run=dry_run)

    with seeds.factory() as f, announce_interrupt(lid):
        report = launch_with_progress(launcher, f, count, concurrency=concurrency,
                                      resume=resume)

    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(render_table(report.results))
    finish(report, count)
    if report.dry_run:
        click.echo(f"seedtool: dry run: EC2 would accept all {len(report.results)} calls; "
                   "nothing was launched", err=True)
