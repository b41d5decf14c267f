"""What bake and `bake --check` report: a `Change` per path changed, a `Finding` per
problem, and bake's errors. Never a file's contents: paths and kinds only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..shared.errors import DeliveryError

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Change:
    """One change bake makes (or would make, in a dry run)."""

    path: str
    #: write, remove, rmdir, mkdir, symlink or stop
    action: str
    #: what the path is, in a few words (never its contents)
    what: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "action": self.action, "what": self.what}


@dataclass(frozen=True)
class Finding:
    """One problem `check` found: where, what is wrong, and what to do."""

    path: str
    problem: str
    fix: str
    severity: str = ERROR

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "problem": self.problem, "fix": self.fix,
                "severity": self.severity}


@dataclass
class BakeResult:
    target: str
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    #: secrets the scan found that bake does not own, so left in place (and reported)
    left: list[Finding] = field(default_factory=list)
    #: False on the running system, where bake does not run the whole-image scan
    scanned: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "dry_run": self.dry_run,
                "changes": [c.to_json() for c in self.changes],
                "left": [f.to_json() for f in self.left], "scanned": self.scanned}


class BakeError(DeliveryError):
    """The target cannot be baked as asked."""


class CloudConfigError(BakeError):
    """A cloud-init config file in the target is not valid YAML."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is not valid YAML, so cloud-init cannot read it; fix it")
        self.path = path
