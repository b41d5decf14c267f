"""Development support: the Debian test-image builder, the VM harness, device and cloud
simulators and fakes.

Used by tests/, scripts/quickstart, bench/ and fuzz/; never by seedtool itself, and
never importing tests/. Not part of the installed package (pyproject.toml's package
find includes only seedtool*).
"""
