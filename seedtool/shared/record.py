"""Small immutable value classes without the `dataclasses` module.

The guest imports these at boot, before the seed is credited. Importing
`dataclasses` pulls in inspect, ast, dis, tokenize and enum, and every dataclass
then generates its methods with exec(): together about a second and a half of the
early unit's run under QEMU TCG on a loaded machine (`python3 -X importtime` in
the guest; docs/guest.md "Boot time"). A `Record` subclass lists its fields once;
it gets keyword or positional construction with defaults, equality, hashing and a
repr that leaves out the fields named in HIDDEN (seed bytes), and it cannot be
changed after construction, like a frozen dataclass. Standard library only.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar


class Record:
    """Base class: subclasses set FIELDS (in order), DEFAULTS and HIDDEN, and __slots__."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    HIDDEN: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self).__name__
        if len(args) > len(self.FIELDS):
            raise TypeError(f"{cls}() takes at most {len(self.FIELDS)} positional arguments")
        values = dict(zip(self.FIELDS, args))
        for name, value in kwargs.items():
            if name not in self.FIELDS:
                raise TypeError(f"{cls}() got an unexpected keyword argument {name!r}")
            if name in values:
                raise TypeError(f"{cls}() got multiple values for argument {name!r}")
            values[name] = value
        for name in self.FIELDS:
            if name in values:
                value = values[name]
            elif name in self.DEFAULTS:
                value = self.DEFAULTS[name]
            else:
                raise TypeError(f"{cls}() missing required argument {name!r}")
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (like dataclasses.replace)."""
        values = {name: getattr(self, name) for name in self.FIELDS}
        values.update(changes)
        return type(self)(**values)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record) or type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS
                          if name not in self.HIDDEN)
        return f"{type(self).__name__}({shown})"
