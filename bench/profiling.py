"""Sampling the server under load with py-spy (a dev dependency) and summarising where time goes.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;… count``, root first, each
frame ``function (file:line)``). From them:

* self share: samples whose innermost frame is the function, over all samples;
* inclusive share: samples with the function anywhere on the stack (counted once per stack).

Without ``--idle`` py-spy drops threads that are waiting (idle workers, the gRPC poller blocked in
epoll), so the shares are of the time threads were runnable: executing Python, inside C calls such as
SQLite or protobuf, or waiting for the GIL. ``gil=True`` samples only the thread holding the GIL,
which shows where the interpreter (the server's bottleneck on one GIL) spends its time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_LINE_NO = re.compile(r":\d+\)$")


def find_py_spy() -> tuple[str | None, str]:
    """(path, "") or (None, reason): py-spy from the venv (``pip install -e '.[dev]'``) or PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside), ""
    found = shutil.which("py-spy")
    if found:
        return found, ""
    return None, "py-spy not installed (dev dependency: pip install -e '.[dev]')"


def start_py_spy(
    py_spy: str, pid: int, out: Path, *, duration_s: float, rate_hz: int = 200, gil: bool = False
) -> subprocess.Popen[bytes]:
    command = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(duration_s))),
        "--rate",
        str(rate_hz),
        "--format",
        "raw",
        "--nonblocking",  # never pause the server: the figures measured meanwhile stay honest
        "--output",
        str(out),
    ]
    if gil:
        command.append("--gil")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _function(frame: str) -> str:
    """``name (path:line)`` → ``name (path)``, the path relative to the repository when inside it."""
    frame = _LINE_NO.sub(")", frame.strip())
    return re.sub(
        r"\(.*?/(server|bench|grpc|google|sqlite3|concurrent|threading|logging|json)/", r"(\1/", frame
    )


def _stacks(collapsed: str) -> list[tuple[list[str], int]]:
    out = []
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_function(f) for f in stack.split(";") if f.strip()]
        if frames:
            out.append((frames, int(count_text)))
    return out


def key_shares(collapsed: str, names: tuple[str, ...]) -> dict[str, float]:
    """Inclusive share (%) of each named function (``Class.method`` or ``function``, any module)."""
    stacks = _stacks(collapsed)
    total = sum(count for _, count in stacks) or 1
    out = {}
    for name in names:
        hits = sum(count for frames, count in stacks if any(f.split(" (", 1)[0] == name for f in frames))
        out[name] = round(100.0 * hits / total, 1)
    return out


def summarise(collapsed: str, top: int = 40) -> dict[str, Any]:
    """Top functions by self and by inclusive share of the samples in py-spy's raw output."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in _stacks(collapsed):
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "pct": round(100.0 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]

    return {"samples": total, "self": share(self_counts), "inclusive": share(inclusive)}
