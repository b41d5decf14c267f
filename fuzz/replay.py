"""Replay saved inputs through a fuzz target without atheris: `python3 -m fuzz.replay
TARGET PATH...` (files, or directories of files).

Each input is reported as `ok`, `refused` (one of the project's typed errors) or
`FINDING` with the exception; the exit status is 1 when any input is a finding.
Useful to check a fix against a crash file, and to measure which lines a corpus
reaches (`python3 -m coverage run --source=seedtool -m fuzz.replay TARGET DIR`).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from .run import load_target


def _inputs(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise SystemExit(f"{p} does not exist; give crash files or corpus directories")
        out += sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(__doc__)
        return 2
    from seedtool.shared.errors import SeedtoolError

    target = load_target(args[0], instrument=False)
    findings = counts_ok = counts_refused = 0
    quiet = len(args) > 2 or Path(args[1]).is_dir()
    for path in _inputs(args[1:]):
        try:
            target.test_one_input(path.read_bytes())
        except SeedtoolError as e:
            counts_refused += 1
            if not quiet:
                print(f"refused  {path}: {type(e).__name__}")
        except Exception as e:  # any other exception is a finding: report it
            findings += 1
            print(f"FINDING  {path}: {type(e).__name__}: {e}")
            traceback.print_exc()
        else:
            counts_ok += 1
            if not quiet:
                print(f"ok       {path}")
    print(f"{counts_ok} ok, {counts_refused} refused, {findings} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
