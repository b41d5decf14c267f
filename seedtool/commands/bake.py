"""`seedtool bake` and `seedtool bake --check`: prepare a base image, and gate it in CI."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from ..shared.errors import UsageError

if TYPE_CHECKING:
    from ..image.fs import TargetFS


@contextlib.contextmanager
def _open(root: str | None, image: str | None, writable: bool, partition: int | None,
          backend: str) -> Iterator[TargetFS]:
    """--root DIR or --image DISK, opened by `open_target` (an image gets the same
    refusals as `seedtool image seed`: not mounted, not in use, writable when written)."""
    from ..image.open import Image, Root, open_target

    if (root is None) == (image is None):
        raise UsageError("give exactly one target: --root DIR or --image DISK")
    if root is not None and (partition is not None or backend != "auto"):
        raise UsageError("--partition and --backend go with --image, not --root")
    target = Root(root) if root is not None else Image(str(image))
    with open_target(target, writable=writable, partition=partition,
                     backend=backend) as opened:
        yield opened.fs


def _print_findings(target: str, findings: list[Any], as_json: bool, strict: bool) -> int:
    from ..bake import summary

    errors, warnings = summary(findings)
    failed = errors > 0 or (strict and warnings > 0)
    if as_json:
        click.echo(json.dumps({"target": target, "clean": not findings, "errors": errors,
                               "warnings": warnings,
                               "findings": [f.to_json() for f in findings]},
                              indent=2, sort_keys=True))
    elif not findings:
        click.echo(f"{target}: clean")
    else:
        for f in findings:
            click.echo(f"{f.path}: {f.severity}: {f.problem}\n    fix: {f.fix}")
        click.echo(f"{target}: {errors} error(s), {warnings} warning(s)")
    return 1 if failed else 0


def _seed_server_files(servers: tuple[str, ...], ca: str | None, timeout: float | None,
                       identity: str | None) -> dict[str, bytes]:
    """The --seed-server* options as the files install_guest writes (checked here)."""
    from ..bake.install import seed_server_files

    if not servers:
        raise UsageError("--seed-server-ca, --seed-server-timeout and --seed-server-identity "
                         "go with --seed-server URL")
    if ca is None:
        raise UsageError("--seed-server needs --seed-server-ca CA.pem: the guest trusts only "
                         "that CA for its seed servers")
    return seed_server_files(list(servers), ca, timeout=timeout,
                             identity=identity or "aws-iid")


@click.command("bake")
@click.option("--root", metavar="DIR", default=None,
              help="The image's root directory (a chroot, or / inside the image being built).")
@click.option("--image", metavar="DISK", default=None,
              help="A disk image (raw ext4 via debugfs; other formats via libguestfs).")
@click.option("--partition", type=int, default=None, metavar="N",
              help="With --image: the root file system's partition (default: found).")
@click.option("--backend", type=click.Choice(["auto", "debugfs", "libguestfs"]),
              default="auto", show_default=True,
              help="With --image: how to open it (auto: debugfs for raw ext4).")
@click.option("--trusted-key", "trusted_keys", multiple=True, metavar="PUB",
              help="Public key (.pub from 'seedtool keygen') whose seeds the image trusts; "
                   "repeatable. Required unless --check.")
@click.option("--policy", "policy_path", metavar="FILE", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="Seed policy JSON for the image (see docs/guest.md); default: defaults.")
@click.option("--machine-id", "machine_id", type=click.Choice(["uninitialized", "empty"]),
              default="uninitialized", show_default=True,
              help="How to reset /etc/machine-id on a systemd image: 'uninitialized' makes the "
                   "first boot a first boot (presets, ConditionFirstBoot); 'empty' gets a new "
                   "id without first-boot actions. Non-systemd images always get 'empty'.")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.option("--check", "check_only", is_flag=True,
              help="Only lint the target: exit 1 listing each finding, or print 'clean'.")
@click.option("--strict", is_flag=True, help="With --check: warnings fail too.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--scan-max-files", type=click.IntRange(min=1), default=None, metavar="N",
              help="Bound on the files the secret scan reads (default 1,000,000); reaching "
                   "it is a warning naming where the scan stopped.")
@click.option("--scan-max-bytes", type=click.IntRange(min=1), default=None, metavar="N",
              help="Bound on the bytes the secret scan reads (default 64 GiB).")
@click.option("--scan-max-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="S", help="Bound on the secret scan's time (default 1800 s).")
@click.option("--seed-server", "seed_servers", multiple=True, metavar="URL",
              help="An https seed server the guest asks for a seed at boot (repeatable; "
                   "all are asked at once). Needs --seed-server-ca.")
@click.option("--seed-server-ca", metavar="CA.pem", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate(s) of the CA the seed servers' certificates chain to; "
                   "the guest trusts only these, never the system store.")
@click.option("--seed-server-timeout", type=click.FloatRange(1, 60), default=None,
              metavar="S", help="Seconds for the whole fetch from every server (default 10).")
@click.option("--seed-server-identity", default=None,
              metavar="aws-iid|gce-iit|token:/PATH",
              help="The evidence the guest presents: the AWS identity document (default), "
                   "the GCE identity token, or a bootstrap token from a file in the image.")
def command(root: str | None, image: str | None, partition: int | None, backend: str,
            trusted_keys: tuple[str, ...], policy_path: str | None, machine_id: str,
            dry_run: bool, check_only: bool, strict: bool, as_json: bool,
            scan_max_files: int | None, scan_max_bytes: int | None,
            scan_max_seconds: float | None, seed_servers: tuple[str, ...],
            seed_server_ca: str | None, seed_server_timeout: float | None,
            seed_server_identity: str | None) -> None:
    """Prepare a base image: install the guest side, remove what VMs must not share.

    Installs seedtool's cloud-init module (into the distribution's own module list),
    the early-boot unit, the trusted public keys and the policy; removes SSH host keys,
    the machine id, every random-seed file, seedtool and cloud-init instance state and
    logs. On the running system (--root /) systemd-random-seed.service is stopped first,
    or shutdown would save a new seed into the image. Idempotent.

    With --check, changes nothing and exits 1 if anything shared is left or the guest
    would not credit a seed before SSH host keys are made: the gate after an image build.
    """
    import dataclasses

    from .. import bake as lib

    d = lib.SCAN_BOUNDS
    bounds = dataclasses.replace(
        d, max_files=d.max_files if scan_max_files is None else scan_max_files,
        max_bytes=d.max_bytes if scan_max_bytes is None else scan_max_bytes,
        max_seconds=d.max_seconds if scan_max_seconds is None else scan_max_seconds)
    server_options = (seed_servers or seed_server_ca or seed_server_timeout is not None
                      or seed_server_identity)
    if check_only:
        if trusted_keys or policy_path or dry_run or server_options:
            raise UsageError("--check only reads the target; drop --trusted-key, --policy, "
                             "--seed-server* and --dry-run")
        with _open(root, image, False, partition, backend) as fs:
            findings = lib.check(fs, bounds)
            target = fs.description
        code = _print_findings(target, findings, as_json, strict)
        if code:
            sys.exit(code)
        return
    if strict:
        raise UsageError("--strict goes with --check")
    if not trusted_keys:
        raise UsageError("give the image's trusted public key(s) with --trusted-key PUB "
                         "(the .pub from 'seedtool keygen')")
    policy: dict[str, Any] | None = None
    if policy_path is not None:
        from ..guest.policy import load_policy

        policy = load_policy(policy_path).to_json()
    servers = _seed_server_files(seed_servers, seed_server_ca, seed_server_timeout,
                                 seed_server_identity) if server_options else None
    live = root is not None and lib.is_live_root(root)
    if live and os.geteuid() != 0 and not dry_run:
        raise UsageError("baking the running system (--root /) needs root; run it with sudo")
    with _open(root, image, not dry_run, partition, backend) as fs:
        result = lib.bake(fs, list(trusted_keys), policy, dry_run=dry_run,
                          machine_id=machine_id, live=live, bounds=bounds,
                          seed_servers=servers)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
        return
    verb = "would change" if dry_run else "changed"
    for c in result.changes:
        click.echo(f"{c.action:8} {c.path}  ({c.what})")
    if live and not any(c.action == "stop" for c in result.changes):
        click.echo("systemd is not running here: no systemd-random-seed.service to stop")
    for f in result.left:
        click.echo(f"left     {f.path}  (not seedtool's to remove: {f.problem})\n"
                   f"    fix: {f.fix}")
    if not result.scanned:
        click.echo("the running system's tree was not scanned for other secrets: run "
                   "seedtool bake --check --root / on the finished image")
    note = " (dry run: nothing was changed)" if dry_run else ""
    click.echo(f"{result.target}: {verb} {len(result.changes)} path(s){note}")
