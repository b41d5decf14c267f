"""The `seedtool` command line: parses arguments, picks implementations, prints.

Commands live one per module in `seedtool.commands` and are imported only when
invoked, so `seedtool generate` never imports boto3, google-cloud or pyusb.
To add a command: a new module with a click command named `command`, and one
line in `COMMANDS`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from .shared.errors import SeedtoolError

#: command name -> module in seedtool.commands (each defines `command`)
COMMANDS: dict[str, str] = {
    "sources": "sources",
    "keygen": "keygen",
    "generate": "generate",
    "inspect": "inspect_",
    "verify": "verify",
    "launch": "launch",
    "nocloud": "nocloud",
    "userdata": "userdata",
    "image": "image",
    "bake": "bake",
}

HELP: dict[str, str] = {
    "sources": "List entropy sources, whether each is usable here, and a health sample.",
    "keygen": "Create an Ed25519 signing key and the public key to bake into images.",
    "generate": "Make a fresh signed seed envelope.",
    "inspect": "Show an envelope's id, key, times and provenance (never the seed).",
    "verify": "Check an envelope's signature and validity period.",
    "launch": "Launch VMs (local QEMU now), each with its own fresh seed, and report.",
    "nocloud": "Write a NoCloud cidata ISO whose user-data carries a fresh seed.",
    "userdata": "Add a fresh seed to your user-data, keeping every part of it as is.",
    "image": "Work on disk images before they boot (seed: a fresh seed for the first boot).",
    "bake": "Prepare a base image (guest side in, shared secrets out); --check lints one.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        cmd: click.Command = importlib.import_module(f"seedtool.commands.{module}").command
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="seedtool")
@click.option("-v", "--verbose", is_flag=True, help="Show the cause of errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Fresh, signed entropy for every VM, credited before its first secret."""
    ctx.obj = {"verbose": verbose}


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="seedtool", standalone_mode=False)
    except SeedtoolError as e:
        click.echo(f"seedtool: error: {e}", err=True)
        verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
        if verbose and e.__cause__ is not None:
            click.echo(f"  caused by: {type(e.__cause__).__name__}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("seedtool: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("seedtool: interrupted", err=True)
        sys.exit(130)
