"""A click group whose subcommands come from a `Registry` and are imported when invoked.

Used by `seedtool` itself (seedtool.cli.COMMANDS) and by groups of subcommands such as
`seedtool launch`, so `--help` lists every subcommand from the registry's one-line help
without importing any of them (and so no cloud SDK).
"""

from __future__ import annotations

from typing import Any

import click

from ..registry import Registry


class LazyGroup(click.Group):
    """`@click.group(cls=LazyGroup, registry=REG, section="Commands")`."""

    def __init__(self, *args: Any, registry: Registry[click.Command],
                 section: str = "Commands", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registry = registry
        self.section = section

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.registry)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self.registry.find(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.registry.help(name)) for name in self.list_commands(ctx)]
        with formatter.section(self.section):
            formatter.write_dl(rows)
