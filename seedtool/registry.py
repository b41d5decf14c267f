"""Lazy registries: name -> "package.module:attribute", imported only when used.

Commands (seedtool.cli), entropy sources (seedtool.sources) and launchers each keep one
of these, so adding one is a new module plus one registry line, and listing a registry
(`seedtool --help`, `seedtool sources`) never imports a cloud SDK or a device library
that the chosen entry does not need. An entry may carry a one-line help text, shown in
listings without importing its module.

Never imports anything but the standard library and seedtool.shared.errors.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar, cast

from .shared.errors import UsageError

T = TypeVar("T")


class Registry(Mapping[str, str], Generic[T]):
    """An ordered mapping name -> "module:attribute" whose targets load on demand.

    `entries` maps each name to "module:attribute" or to ("module:attribute",
    "one-line help"). Iterating gives the names in the order given.
    """

    def __init__(self, kind: str, entries: Mapping[str, str | tuple[str, str]]) -> None:
        self.kind = kind
        self._targets: dict[str, str] = {}
        self._help: dict[str, str] = {}
        for name, entry in entries.items():
            target, text = (entry, "") if isinstance(entry, str) else entry
            if ":" not in target:
                raise ValueError(f"{kind} {name!r}: {target!r} is not 'module:attribute'")
            self._targets[name] = target
            self._help[name] = text

    def __getitem__(self, name: str) -> str:
        return self._targets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def help(self, name: str) -> str:
        """The entry's one-line help ("" if it has none), without importing it."""
        return self._help[name]

    def find(self, name: str) -> T | None:
        """The entry's target, imported now; None for a name not registered."""
        target = self._targets.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return cast(T, getattr(importlib.import_module(module), attr))

    def load(self, name: str) -> T:
        """The entry's target, imported now; a name not registered is a UsageError."""
        found = self.find(name)
        if found is None:
            known = ", ".join(self._targets)
            raise UsageError(f"unknown {self.kind} '{name}'; known {self.kind}s are: {known}")
        return found
