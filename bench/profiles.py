"""Profiles of a running hop: py-spy records it, and the raw stacks are summed into the top functions.

    .venv/bin/python bench/profiles.py DIR/gateway.raw [...]      (writes DIR/gateway.top.txt, prints it)

``bench.py --profile DIR`` records each gateway process through its c32 phase of the first round
(``recording``) and writes ``DIR/<hop>.raw`` and ``DIR/<hop>.top.txt`` (``write_top``). A raw file is
py-spy's collapsed stacks, one line per distinct stack: ``frame;frame;... count``, root first, each frame
``function (file:line)``. The top counts a function once per sample it is on the stack of (inclusive,
recursion counted once) and per sample it is the innermost frame of (self), line numbers dropped.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

PY_SPY = Path(sys.executable).with_name("py-spy")
RATE = 200
TOP = 30
ATTACH_S = 15
# A frame's line number, dropped so that a function's lines count as one function.
LINE = re.compile(r":\d+\)$")


@asynccontextmanager
async def recording(pid: int, raw: Path, seconds: int = 120) -> AsyncIterator[None]:
    """py-spy recording ``pid`` into ``raw`` for the body of the ``with`` (at most ``seconds``): entered
    once py-spy samples, left once it has written the file. Non-blocking: the process is not paused per
    sample, so its CPU figures stay nearly what they are unprofiled."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        str(PY_SPY),
        *("record", "-p", str(pid), "-d", str(seconds), "-r", str(RATE), "-f", "raw", "-o", str(raw)),
        "--nonblocking",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        output = await started_sampling(process.stdout)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    try:
        yield
    finally:
        # SIGINT is py-spy's Control-C: it stops sampling and writes what it has.
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        output += await process.stdout.read()
        await process.wait()
    if process.returncode != 0:
        raise RuntimeError(
            f"py-spy on {pid} failed ({process.returncode}): {output.decode(errors='replace')}"
        )


async def started_sampling(stdout: asyncio.StreamReader) -> bytes:
    """py-spy's output up to its "Sampling process" line (at most ``ATTACH_S`` seconds), so that the
    load starts only once samples are being taken."""
    output = b""
    async with asyncio.timeout(ATTACH_S):
        while line := await stdout.readline():
            output += line
            if b"Sampling process" in line:
                return output
    raise RuntimeError(f"py-spy did not start sampling: {output.decode(errors='replace')}")


def stacks(text: str) -> list[tuple[list[str], int]]:
    """The raw file's stacks, each its frames (root first, without line numbers) and its sample count."""
    parsed = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            parsed.append(([LINE.sub(")", frame) for frame in stack.split(";")], int(count)))
    return parsed


def top(text: str, limit: int = TOP) -> str:
    """The ``limit`` functions with the largest inclusive share of the samples, then the largest self
    share, as a text table."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = torn = 0
    for frames, count in stacks(text):
        total += count
        torn += count if not frames[0].startswith("<module>") else 0
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    # A non-blocking read can catch a stack mid-change: it then lacks its outer frames (the process's
    # <module> down to the frame it was read from). Its inner frames and its self count stand.
    lines = [
        f"{total} samples at {RATE} per second, {100 * torn / max(total, 1):.0f}% of them cut short "
        "(not rooted at <module>: read while changing)"
    ]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines += ["", f"top {limit} by {title} share", f"{'share':>7}  {'samples':>7}  function"]
        for frame, count in counter.most_common(limit):
            lines.append(f"{100 * count / max(total, 1):6.1f}%  {count:>7}  {frame}")
    return "\n".join(lines) + "\n"


def write_top(raw: Path) -> Path:
    """``<hop>.top.txt`` beside ``<hop>.raw``, its top functions."""
    path = raw.with_name(raw.name.removesuffix(".raw") + ".top.txt")
    path.write_text(top(raw.read_text()))
    return path


def write_tops(directory: Path) -> list[Path]:
    """A ``.top.txt`` for every ``.raw`` in ``directory``."""
    return [write_top(raw) for raw in sorted(directory.glob("*.raw"))]


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__.splitlines()[2].strip())
    for name in sys.argv[1:]:
        print(write_top(Path(name)).read_text())


if __name__ == "__main__":
    main()
