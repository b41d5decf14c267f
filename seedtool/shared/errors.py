"""Typed errors with a sentence a user can act on.

Every error carries a one-line message that says what went wrong and what to do.
No error message may contain seed bytes or key material: callers pass only names,
paths, ids and counts into them.
"""

from __future__ import annotations


class SeedtoolError(Exception):
    """Base class: `str(err)` is the one-line diagnostic the CLI prints.

    `detail` is an optional longer diagnostic (several lines: what was looked at, what
    was found) that the CLI shows only under -v; like the message, it never holds data.
    """

    exit_code = 1
    detail = ""

    def __init__(self, *args: object, detail: str = "") -> None:
        super().__init__(*args)
        self.detail = detail


class UsageError(SeedtoolError):
    """The command line or a configuration file asks for something impossible."""

    exit_code = 2


class SourceError(SeedtoolError):
    """An entropy source could not be used or failed while reading."""


class DeviceError(SourceError):
    """A hardware device is absent, busy, not permitted, or went away mid-read."""


class HealthTestFailure(SourceError):
    """A source's output failed an SP 800-90B health test; it contributes nothing."""


class TamperedFrame(SourceError):
    """A device frame failed its MAC check."""


class EnvelopeError(SeedtoolError):
    """A seed envelope is malformed, expired, not yet valid, or wrongly signed."""


class SigningKeyError(SeedtoolError):
    """A signing or public key could not be read, or is unsafe to use."""


class DeliveryError(SeedtoolError):
    """A seed could not be put into user-data, an ISO or a disk image."""


class CloudError(SeedtoolError):
    """A cloud API refused or failed a request."""
