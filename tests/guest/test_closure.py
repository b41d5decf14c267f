"""The code that runs at boot is closed: seedtool.shared and seedtool.guest import nothing
but each other and the standard library, and the installed copy runs without site-packages.

What runs at boot is exactly what `seedtool.bake.install.guest_code()` copies into an
image: seedtool/__init__.py and every module of the two packages. The static check reads
every import of every one of those files with `ast` (plain, from, relative, inside
functions, `__import__` and `importlib.import_module` of a literal name) and compares it
with `sys.stdlib_module_names`; the cloud-init module and the early launcher, also run at
boot, may import cloud-init (their host) and the guest code besides. The run check
installs into a temporary root and imports every installed module with `python3 -I -S`.
Each check is first shown to fail on a planted import.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seedtool.bake import install
from seedtool.bake.install import install_guest
from seedtool.keys import generate_keypair

REPO = Path(__file__).resolve().parents[2]
PACKAGES = tuple(f"seedtool.{p}" for p in install.GUEST_PACKAGES)
#: what seedtool/__init__.py may be asked for besides the two packages
TOP_NAMES = {p.rpartition(".")[2] for p in PACKAGES}
#: the two files cloud-init and systemd run, with what each may import besides
ENTRY_POINTS = {
    REPO / "cloud_init_modules/cc_seedtool.py": ("cloudinit",),
    REPO / "seedtool/guest/data/seedtool-early": (),
}


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def allowed(name: str, also: tuple[str, ...] = ()) -> bool:
    """Whether a module of the boot code may import the module `name`."""
    if _inside(name, "seedtool"):
        return name == "seedtool" or any(_inside(name, p) for p in PACKAGES)
    top = name.partition(".")[0]
    return top in sys.stdlib_module_names or top in also


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module name) for every import in `source`, the module `module`; relative
    imports resolved, `from X import y` giving X and, inside seedtool, X.y (a submodule
    or a name of X: both must be allowed); a computed dynamic import gives '?'."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 >= len(parts):
                    found.append((node.lineno, "." * node.level + (node.module or "")))
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            if _inside(target, "seedtool"):
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names
                          if not (target == "seedtool" and a.name.startswith("__"))]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else "")
            if name in ("__import__", "import_module"):
                arg = node.args[0] if node.args else None
                literal = arg.value if isinstance(arg, ast.Constant) else None
                found.append((node.lineno, literal if isinstance(literal, str) else "?"))
    return found


def foreign_imports(source: str, module: str, is_package: bool = False,
                    also: tuple[str, ...] = ()) -> list[str]:
    """'<module>:<line> imports <name>' for each import of `source` outside the boot code."""
    return [f"{module}:{line} imports {name}"
            for line, name in imported_names(source, module, is_package)
            if not allowed(name, also)]


def module_name(rel: str) -> tuple[str, bool]:
    """The dotted name of an installed file (path below the private directory)."""
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def closure_findings(tree: Path) -> list[str]:
    """The foreign imports of every module below `tree` (a private directory's copy)."""
    findings = []
    for path in sorted(tree.rglob("*.py")):
        name, is_package = module_name(path.relative_to(tree).as_posix())
        findings += foreign_imports(path.read_text(), name, is_package)
    return findings


# ---- the checker can fail ------------------------------------------------------------

PLANTED = [
    ("import yaml", "yaml"),
    ("import seedtool.cli", "seedtool.cli"),
    ("from seedtool import keys", "seedtool.keys"),
    ("from .. import keys", "seedtool.keys"),
    ("from ..bake import install", "seedtool.bake"),
    ("from ..bake.install import guest_code", "seedtool.bake.install"),
    ("from ...outside import x", "...outside"),
    ("def f():\n    import click", "click"),
    ("class C:\n    def m(self):\n        from cryptography.hazmat import x",
     "cryptography.hazmat"),
    ("try:\n    import boto3\nexcept ImportError:\n    pass", "boto3"),
    ("__import__('google.cloud')", "google.cloud"),
    ("import importlib\nimportlib.import_module('seedtool.commands')", "seedtool.commands"),
    ("import importlib\nname = 'x'\nimportlib.import_module(name)", "?"),
]


@pytest.mark.parametrize("source, name", PLANTED)
def test_the_checker_finds_every_form_of_a_foreign_import(source: str, name: str) -> None:
    found = foreign_imports(source, "seedtool.guest.planted")
    assert found and found[0].rpartition(" imports ")[2] == name, found


@pytest.mark.parametrize("source", [
    "import os, struct\nfrom collections.abc import Mapping",
    "from __future__ import annotations",
    "from . import kernel\nfrom .ledger import Ledger",
    "from ..shared import envelope\nfrom ..shared.record import Record",
    "import seedtool.shared.envelope\nfrom seedtool.guest import core",
    "from seedtool import __version__, shared",
    "def f():\n    import urllib.request",
    "__import__('json')",
])
def test_the_checker_allows_the_standard_library_and_the_two_packages(source: str) -> None:
    assert foreign_imports(source, "seedtool.guest.planted") == []


def test_a_relative_import_is_resolved_from_the_modules_own_package() -> None:
    # from a package's __init__, `.` is the package itself
    assert foreign_imports("from .. import cli", "seedtool.guest", is_package=True) == [
        "seedtool.guest:1 imports seedtool.cli"]
    assert foreign_imports("from . import cli", "seedtool", is_package=True) == [
        "seedtool:1 imports seedtool.cli"]
    # from seedtool.guest.sub.m, `..` is seedtool.guest
    assert foreign_imports("from .. import cli", "seedtool.guest.sub.m") == []


def test_a_planted_import_in_a_copy_of_the_code_is_found(tmp_path: Path) -> None:
    tree = tmp_path / "python"
    for rel, src in install.guest_code():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tree / rel)
    assert closure_findings(tree) == []
    kernel = tree / "seedtool/guest/kernel.py"
    kernel.write_text(kernel.read_text() + "\n\ndef _later() -> None:\n    from .. import keys\n")
    (tree / "seedtool/shared/sub").mkdir()
    (tree / "seedtool/shared/sub/__init__.py").write_text("from ...launch import aws\n")
    assert closure_findings(tree) == [
        "seedtool.guest.kernel:"
        f"{len(kernel.read_text().splitlines())} imports seedtool.keys",
        "seedtool.shared.sub:1 imports seedtool.launch",
        "seedtool.shared.sub:1 imports seedtool.launch.aws",
    ]


