"""Runs every coverage-guided harness in tests/fuzz/ (atheris, libFuzzer underneath) for a short,
bounded time: each parser meets a few thousand mutated inputs on every test run. The long runs
are by hand; see docs/topics/testing.md.

Each harness runs in its own process (libFuzzer owns the process and exits on a crash) and the
harnesses run side by side, one per core. A crash fails the test with the traceback and the
exact input; the input then goes into tests/test_fuzz_regressions.py as a named case."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import in_ci

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"
HARNESSES = sorted(p.stem for p in FUZZ_DIR.glob("fuzz_*.py"))
# Bounded both ways: at most RUNS inputs and at most SECONDS per harness.
SECONDS = int(os.environ.get("CLARION_FUZZ_SECONDS", "3"))
RUNS = int(os.environ.get("CLARION_FUZZ_RUNS", "200000"))


@dataclass
class Result:
    returncode: int
    output: str
    crashes: list[bytes]


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _run(name: str, workdir: Path) -> Result:
    artifacts = workdir / name
    corpus = artifacts / "corpus"
    artifacts.mkdir(parents=True)
    cmd = [sys.executable, str(FUZZ_DIR / f"{name}.py"), f"-runs={RUNS}",
           f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=2048",
           "-print_final_stats=1", f"-artifact_prefix={artifacts}/", str(corpus)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=SECONDS + 60, cwd=artifacts, check=False)
    except subprocess.TimeoutExpired as exc:
        return Result(-1, f"did not finish: {exc}", [])
    crashes = [p.read_bytes() for p in sorted(artifacts.glob("*"))
               if p.is_file() and p.name.startswith(("crash-", "timeout-", "oom-"))]
    return Result(proc.returncode, proc.stdout + proc.stderr, crashes)


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    if not _atheris_available():
        if in_ci():
            pytest.fail("atheris is not installed (pip install -e '.[test]')")
        pytest.skip("atheris is not installed")
    workdir = tmp_path_factory.mktemp("fuzz")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(_run, name, workdir) for name in HARNESSES}
        return {name: f.result() for name, f in futures.items()}


def test_every_parser_has_a_harness() -> None:
    assert len(HARNESSES) >= 17, HARNESSES


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz(name: str, fuzz_results: dict[str, Result]) -> None:
    result = fuzz_results[name]
    if result.returncode != 0:
        inputs = "\n".join(repr(c) for c in result.crashes) or "(none written)"
        tail = "\n".join(result.output.splitlines()[-60:])
        pytest.fail(f"{name} failed (exit {result.returncode}); input(s):\n{inputs}\n\n{tail}",
                    pytrace=False)
    assert "Done" in result.output, result.output[-2000:]
