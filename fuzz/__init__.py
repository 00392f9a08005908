"""Fuzz targets shared by the Hypothesis tests (tests/unit/test_fuzz_parsers.py) and
the atheris harnesses in this directory (long runs outside CI; see fuzz/README.md)."""
