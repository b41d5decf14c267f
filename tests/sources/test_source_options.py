"""Source options are declared once per source and checked for every source.

The tests iterate the registry itself, so a source added to `REGISTRY` is covered
without a new line here: an unknown option is refused naming the known ones, and the
options each class's code reads (found with `ast`) are exactly the ones it declares,
so the declaration cannot drift from the code.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from seedtool.shared.errors import UsageError
from seedtool.sources import REGISTRY, make_source, parse_source_spec, source_class
from seedtool.sources.base import Availability, Source

NAMES = list(REGISTRY)


# --------------------------------------------------------------------------- unknown options


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_refused_naming_the_known_ones(name: str) -> None:
    cls = source_class(name)
    with pytest.raises(UsageError) as err:
        make_source(name, nosuch_option="1")
    message = str(err.value)
    assert "\n" not in message and f"unknown {name} option 'nosuch_option'" in message
    if cls.known_options:
        assert message.endswith("known options are: " + ", ".join(cls.known_options))
    else:
        assert message.endswith(f"the {name} source takes no options")


@pytest.mark.parametrize("name", NAMES)
def test_spec_parser_refuses_an_unknown_option_before_the_source_is_built(name: str) -> None:
    with pytest.raises(UsageError, match=f"unknown {name} option 'nosuch_option'"):
        parse_source_spec(f"{name}:nosuch-option=1")


@pytest.mark.parametrize("name", [n for n in NAMES if source_class(n).known_options])
def test_a_near_miss_names_the_option_meant(name: str) -> None:
    first = next(iter(source_class(name).known_options))
    typo = first[:-1] + "_" + first[-1] if len(first) > 2 else first + "x"
    with pytest.raises(UsageError, match=rf"did you mean '{first}'\?"):
        make_source(name, **{typo: "1"})


def test_the_hwrng_typo_from_the_issue() -> None:
    with pytest.raises(UsageError) as err:
        parse_source_spec("hwrng:devcie=/dev/hwrng")
    assert str(err.value) == (
        "unknown hwrng option 'devcie' (did you mean 'device'?); "
        "known options are: device, sysfs, timeout, min_entropy"
    )


def test_the_os_source_takes_no_options() -> None:
    # It is never health-tested, so even min_entropy= would be ignored.
    with pytest.raises(UsageError, match="the os source takes no options"):
        parse_source_spec("os:min_entropy=3")


# --------------------------------------------------------------------------- one place


class _Probe(Source):
    name = "probe"
    description = "test source"

    def available(self) -> Availability:
        return Availability.yes()

    def read(self, n: int) -> bytes:
        raise AssertionError("not read")


def test_a_new_source_that_declares_nothing_is_still_checked() -> None:
    assert list(_Probe.known_options) == ["min_entropy"]
    with pytest.raises(UsageError, match="unknown probe option 'device'"):
        _Probe(device="/dev/x")
    assert _Probe(min_entropy="4").min_entropy == 4.0


def test_declarations_merge_along_the_class_tree() -> None:
    class Child(_Probe):
        known_options = {"alpha": "a"}

    class Grandchild(Child):
        known_options = {"beta": "b"}

    class Alone(Child):
        inherit_options = False
        known_options = {"gamma": "g"}

    assert list(Child.known_options) == ["alpha", "min_entropy"]
    assert list(Grandchild.known_options) == ["beta", "alpha", "min_entropy"]
    assert list(Alone.known_options) == ["gamma"]
    with pytest.raises(UsageError, match="known options are: gamma$"):
        Alone(min_entropy="4")


# --------------------------------------------------------------------------- code == declaration


@dataclass
class Reads:
    keys: set[str] = field(default_factory=set)
    #: uses of the options mapping whose key this scan cannot see (line: code)
    opaque: list[str] = field(default_factory=list)


def _is_options(node: ast.AST) -> bool:
    """`options` or `self.options`: the mapping of a source's options."""
    return (isinstance(node, ast.Name) and node.id == "options") or (
        isinstance(node, ast.Attribute) and node.attr == "options"
    )


