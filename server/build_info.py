"""Which build this process is: version and commit, as ``kis_build_info`` and ``GetServerInfo`` report.

The version is the installed distribution's (``importlib.metadata``), so a wheel built as 1.0.1 says
1.0.1 whatever its source tree said. The commit comes from ``server/BUILD_COMMIT``, a one-line file the
release build (``kis-release build``) writes into the staged tree; in a development checkout, which has
no such file, it is read from git, and it is ``unknown`` where neither exists.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "kis-estimator"
COMMIT_FILE = Path(__file__).resolve().parent / "BUILD_COMMIT"
_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    commit: str


def _version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _commit() -> str:
    try:
        text = COMMIT_FILE.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    if _COMMIT.match(text):
        return text
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"],
            cwd=COMMIT_FILE.parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and _COMMIT.match(commit) else "unknown"


@cache
def build_info() -> BuildInfo:
    """This process's build (read once)."""
    return BuildInfo(version=_version(), commit=_commit())
