"""atheris harness for the parsers in :mod:`fuzz.targets`, for long runs outside CI.

    pip install atheris
    python fuzz/fuzz_parsers.py pop3 -max_total_time=3600
    python fuzz/fuzz_parsers.py token -max_total_time=3600 -runs=... corpus_dir/

The first argument picks the target (pop3, sasl, token, imap); the rest go to
libFuzzer. Only mailoauth's own errors may escape a target; anything else crashes the
run and libFuzzer saves the input as ``crash-*``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Coverage feedback from our own code only: instrumenting httpx, anyio and the stdlib
# makes start-up take minutes and adds nothing.
with atheris.instrument_imports(include=["mailoauth", "fuzz"]):
    from fuzz.targets import TARGETS, run


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], lambda data: run(target, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
