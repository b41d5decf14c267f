"""The one interface every entropy source implements.

A source is a small object that knows how to find its device or service, say in
plain words why it cannot be used, and read bytes. It never health-tests or mixes
its own output: `seedtool.health` and `seedtool.mix` do that for every source alike.
A source must never log or put its output into an exception message.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import UsageError


@dataclass(frozen=True)
class Availability:
    """Whether a source can be read here, and if not, why (a sentence with the fix)."""

    ok: bool
    reason: str = ""
    detail: Mapping[str, str] | None = None

    @classmethod
    def yes(cls, detail: Mapping[str, str] | None = None) -> Availability:
        return cls(True, "", detail)

    @classmethod
    def no(cls, reason: str, detail: Mapping[str, str] | None = None) -> Availability:
        return cls(False, reason, detail)


class Source(abc.ABC):
    """An entropy source.

    Subclasses set the class attributes and implement `available()` and `read()`.
    `options` carries source-specific settings from the command line
    (`--source NAME:key=value,...`), e.g. a device path or a KMS key.
    """

    #: short name used on the command line (`--source NAME`)
    name: ClassVar[str]
    #: one line for `seedtool sources`
    description: ClassVar[str]
    #: assumed min-entropy in bits per sample, the H of SP 800-90B (configurable)
    min_entropy: ClassVar[float] = 8.0
    #: bits per sample as the health tests see them: 8 (bytes) or 1 (bits)
    sample_bits: ClassVar[int] = 8
    #: True when the output is raw noise, False when the device already conditions it
    raw: ClassVar[bool] = False
    #: the extra that provides this source's third-party package, if any
    extra: ClassVar[str | None] = None

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)
        h = options.get("min_entropy")
        if h is not None:
            self.min_entropy = float(h)  # type: ignore[misc]

    @abc.abstractmethod
    def available(self) -> Availability:
        """Whether `read()` can work here; never raises for an absent device."""

    @abc.abstractmethod
    def read(self, n: int) -> bytes:
        """Return exactly `n` bytes or raise a `SourceError` subclass."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device or connection; safe to call twice."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reject_unknown_options(source: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
    """A typo such as `regoin=` is an error, not a silently ignored option."""
    known = list(known)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(
            f"unknown {source} option '{unknown[0]}'; known options are: {', '.join(known)}"
        )


def parse_host_port(spec: str, source: str, example: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 hosts in brackets) from a `tcp=` option."""
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{source} tcp= must be HOST:PORT, e.g. tcp={example}, not '{spec}'")
    return host, int(port)
