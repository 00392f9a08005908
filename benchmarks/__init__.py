"""Benchmarks against real Dovecot and Postfix on loopback; see benchmarks/README.md.

Run ``python -m benchmarks [names...] [--quick]`` (``nox -s bench``).
"""
