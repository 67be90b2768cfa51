"""Every Python snippet of the README's library section runs as printed.

The snippets are read from README.md when the tests run, never copied here. Each ``python`` block runs in
a fresh interpreter from the repository root (where ``Devnet()`` finds the npm packages), with the venv's
scripts on PATH as an activated venv has them, in a process group of its own so that nothing it started
outlives it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.devnet.simulator import synth

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### In-process: the library API"
RUNS = "python"
SNIPPET_TIMEOUT = 180.0

# One line of the simulator's text: its default number of lowercase words.
ANSWER = rf"[a-z]+(?: [a-z]+){{{synth.DEFAULT_COMPLETION_TOKENS - 1}}}"
# What each runnable block prints, line by line (each a full match), in README order.
EXPECTED = {
    "async client, chat and stream": [ANSWER, ANSWER],
    "sync client on the router's thread": [ANSWER],
    "LangChain, the Agents SDK, pydantic-ai": [ANSWER, ANSWER, ANSWER],
    "the router's own API": [
        ANSWER,
        ANSWER,
        "2 vectors",
        re.escape("['devnet-embed', 'devnet-model']"),
        r"\{'available': '\d+', 'total': '\d+', .*\}",
        r"200 0x[0-9a-fA-F]{40} verified",
    ],
    "scripted providers, no network": ["hi from b"],
}


@dataclass(frozen=True)
class Block:
    info: str
    code: str
    line: int  # where its fence opens in README.md, for messages


def section_blocks() -> list[Block]:
    """The fenced blocks of the library section, up to the next heading outside a fence."""
    lines = README.read_text().splitlines()
    start = lines.index(SECTION) + 1
    blocks: list[Block] = []
    fence: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(lines[start:], start + 1):
        if fence is None:
            if line.startswith("#"):
                break
            if line.startswith("```"):
                fence = (line[3:].strip(), number, [])
        elif line.startswith("```"):
            info, opened, body = fence
            blocks.append(Block(info, "\n".join(body) + "\n", opened))
            fence = None
        else:
            fence[2].append(line)
    assert fence is None, f"README.md:{fence[1]}: the fence never closes"
    return blocks


def python_blocks(info: str) -> list[Block]:
    return [b for b in section_blocks() if b.info == info]


def run_snippet(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script from the repository root; anything it leaves running is killed."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=README.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=SNIPPET_TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_the_section_holds_the_snippets_this_test_checks() -> None:
    """Every Python block runs, and each has its expected output here: a block added to the README
    without a check fails this test."""
    infos = [b.info for b in section_blocks() if b.info.startswith("python")]
    assert infos == [RUNS] * len(EXPECTED), infos


@pytest.mark.parametrize(("index", "name"), list(enumerate(EXPECTED)), ids=list(EXPECTED))
def test_snippet_runs_as_printed(index: int, name: str) -> None:
    """The block runs to exit status 0 and prints what the section says it does."""
    block = python_blocks(RUNS)[index]
    done = run_snippet(block.code)
    where = f"README.md:{block.line} ({name})"
    assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stderr}"
    printed = done.stdout.splitlines()
    expected = EXPECTED[name]
    assert len(printed) == len(expected), f"{where} printed:\n{done.stdout}"
    for line, pattern in zip(printed, expected, strict=True):
        assert re.fullmatch(pattern, line), f"{where}: {line!r} does not match {pattern!r}"
    assert "Traceback" not in done.stderr, f"{where}:\n{done.stderr}"
