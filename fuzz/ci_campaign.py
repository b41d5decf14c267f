"""The short fuzz campaign CI runs: every target for a bounded number of inputs.

`python3 -m fuzz.ci_campaign [TARGET...]` runs each target (all by default) in its
own subprocess under `fuzz.run` with a fixed libFuzzer seed, so a CI run explores
the same inputs every time and a failure reproduces. It prints one line per
target (executions, executions per second, coverage) and exits 1 if any target
found a crash, a hang (libFuzzer's per-input timeout) or did not complete its
inputs; the crashing input is kept and named in the output.

tests/test_fuzz_short.py runs the same thing from the normal pytest suite. The
counts below keep the whole campaign to about two to three minutes on two cores;
the million-input campaigns are described in fuzz/README.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .run import TARGETS

#: inputs per target in CI (the slow targets parse YAML or run Skein in Python)
CI_RUNS: dict[str, int] = {
    "envelope": 50_000,
    "userdata": 20_000,
    "partitions": 30_000,
    "egd": 30_000,
    "entropykey": 20_000,
    "tpm": 50_000,
    "policy": 30_000,
    "pubkeys": 30_000,
    "ed25519": 3_000,  # big-integer point arithmetic in Python, about 2 ms an input
    "ledger": 20_000,  # two fsyncs an input on the disk that holds the work directory
    "scrub": 20_000,
}
#: libFuzzer's random seed for CI: the same inputs every run
CI_SEED = 1
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    target: str
    returncode: int
    executions: int | None = None
    exec_per_sec: int | None = None
    coverage: int | None = None
    artifacts: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.artifacts

    def line(self) -> str:
        status = "ok" if self.ok else f"FAILED (exit {self.returncode})"
        return (f"{self.target:<11} {status:<18} executions={self.executions} "
                f"exec/s={self.exec_per_sec} cov={self.coverage}"
                + "".join(f"\n    input kept: {a}" for a in self.artifacts))

    def report(self) -> str:
        """The line, then the end of libFuzzer's output (the exception and traceback)."""
        tail = "\n".join(self.output.splitlines()[-40:])
        return f"{self.line()}\n{tail}"


def _stat(output: str, name: str) -> int | None:
    m = re.search(rf"^stat::{name}:\s+(\d+)", output, re.MULTILINE)
    return int(m.group(1)) if m else None


def _coverage(output: str) -> int | None:
    found = re.findall(r"\scov: (\d+) ", output)
    return int(found[-1]) if found else None


def run(target: str, runs: int | None = None, work: Path | None = None,
        seed: int = CI_SEED) -> Result:
    """Fuzz one target for `runs` inputs (CI_RUNS by default) in a subprocess."""
    runs = CI_RUNS.get(target, 10_000) if runs is None else runs
    own = work is None
    work = Path(tempfile.mkdtemp(prefix=f"seedtool-fuzz-ci-{target}-")) if own else work
    assert work is not None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "fuzz.run", target, "--work", str(work), f"-runs={runs}",
         f"-seed={seed}", "-print_final_stats=1"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        errors="replace", check=False,
    )
    output = done.stdout + done.stderr
    artifacts = sorted(str(p) for p in work.glob("*") if p.is_file() and
                       p.name.split("-", 1)[0] in ("crash", "timeout", "leak", "oom"))
    result = Result(target, done.returncode, _stat(output, "number_of_executed_units"),
                    _stat(output, "average_exec_per_sec"), _coverage(output), artifacts,
                    output)
    if result.executions != runs and result.returncode == 0:
        result.returncode = -1  # it stopped early without saying why: not a pass
    if own and result.ok:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown target(s) {', '.join(unknown)}; the targets are {', '.join(TARGETS)}")
        return 2
    failed = 0
    for name in names:
        result = run(name)
        print(result.line() if result.ok else result.report(), flush=True)
        failed += not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
