"""The `seedtool` command line: parses arguments, picks implementations, prints.

Commands live one per module in `seedtool.commands` and are imported only when
invoked, so `seedtool generate` never imports boto3, google-cloud or pyusb, and
`seedtool --help` imports no command at all. To add a command: a new module with a
click command named `command`, and one line in `COMMANDS`.

An error is one sentence on stderr (what went wrong, what to do) and a non-zero exit.
With -v the chain of its causes follows, one per line, and its longer diagnostic if it
has one; -vv adds where each was raised. Only messages are shown, never data.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import click

from .commands._lazy import LazyGroup
from .registry import Registry
from .shared.errors import SeedtoolError

#: command name -> (its click command, one-line help for `seedtool --help`)
COMMANDS: Registry[click.Command] = Registry("command", {
    "sources": ("seedtool.commands.sources:command",
                "List entropy sources, whether each is usable here, and a health sample."),
    "keygen": ("seedtool.commands.keygen:command",
               "Create an Ed25519 signing key and the public key to bake into images."),
    "generate": ("seedtool.commands.generate:command", "Make a fresh signed seed envelope."),
    "inspect": ("seedtool.commands.inspect_:command",
                "Show an envelope's id, key, times and provenance (never the seed)."),
    "verify": ("seedtool.commands.verify:command",
               "Check an envelope's signature and validity period."),
    "launch": ("seedtool.commands.launch:command",
               "Start cloud instances or local QEMU VMs, each with its own fresh seed."),
    "nocloud": ("seedtool.commands.nocloud:command",
                "Write a NoCloud cidata ISO whose user-data carries a fresh seed."),
    "userdata": ("seedtool.commands.userdata:command",
                 "Add a fresh seed to your user-data, keeping every part of it as is."),
    "image": ("seedtool.commands.image:command",
              "Work on disk images that are not running (seed: a seed for the next boot)."),
    "bake": ("seedtool.commands.bake:command",
             "Prepare a base image (guest side in, shared secrets out); --check lints one."),
    "serve": ("seedtool.commands.serve:command", "Feed VMs health-tested entropy over EGD."),
    "fetch": ("seedtool.commands.fetch:command",
              "Ask seed servers for envelopes bound to this machine, as the guest does."),
})


class _Seedtool(LazyGroup):
    """The top-level group: reports a SeedtoolError as one sentence (more under -v)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SeedtoolError as e:
            report_error(e, ctx.params.get("verbose", 0))
            sys.exit(e.exit_code)


@click.group(cls=_Seedtool, registry=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="seedtool")
@click.option("-v", "--verbose", count=True,
              help="On an error, show its causes and longer diagnostic; -vv also where "
                   "each was raised.")
def cli(verbose: int) -> None:
    """Fresh, signed entropy for every VM, credited before its first secret."""


def report_error(err: SeedtoolError, verbosity: int = 0) -> None:
    """Print `err` on stderr: one sentence, then (verbosity >= 1) its detail and causes."""
    click.echo(f"seedtool: error: {err}", err=True)
    if verbosity < 1:
        return
    for line in _explain(err, verbosity):
        click.echo(line, err=True)


def _explain(err: BaseException, verbosity: int) -> list[str]:
    lines: list[str] = []
    seen: set[int] = set()
    exc: BaseException | None = err
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        indent = "  "
        if exc is not err:
            lines.append(f"  caused by: {type(exc).__name__}: {_message(exc)}")
            indent = "    "
        if verbosity >= 2:
            lines.append(f"{indent}raised at {_where(exc)}")
        if isinstance(exc, SeedtoolError):
            lines.extend(indent + line for line in exc.detail.splitlines())
        # `raise ... from None` only sets __suppress_context__; the context is still there
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return lines


#: a bytes literal, or a run of 24+ hex or base64 characters: data, not words or a path
_DATA = re.compile(r"""b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*"|[A-Za-z0-9+/=_-]{24,}""")


def _is_data(run: str) -> bool:
    if run.startswith("b") and run[1:2] in ("'", '"'):
        return True
    # hex, or mixed-case like base64 (random base64 of 24+ characters is all one case
    # with odds below 1e-8); a lower-case path or word is kept
    hex_only = all(c in "0123456789abcdefABCDEF" for c in run)
    return hex_only or (any(c.isupper() for c in run) and any(c.islower() for c in run))


def _message(exc: BaseException) -> str:
    """A cause's message, without any data it may quote (it could be seed or key bytes)."""
    if isinstance(exc, (SeedtoolError, OSError)):
        return str(exc)  # ours never hold data (seedtool.shared.errors); OSError: strerror, paths
    if isinstance(exc, UnicodeError):
        return str(getattr(exc, "reason", "")) or "cannot decode the text"
    text = (str(exc).splitlines() or [""])[0]
    text = _DATA.sub(lambda m: "…" if _is_data(m.group()) else m.group(), text)
    return text if len(text) <= 200 else text[:200] + "…"


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is None:
        return "an unknown place"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}"


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="seedtool", standalone_mode=False)
    except SeedtoolError as e:  # raised before a command ran, e.g. by an option's callback
        report_error(e)
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
