"""Run one fuzz target under atheris: `python3 -m fuzz.run TARGET [libFuzzer options] [inputs]`.

The target module is imported inside `atheris.instrument_imports`, so the seedtool
modules it reaches (and the libraries it names in INSTRUMENT) are instrumented and
coverage guides the mutations. Its seed inputs are written to WORK/seeds and new
inputs go to WORK/corpus; a crash, leak or hang is written as WORK/crash-*, leak-*
or timeout-*. WORK defaults to $TMPDIR/seedtool-fuzz/TARGET (`--work DIR`).

Any exception that is not a `SeedtoolError` escapes the target and libFuzzer
stops with it: that is a finding. Files given as arguments are replayed instead
of fuzzing (libFuzzer's own behaviour), which is how a finding is reproduced.

Run campaigns at low priority (`nice -n 19`): see fuzz/README.md.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

TARGETS = ("envelope", "userdata", "partitions", "egd", "entropykey", "tpm", "policy",
           "pubkeys", "ed25519", "scrub", "ledger")
#: a target with a planted bug that shows the machinery works (fuzz/fuzz_canary.py)
CANARY = "canary"
#: libFuzzer's per-input limit, seconds: an input that takes this long is a hang
DEFAULT_TIMEOUT = 30


def load_target(name: str, instrument: bool) -> ModuleType:
    """Import fuzz.fuzz_NAME, under atheris instrumentation when `instrument`."""
    if name not in (*TARGETS, CANARY):
        raise SystemExit(f"unknown fuzz target '{name}'; the targets are {', '.join(TARGETS)}")
    modname = f"fuzz.fuzz_{name}"
    if not instrument:
        return importlib.import_module(modname)
    import atheris

    # str.startswith/endswith against constants (header names) become mutation hints.
    # Not the "RegEx" hook: atheris 3.0.0 fails inside it on bytes patterns
    # (TypeError in function_hooks.gen_match_recursive), which our parsers use.
    atheris.enabled_hooks.add("str")
    include, exclude = _instrument_lists(name)
    with atheris.instrument_imports(include=include, exclude=exclude):
        return importlib.import_module(modname)


def _instrument_lists(name: str) -> tuple[list[str], list[str]]:
    # Read the target's INSTRUMENT/EXCLUDE without importing it (an import here would
    # load seedtool before instrumentation): they are plain literal assignments.
    import ast

    path = Path(__file__).with_name(f"fuzz_{name}.py")
    include, exclude = ["seedtool"], []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in ("INSTRUMENT", "EXCLUDE"):
                value = list(ast.literal_eval(node.value))
                if target.id == "INSTRUMENT":
                    include = value
                else:
                    exclude = value
    return include, exclude


def write_seeds(module: ModuleType, directory: Path) -> int:
    """Write the target's seed inputs, one file each, named by content."""
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for data in module.seeds():
        name = hashlib.sha1(data).hexdigest()
        path = directory / name
        if not path.exists():
            path.write_bytes(data)
        n += 1
    return n


def guarded(test_one_input: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """The target with the project's own typed errors treated as a correct outcome."""
    from seedtool.shared.errors import SeedtoolError

    def one(data: bytes) -> None:
        try:
            test_one_input(data)
        except SeedtoolError:
            pass

    return one


def libfuzzer_argv(options: Sequence[str], work: Path, max_len: int) -> list[str]:
    opts = list(options)
    positional = [a for a in opts if not a.startswith("-")]
    flags = [a for a in opts if a.startswith("-")]
    names = {a.split("=", 1)[0] for a in flags}
    if "-artifact_prefix" not in names:
        flags.append(f"-artifact_prefix={work}{os.sep}")
    if "-timeout" not in names:
        flags.append(f"-timeout={DEFAULT_TIMEOUT}")
    if "-max_len" not in names:
        flags.append(f"-max_len={max_len}")
    if not positional:
        # new inputs go into the first directory; the seeds are read from the second
        positional = [str(work / "corpus"), str(work / "seeds")]
    return [sys.argv[0], *flags, *positional]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        print("targets:", ", ".join(TARGETS))
        return
    name, rest = args[0], args[1:]
    work = Path(tempfile.gettempdir()) / "seedtool-fuzz" / name
    if "--work" in rest:
        i = rest.index("--work")
        work = Path(rest[i + 1])
        del rest[i : i + 2]
    os.environ["SEEDTOOL_FUZZ_WORK"] = str(work)  # scratch files go there (fuzz/_scratch.py)
    module = load_target(name, instrument=True)
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    write_seeds(module, work / "seeds")

    import atheris

    atheris.Setup(libfuzzer_argv(rest, work, int(module.MAX_LEN)),
                  guarded(module.test_one_input))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
