"""`seedtool launch`: start instances, each with its own fresh seed.

The subcommands are the launchers of seedtool.launch.LAUNCHERS, loaded only when
invoked, so `seedtool launch qemu` never imports a cloud SDK: `seedtool launch NAME`
imports that launcher's class and runs its `command`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, cast

import click

from ..launch import LAUNCHERS
from ._lazy import LazyGroup
from ._options import SeedOptions, seed_options


class _Launchers(LazyGroup):
    """The launcher registry's entries as subcommands: each launcher names its command."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        launcher = LAUNCHERS.find(cmd_name)
        if launcher is None:
            return None
        module, _, attr = launcher.command.partition(":")
        return cast(click.Command, getattr(importlib.import_module(module), attr))


@click.group("launch", cls=_Launchers, registry=LAUNCHERS, section="Launchers")
def command() -> None:
    """Launch instances, each with its own fresh signed seed, and report each one's seed id."""


# --- qemu --------------------------------------------------------------------------------


def _path(p: str | None) -> Path | None:
    return Path(p) if p else None


@click.command("qemu")
@seed_options
@click.option("--image", required=True, metavar="DISK",
              help="Base disk image (raw or qcow2); never written, each VM gets an overlay.")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1000),
              help="How many VMs, each with its own seed.")
@click.option("--kernel", default=None, metavar="FILE",
              help="Boot this kernel directly (for images without a boot loader).")
@click.option("--initrd", default=None, metavar="FILE", help="Initrd for --kernel.")
@click.option("--append", default=None, metavar="CMDLINE",
              help="Kernel command line for --kernel [default: root=/dev/vda rw console=ttyS0].")
@click.option("--memory", default=1024, show_default=True, type=int, help="MiB per VM.")
@click.option("--cpu", default=None, help="QEMU -cpu model [default: host with KVM, max with TCG].")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True,
              help="auto uses KVM when /dev/kvm can boot a stock kernel, else TCG.")
@click.option("--rng", "rng_spec", default="none", show_default=True,
              metavar="none|urandom|egd:PATH",
              help="What feeds each VM's virtio-rng: none (no device), urandom (the host's "
                   "/dev/urandom) or egd:PATH (an EGD daemon's UNIX socket, e.g. seedtool "
                   "serve --egd unix:PATH); optional ,max-bytes=N,period=MS (rate limit, "
                   "default 1024 bytes per 1000 ms) and, for egd, ,reconnect=S.")
@click.option("--user-data", "user_data_path", default=None, metavar="FILE",
              help="Your user-data; each VM gets it plus its own seed.")
@click.option("--parallel", default=None, type=click.IntRange(1, 64),
              help="VMs booting at once [default: number of CPUs].")
@click.option("--timeout", default=900, show_default=True, type=int,
              help="Seconds to wait for each VM's report.")
@click.option("--workdir", default=None, metavar="DIR",
              help="Keep overlays and serial logs here (default: a temporary directory).")
@click.option("--keep-running", is_flag=True,
              help="Leave the VMs up after reporting and print how to reach them.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def qemu(seeds: SeedOptions, image: str, count: int,
         kernel: str | None, initrd: str | None, append: str | None, memory: int,
         cpu: str | None, accel: str, rng_spec: str, user_data_path: str | None,
         parallel: int | None,
         timeout: int, workdir: str | None, keep_running: bool, as_json: bool) -> None:
    """Boot COUNT VMs from DISK, each with a fresh seed on its own NoCloud ISO, and
    report each VM's seed id, what the guest credited, and its SSH host key fingerprints.

    The VMs are powered off after reporting unless --keep-running is given.
    """
    from ..launch.base import run_launch
    from ..launch.qemu import (
        MachineConfig,
        QemuLauncher,
        find_tool,
        parse_rng,
        terminate_as_interrupt,
    )
    from ._io import read_user_data

    find_tool("qemu-system-x86_64")
    find_tool("qemu-img")
    config = MachineConfig(
        image=Path(image), kernel=_path(kernel), initrd=_path(initrd), append=append,
        memory=memory, cpu=cpu, accel=accel, rng=parse_rng(rng_spec),
    )
    config.check()
    user_data = read_user_data(user_data_path)
    interactive = sys.stderr.isatty() and not as_json

    def progress(vm: str, msg: str) -> None:
        if interactive:
            click.echo(f"  {vm}: {msg}", err=True)

    if interactive:
        click.echo(f"booting {count} VM(s) from {image}; under TCG a boot takes about a "
                   "minute", err=True)
    launcher = QemuLauncher(config, user_data=user_data, keep_running=keep_running,
                            workdir=_path(workdir), timeout=float(timeout), progress=progress)
    # Ctrl-C or SIGTERM: the engine stops, the launcher kills this launch's VMs
    with seeds.factory() as f, launcher, terminate_as_interrupt():
        report = run_launch(launcher, f, count,
                            concurrency=parallel or max(1, os.cpu_count() or 1))
    reports = launcher.vm_reports(report)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2, sort_keys=True))
    else:
        _print_table(reports)
        if keep_running:
            _print_access(reports)
    if report.interrupted:
        raise KeyboardInterrupt
    if any(r.error for r in reports):
        sys.exit(1)


def _print_table(reports: list[Any]) -> None:
    header = f"{'VM':<6} {'SEED ID':<32} {'VERDICT':<11} {'BITS':>5}  HOST KEYS"
    click.echo(header)
    for r in reports:
        keys = [f"{k.type} {k.fingerprint}" for k in r.host_keys] or ["-"]
        verdict = "failed" if r.error else r.verdict
        click.echo(f"{r.name:<6} {r.seed_id:<32} {verdict:<11} {r.credited_bits:>5}  {keys[0]}")
        for k in keys[1:]:
            click.echo(f"{'':<6} {'':<32} {'':<11} {'':>5}  {k}")
        if r.error:
            for line in r.error.splitlines():
                click.echo(f"{'':<6} {line}")
        elif r.reason:
            click.echo(f"{'':<6} reason: {r.reason}")


def _print_access(reports: list[Any]) -> None:
    click.echo("")
    click.echo("The VMs keep running. Reach each one's sshd through QEMU's user-mode network "
               "(log in as a user your user-data gave an SSH key, e.g. 'debian'):")
    for r in reports:
        if r.pid is None:
            continue
        click.echo(f"  {r.name}: ssh -p {r.ssh_port} debian@127.0.0.1    (stop: kill {r.pid}; "
                   f"files: {r.workdir})")
