"""The one interface every entropy source implements.

A source is a small object that knows how to find its device or service, say in
plain words why it cannot be used, and read bytes. It never health-tests or mixes
its own output: `seedtool.health` and `seedtool.shared.mix` do that for every source alike.
A source must never log or put its output into an exception message.
"""

from __future__ import annotations

import abc
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, overload

from ..shared.errors import UsageError


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
    #: every option the source reads, name -> one line of help for `seedtool sources`.
    #: A class lists the options it adds; its bases' are merged in when the class is
    #: made (`__init_subclass__`), so after that this holds all the class takes.
    #: `__init__` refuses any other name: a typo is an error, never an ignored option.
    known_options: ClassVar[Mapping[str, str]] = MappingProxyType({
        "min_entropy": "assumed min-entropy in bits per sample for the health tests",
    })
    #: False for a source that takes none of its bases' options (the kernel CSPRNG is
    #: not health-tested, so a min_entropy= for it would be silently ignored)
    inherit_options: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        merged = dict(cls.__dict__.get("known_options", {}))
        if cls.__dict__.get("inherit_options", True):
            for base in cls.__mro__[1:]:
                for key, help_ in getattr(base, "known_options", {}).items():
                    merged.setdefault(key, help_)
        cls.known_options = MappingProxyType(merged)

    def __init__(self, **options: Any) -> None:
        self.check_options(options)
        self.options = dict(options)
        h = options.get("min_entropy")
        if h is not None and h != "":
            self.min_entropy = _min_entropy(self.name, h, self.sample_bits)  # type: ignore[misc]

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse an option this source does not declare, naming the ones it does."""
        unknown = [key for key in options if key not in cls.known_options]
        if not unknown:
            return
        known = list(cls.known_options)
        if not known:
            raise UsageError(
                f"unknown {cls.name} option '{unknown[0]}'; the {cls.name} source takes no options"
            )
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UsageError(
            f"unknown {cls.name} option '{unknown[0]}'{hint}; "
            f"known options are: {', '.join(known)}"
        )

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


def _min_entropy(source: str, value: Any, sample_bits: int) -> float:
    try:
        h = float(value)
    except (TypeError, ValueError):
        h = math.nan
    if not 0 < h <= sample_bits:  # also refuses nan
        raise UsageError(
            f"{source} option min_entropy= must be a number of bits per sample above 0 "
            f"and at most {sample_bits}, not '{value}'"
        )
    return h


@overload
def positive_number(
    source: str, options: Mapping[str, Any], key: str, default: float, unit: str = ""
) -> float: ...
@overload
def positive_number(
    source: str, options: Mapping[str, Any], key: str, default: None, unit: str = ""
) -> float | None: ...
def positive_number(
    source: str,
    options: Mapping[str, Any],
    key: str,
    default: float | None,
    unit: str = "",
) -> float | None:
    """The finite number above zero in option `key` (`default` when it is absent or empty).

    `float()` alone would take 'nan' and 'inf', and a nan deadline never passes.
    """
    value = options.get(key)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if not (math.isfinite(out) and out > 0):
        of = f" of {unit}" if unit else ""
        raise UsageError(f"{source} option {key}= must be a positive number{of}, not '{value}'")
    return out


def positive_whole_number(
    source: str, options: Mapping[str, Any], key: str, default: int
) -> int:
    """The whole number above zero in option `key` (`default` when it is absent or empty)."""
    value = options.get(key)
    if value is None or value == "":
        return default
    text = str(value).strip()
    if not (text.isascii() and text.isdigit() and int(text) > 0) or isinstance(value, bool):
        raise UsageError(f"{source} option {key}= must be a positive whole number, not '{value}'")
    return int(text)


def parse_host_port(spec: str, source: str, example: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 hosts in brackets) from a `tcp=` option."""
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    # isdigit() alone also takes digits int() cannot read, such as '²'
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise UsageError(f"{source} tcp= must be HOST:PORT, e.g. tcp={example}, not '{spec}'")
    return host, int(port)