# ---- the boot code is closed ----------------------------------------------------------


def test_what_is_installed_is_every_module_of_the_two_packages() -> None:
    installed = {rel for rel, _ in install.guest_code()}
    in_tree = {"seedtool/__init__.py"} | {
        p.relative_to(REPO).as_posix() for package in install.GUEST_PACKAGES
        for p in (REPO / "seedtool" / package).rglob("*.py")
        if "__pycache__" not in p.parts and p.parent.name != install.DATA_DIR
    }
    assert installed == in_tree
    assert {"seedtool/guest/core.py", "seedtool/guest/decision.py",
            "seedtool/shared/envelope.py", "seedtool/shared/pubkeys.py"} <= installed
    assert not installed & {"seedtool/keys.py", "seedtool/cli.py", "seedtool/bake/install.py"}


def test_the_boot_code_imports_only_itself_and_the_standard_library() -> None:
    findings = []
    for rel, src in install.guest_code():
        name, is_package = module_name(rel)
        findings += foreign_imports(src.read_text(), name, is_package)
    for path, also in ENTRY_POINTS.items():
        findings += foreign_imports(path.read_text(), path.stem.replace("-", "_"), also=also)
    assert findings == []


def test_the_shared_package_needs_nothing_of_the_guest() -> None:
    """The host imports seedtool.shared too: it must not pull the guest in with it."""
    for rel, src in install.guest_code():
        if rel.startswith("seedtool/shared/"):
            name, is_package = module_name(rel)
            names = [n for _, n in imported_names(src.read_text(), name, is_package)]
            assert not [n for n in names if _inside(n, "seedtool.guest")], rel


# ---- the installed copy runs without site-packages ------------------------------------

IMPORT_ALL = """
import importlib, os, sys, sysconfig
private, names = sys.argv[1], sys.argv[2:]
sys.path.insert(0, private)
for name in names:
    importlib.import_module(name)
import cc_seedtool
assert "site" not in sys.modules, "site was imported"
lib = [os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")]
root = os.path.realpath(private)
outside = sorted(
    name for name, m in list(sys.modules.items())
    if getattr(m, "__file__", None)
    and not os.path.realpath(m.__file__).startswith(tuple(p + os.sep for p in lib + [root]))
)
assert not outside, outside
print(len(names))
"""


def run_installed(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    private = root / install.PRIVATE_DIR
    # cc_seedtool sits in dist-packages in an image; here it is put beside the guest code
    shutil.copyfile(root / install.CC_MODULE, private / "cc_seedtool.py")
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_ALL, str(private), *names],
        capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")}, check=False,
        cwd=root)


def installed_modules(root: Path) -> list[str]:
    private = root / install.PRIVATE_DIR
    return sorted(module_name(p.relative_to(private).as_posix())[0]
                  for p in (private / "seedtool").rglob("*.py"))


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    generate_keypair(tmp_path / "host.key", tmp_path / "host.pub")
    root = tmp_path / "root"
    root.mkdir()
    install_guest(root, [tmp_path / "host.pub"])
    return root


def test_the_installed_copy_imports_every_module_with_python_I_S(installed: Path) -> None:
    names = installed_modules(installed)
    assert {"seedtool", "seedtool.shared.envelope", "seedtool.guest.early",
            "seedtool.guest.decision", "seedtool.guest.gce"} <= set(names)
    assert len(names) == len(install.guest_code())
    res = run_installed(installed, names)
    assert res.returncode == 0 and res.stdout.strip() == str(len(names)), res.stderr


def test_a_planted_import_makes_the_installed_copy_fail(installed: Path) -> None:
    planted = installed / install.PRIVATE_DIR / "seedtool/guest/planted.py"
    planted.write_text("import yaml\n")  # installed on this host, but not without site
    res = run_installed(installed, installed_modules(installed))
    assert res.returncode != 0 and "No module named 'yaml'" in res.stderr
