"""What every atheris harness in this directory shares.

A harness is a script: ``python tests/fuzz/fuzz_<target>.py [libFuzzer flags] [corpus dir]``.
``tests/test_fuzz.py`` runs each one for a few seconds; run one by hand for as long as you like
(see docs/topics/testing.md). The property is the same for every target: for any input the parser
returns or raises one of the error classes it documents. Anything else escapes ``TestOneInput``,
and libFuzzer stops, prints the traceback and writes the input to ``<artifact_prefix>crash-*``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import atheris


def instrumented() -> object:
    """Coverage feedback for Clarion's own code only: instrumenting PyJWT, cryptography and the
    standard library too would slow every run down for edges we are not testing."""
    return atheris.instrument_imports(include=["clarion"])


def _corpus_args(argv: list[str], seeds: Iterable[bytes]) -> list[str]:
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:
        # Without a corpus directory libFuzzer starts from nothing; valid inputs get it past the
        # first checks much sooner.
        corpus = tempfile.mkdtemp(prefix="clarion-fuzz-")
        argv = [*argv, corpus]
        dirs = [corpus]
    target = Path(dirs[0])
    target.mkdir(parents=True, exist_ok=True)
    if not any(target.iterdir()):
        for i, seed in enumerate(seeds):
            (target / f"seed-{i:03d}").write_bytes(seed)
    return argv


def main(test_one_input: Callable[[bytes], None], seeds: Iterable[bytes] = ()) -> None:
    argv = _corpus_args(list(sys.argv), seeds)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def text_forms(data: bytes) -> tuple[str, str]:
    """The two ways Clarion turns bytes into text: HTTP headers and query strings are read as
    latin-1, files and JSON as UTF-8 (malformed bytes replaced, as parse_qs does)."""
    return data.decode("latin-1"), data.decode("utf-8", "replace")
