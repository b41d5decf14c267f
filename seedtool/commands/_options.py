"""Options shared by every command that makes seeds (generate, userdata, nocloud, image
seed, launch).

`seed_options` adds --key/--passphrase-file/--source/--require/--bytes/--ttl and hands
the command one `seeds: SeedOptions`; `with seeds.factory() as f:` builds the
`SeedFactory` and reports failed optional sources, so every delivery path makes seeds
and warns the same way.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

import click

from ..shared.envelope import SEED_DEFAULT
from ..shared.errors import SigningKeyError, UsageError

if TYPE_CHECKING:
    from ..generate import SeedFactory

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_KEY_ENV = "SEEDTOOL_KEY"
PASSPHRASE_ENV = "SEEDTOOL_KEY_PASSPHRASE"


#: where the signing key is when --key (keygen: -o) is not given, for help texts
KEY_DEFAULT_HELP = f"(default ${DEFAULT_KEY_ENV} or ~/.config/seedtool/signing.key)"


def default_key_path() -> str:
    env = os.environ.get(DEFAULT_KEY_ENV)
    if env:
        return env
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "seedtool", "signing.key")


def _parse_duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise UsageError(
            f"--ttl '{text}' is not a duration; write e.g. 3600, 90m, 1h or 2d"
        ) from None


@dataclass(frozen=True)
class SeedOptions:
    """How a command makes seeds: the values of the options `seed_options` adds.

    `with seeds.factory() as f:` builds the `SeedFactory`; when the block ends without
    an error, every optional source that contributed nothing is reported on stderr, the
    same way for every command that makes seeds.
    """

    key_path: str | None = None
    passphrase_file: str | None = None
    sources: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    nbytes: int = SEED_DEFAULT
    ttl: str = "1h"

    def build(self) -> SeedFactory:
        """The `SeedFactory` these options describe (imports the heavy parts lazily)."""
        from ..generate import SeedFactory
        from ..keys import load_private_key
        from ..sources import parse_source_spec, source_class

        specs = [parse_source_spec(s) for s in self.sources]
        for r in self.required:
            source_class(r)
        key = load_private_key(self.key_path or default_key_path(),
                               read_passphrase(self.passphrase_file))
        return SeedFactory(
            key,
            sources=specs,
            required=list(self.required),
            nbytes=self.nbytes,
            ttl=_parse_duration(self.ttl),
        )

    @contextmanager
    def factory(self) -> Iterator[SeedFactory]:
        """The factory, closed at the end; failed optional sources reported on success."""
        with self.build() as f:
            yield f
            warn_failures(f)


_SEED_PARAMS = ("key_path", "passphrase_file", "sources", "required", "nbytes", "ttl")


def seed_options(f: F) -> F:
    """Add the seed options to a click command; it receives them as one `seeds: SeedOptions`."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _SEED_PARAMS}
        return f(*args, seeds=SeedOptions(**values), **kwargs)

    options = [
        click.option(
            "--key",
            "key_path",
            metavar="FILE",
            default=None,
            help=f"Ed25519 signing key {KEY_DEFAULT_HELP}.",
        ),
        click.option(
            "--passphrase-file",
            type=click.Path(dir_okay=False),
            default=None,
            help=f"File holding the signing key's passphrase (or set ${PASSPHRASE_ENV}).",
        ),
        click.option(
            "--source",
            "sources",
            multiple=True,
            metavar="NAME[:k=v,...]",
            help="Entropy source to mix in (repeatable); 'os' is always mixed in.",
        ),
        click.option(
            "--require",
            "required",
            multiple=True,
            metavar="NAME",
            help="Fail if this source is unavailable or fails a health test.",
        ),
        click.option(
            "--bytes",
            "nbytes",
            type=int,
            default=SEED_DEFAULT,
            show_default=True,
            help="Seed size in bytes (the guest credits 8 bits per byte, at most 512 bits).",
        ),
        click.option(
            "--ttl",
            default="1h",
            show_default=True,
            help="How long the seed stays valid (seconds, or 90m, 1h, 2d).",
        ),
    ]
    decorated: Any = wrapper
    for opt in reversed(options):
        decorated = opt(decorated)
    return cast(F, decorated)


def read_passphrase(passphrase_file: str | None) -> bytes | None:
    if passphrase_file:
        try:
            with open(passphrase_file, "rb") as fh:
                return fh.read().rstrip(b"\r\n")
        except OSError as e:
            raise SigningKeyError(
                f"cannot read passphrase file {passphrase_file}: {e.strerror}"
            ) from None
    env = os.environ.get(PASSPHRASE_ENV)
    return env.encode() if env else None


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def warn_failures(factory: Any) -> None:
    """Tell the user on stderr which optional sources contributed nothing, and why."""
    for name, reason in factory.failures():
        click.echo(f"seedtool: warning: source '{name}' contributed nothing: {reason}", err=True)
