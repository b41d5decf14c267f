"""Checks: state no two VMs may share, left in the target (what bake removes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..findings import Finding
from ..scrub import scrub_steps

if TYPE_CHECKING:
    from . import Context


def shared_state(ctx: Context) -> list[Finding]:
    """One finding per step of the scrub plan that has one (either machine-id reset
    form passes)."""
    return [s.finding for s in scrub_steps(ctx.fs, None) if s.finding]