def _const(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def option_reads(tree: ast.AST, allowed: frozenset[str] = frozenset()) -> Reads:
    """Every constant key read from the options mapping: `options.get("k")`,
    `options["k"]`, `"k" in options`, and helpers called as `f(options, "k", ...)`.

    Any other use of the mapping is reported as opaque, except handing all of it on
    (`super().__init__(**options)`) and the calls in `allowed`, so a read the scan
    cannot see fails the test instead of slipping past it.
    """
    out = Reads()
    seen: set[int] = set()
    parent = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "get" and _is_options(func.value):
                seen.add(id(func.value))
                key = _const(node.args[0]) if node.args else None
                if key is None:
                    out.opaque.append(f"{node.lineno}: {ast.unparse(node)}")
                else:
                    out.keys.add(key)
                continue
            for i, arg in enumerate(node.args):
                if _is_options(arg):
                    seen.add(id(arg))
                    key = _const(node.args[i + 1]) if i + 1 < len(node.args) else None
                    if key is not None:
                        out.keys.add(key)
                    elif ast.unparse(node) not in allowed:
                        out.opaque.append(f"{node.lineno}: {ast.unparse(node)}")
            for kw in node.keywords:
                if kw.arg is None and _is_options(kw.value):
                    seen.add(id(kw.value))  # passed on whole: the callee's reads count
        elif isinstance(node, ast.Subscript) and _is_options(node.value):
            seen.add(id(node.value))
            key = _const(node.slice)
            if key is None:
                out.opaque.append(f"{node.lineno}: {ast.unparse(node)}")
            else:
                out.keys.add(key)
        elif isinstance(node, ast.Compare) and any(_is_options(c) for c in node.comparators):
            seen.update(id(c) for c in node.comparators)
            key = _const(node.left)
            if key is None:
                out.opaque.append(f"{node.lineno}: {ast.unparse(node)}")
            else:
                out.keys.add(key)
    for node in ast.walk(tree):
        if _is_options(node) and id(node) not in seen:
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                continue  # `self.options = ...`
            where = parent.get(id(node), node)
            out.opaque.append(f"{getattr(node, 'lineno', '?')}: {ast.unparse(where)}")
    return out


def _class_reads(cls: type) -> Reads:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    if cls is not Source:
        return option_reads(tree)
    # The base checks the given names (never values) and keeps a copy of the mapping.
    body = tree.body[0]
    assert isinstance(body, ast.ClassDef)
    body.body = [n for n in body.body
                 if not (isinstance(n, ast.FunctionDef) and n.name == "check_options")]
    return option_reads(tree, frozenset({"dict(options)", "self.check_options(options)"}))


def reads_of(cls: type[Source]) -> Reads:
    """What the code of `cls` and of every base whose options it takes reads."""
    total = Reads()
    for klass in cls.__mro__:
        if not (isinstance(klass, type) and issubclass(klass, Source)):
            continue
        part = _class_reads(klass)
        total.keys |= part.keys
        total.opaque += [f"{klass.__name__} line {o}" for o in part.opaque]
        if not klass.__dict__.get("inherit_options", True):
            break
    return total


@pytest.mark.parametrize("name", NAMES)
def test_every_option_read_is_declared_and_every_declared_one_is_read(name: str) -> None:
    cls = source_class(name)
    reads = reads_of(cls)
    assert reads.opaque == []
    assert reads.keys == set(cls.known_options), (
        f"read but not declared: {sorted(reads.keys - set(cls.known_options))}; "
        f"declared but never read: {sorted(set(cls.known_options) - reads.keys)}"
    )


def test_the_scan_sees_each_kind_of_read_and_flags_what_it_cannot_see() -> None:
    code = textwrap.dedent('''
        class S:
            def __init__(self, **options):
                super().__init__(**options)
                a = options.get("a")
                b = options["b"]
                if "c" in options:
                    pass
                d = helper(self.options, "d", 1)
                key = "hidden"
                e = options.get(key)
                f = options[key]
                g = list(options.items())
    ''')
    reads = option_reads(ast.parse(code))
    assert reads.keys == {"a", "b", "c", "d"}
    assert sorted(o.split(": ", 1)[1] for o in reads.opaque) == [
        "options.get(key)", "options.items", "options[key]"
    ]


def test_the_scan_would_catch_a_declared_option_the_code_never_reads() -> None:
    class Drifted(_Probe):
        # 'device' is declared and accepted, but the code reads a misspelling of it
        known_options: ClassVar[Any] = {"device": "a device"}

        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.device = options.get("devcie")

    reads = reads_of(Drifted)
    assert "device" not in reads.keys and "devcie" in reads.keys
    assert reads.keys != set(Drifted.known_options)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("hwrng", {"min_entropy": "abc"}, "hwrng option min_entropy= must be a number"),
        ("hwrng", {"min_entropy": "nan"}, "at most 8, not 'nan'"),
        ("hwrng", {"min_entropy": "9"}, "at most 8, not '9'"),
        ("hwrng", {"min_entropy": "0"}, "above 0"),
        ("hwrng", {"timeout": "soon"}, "hwrng option timeout= must be a positive number"),
        ("hwrng", {"timeout": "nan"}, "timeout= must be a positive number of seconds, not 'nan'"),
        ("egd", {"timeout": "inf"}, "egd option timeout= must be a positive number"),
        ("tpm", {"timeout": "-1"}, "tpm option timeout= must be a positive number"),
        ("tpm", {"locality": "²"}, "tpm locality= must be 0..4"),
        ("tpm", {"locality": "2"}, "locality= is sent only with protocol=mssim"),
        ("tpm", {"tcp": "localhost:²"}, "tpm tcp= must be HOST:PORT"),
        ("egd", {"tcp": "localhost:99999"}, "egd tcp= must be HOST:PORT"),
        ("entropykey", {"timeout": "nan"}, "entropykey option timeout= must be a positive"),
        ("entropykey", {"max_bad": "2.5"}, "max_bad= must be a positive whole number"),
        ("entropykey", {"max_bad": "inf"}, "max_bad= must be a positive whole number"),
        ("entropykey", {"device": "/dev/ttyACM0", "bus": "1"},
         "bus= applies to the USB transport only and would be ignored with device="),
        ("entropykey", {"timeout_ms": "x"}, "timeout_ms='x' must be a whole number"),
        ("truerng", {"backend": "libusb1"}, "backend= takes a pyusb backend object"),
        ("aws-kms", {"connect_timeout": "nan"}, "aws-kms option connect_timeout= must be"),
        ("aws-kms", {"max_attempts": "1.5"}, "max_attempts= must be a positive whole number"),
        ("gcp-kms", {"retry_deadline": "inf"}, "gcp-kms option retry_deadline= must be"),
        ("gcp-kms", {"credentials": "me@example.com"}, "credentials= only takes 'anonymous'"),
    ],
)
def test_obviously_wrong_values_are_one_sentence_usage_errors(
    name: str, options: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError) as err:
        make_source(name, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, options, attr, value",
    [
        ("hwrng", {"timeout": "2.5"}, "timeout", 2.5),
        ("hwrng", {"min_entropy": "0.5"}, "min_entropy", 0.5),
        ("egd", {"timeout": "7"}, "timeout", 7.0),
        ("tpm", {"tcp": "127.0.0.1:2321", "protocol": "mssim", "locality": "3"}, "locality", 3),
        ("entropykey", {"max_bad": "3", "timeout": "1.5"}, "max_bad", 3),
        ("aws-kms", {"max_attempts": "5"}, "max_attempts", 5),
        ("gcp-kms", {"timeout": "4"}, "timeout", 4.0),
        ("chaoskey", {"raw": "1"}, "min_entropy", 2.0),
        ("chaoskey", {"raw": "1", "min_entropy": "3.5"}, "min_entropy", 3.5),
    ],
)
def test_good_values_still_reach_the_source(
    name: str, options: dict[str, str], attr: str, value: Any
) -> None:
    src = make_source(name, **options)
    try:
        assert getattr(src, attr) == value
    finally:
        src.close()


def test_seed_factory_checks_the_options_of_os_too(private_key: object) -> None:
    """A library caller's `("os", {...})` is refused like the CLI's, not silently dropped."""
    from seedtool.generate import SeedFactory

    with pytest.raises(UsageError, match="the os source takes no options"):
        SeedFactory(private_key, [("os", {"min_entropy": "3"})])
