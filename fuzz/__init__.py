"""Coverage-guided fuzz targets for every seedtool parser that reads outside input.

Each `fuzz_<name>.py` module defines `test_one_input(data)`, `seeds()` and a few
settings; `python3 -m fuzz.run <name>` runs it under atheris (libFuzzer). The targets
import without atheris, so the regression tests can replay findings in the normal suite.
See fuzz/README.md.
"""
