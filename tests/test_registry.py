"""seedtool.registry: the one lazy-registry shape of commands, sources and launchers."""

from __future__ import annotations

import pytest

from seedtool.registry import Registry
from seedtool.shared.errors import UsageError


def test_a_registry_imports_an_entry_only_when_it_is_loaded() -> None:
    reg: Registry[object] = Registry("thing", {
        "dumps": ("json:dumps", "Write JSON."),
        "wrap": "textwrap:wrap",
    })
    assert list(reg) == ["dumps", "wrap"] and len(reg) == 2
    assert reg["wrap"] == "textwrap:wrap"
    assert reg.help("dumps") == "Write JSON." and reg.help("wrap") == ""
    import json
    import textwrap

    assert reg.load("dumps") is json.dumps and reg.find("wrap") is textwrap.wrap
    assert reg.find("nothing") is None
    with pytest.raises(UsageError, match=r"^unknown thing 'nothing'; known things are: "
                                         r"dumps, wrap$"):
        reg.load("nothing")


def test_a_registry_entry_must_name_module_and_attribute() -> None:
    with pytest.raises(ValueError, match="is not 'module:attribute'"):
        Registry("thing", {"bad": "json.dumps"})


def test_the_sources_registry_refuses_an_unknown_name() -> None:
    from seedtool import sources

    assert list(sources.REGISTRY)[0] == "os"
    with pytest.raises(UsageError, match="^unknown source 'nope'; known sources are: os, "):
        sources.source_class("nope")


@pytest.mark.parametrize("registry", ["seedtool.cli:COMMANDS", "seedtool.sources:REGISTRY"])
def test_every_registered_target_exists(registry: str) -> None:
    import importlib

    module, _, attr = registry.partition(":")
    reg = getattr(importlib.import_module(module), attr)
    assert isinstance(reg, Registry)
    for name in reg:
        assert reg.load(name) is not None, name
