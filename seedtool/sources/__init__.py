"""Registry of entropy sources.

Adding a source means one new module here and one line in `REGISTRY`. Modules are
imported only when their source is used, so an extra's package (pyusb, boto3,
google-cloud-kms) is never imported by a command that does not need it. Each source
class declares the options it takes (`Source.known_options`); any other is refused.
"""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from ..shared.errors import UsageError
from .base import Availability, Source

#: name -> "module:Class", in the order `seedtool sources` lists them
REGISTRY: Registry[type[Source]] = Registry("source", {
    "os": "seedtool.sources.os:OsSource",
    "hwrng": "seedtool.sources.hwrng:HwrngSource",
    "tpm": "seedtool.sources.tpm:TpmSource",
    "egd": "seedtool.sources.egd:EgdSource",
    "aws-kms": "seedtool.sources.aws_kms:AwsKmsSource",
    "gcp-kms": "seedtool.sources.gcp_kms:GcpKmsSource",
    "truerng": "seedtool.sources.truerng:TrueRngSource",
    "onerng": "seedtool.sources.onerng:OneRngSource",
    "chaoskey": "seedtool.sources.chaoskey:ChaosKeySource",
    "entropykey": "seedtool.sources.entropykey:EntropyKeySource",
})


def source_class(name: str) -> type[Source]:
    """The class of source `name`, imported now; an unknown name is a UsageError."""
    return REGISTRY.load(name)


def make_source(name: str, **options: Any) -> Source:
    """The source `name`, built with `options` (`Source.__init__` refuses unknown ones)."""
    return source_class(name)(**options)


def parse_source_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`NAME` or `NAME:key=value,key=value` -> (name, options).

    The name and the option names are checked here, before a command loads its key or
    opens anything, with the same check the source's constructor makes.
    """
    name, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    if rest:
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise UsageError(
                    f"bad source option '{item}' in '{spec}'; write NAME:key=value,key=value"
                )
            options[key.strip().replace("-", "_")] = value.strip()
    source_class(name).check_options(options)
    return name, options


__all__ = ["REGISTRY", "Availability", "Source", "make_source", "parse_source_spec", "source_class"]
