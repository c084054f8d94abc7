"""The dependency rule of docs/conventions.md §1, enforced by walking imports with ``ast``."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = sys.stdlib_module_names


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def _violations(package: str, allowed: tuple[str, ...], banned_names: tuple[str, ...] = ()) -> list[str]:
    out = []
    for path in _modules(package):
        text = path.read_text(encoding="utf-8")
        for lineno, module in _imports(path):
            top = module.split(".")[0]
            if top in STDLIB and module not in banned_names:
                continue
            if any(module == a or module.startswith(a + ".") for a in allowed):
                continue
            out.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
        for name in banned_names:
            if name in text:
                out.append(f"{path.relative_to(ROOT)} uses {name}")
    return out


def test_engine_imports_only_stdlib_and_itself() -> None:
    banned = ("sqlite3", "os.environ", "datetime.now", "time.time(", "time.monotonic")
    assert _violations("kis_estimator.server.engine", ("kis_estimator.server.engine",), banned) == []


def test_evidence_imports_only_stdlib_the_engine_and_itself() -> None:
    assert (
        _violations(
            "kis_estimator.server.evidence", ("kis_estimator.server.engine", "kis_estimator.server.evidence")
        )
        == []
    )


@pytest.mark.parametrize("package", ["kis_estimator.server.storage", "kis_estimator.server.evidence"])
def test_storage_never_reaches_the_api_or_grpc(package: str) -> None:
    bad = [
        f"{p.relative_to(ROOT)}:{n} imports {m}"
        for p in _modules(package)
        for n, m in _imports(p)
        if m.split(".")[0] in {"grpc", "google"}
        or m.startswith(("kis_estimator.server.api", "kis_estimator.server.gen"))
    ]
    assert bad == []


def test_only_the_api_touches_generated_code_and_grpc_status() -> None:
    # the CLI and its view (cli_view.py) talk to the service through the generated client
    allowed_dirs = ("server/api", "server/gen", "server/acceptance", "server/cli.py", "server/cli_view.py")
    bad = []
    for path in _modules("server"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(allowed_dirs):
            continue
        bad += [
            f"{rel}:{n} imports {m}"
            for n, m in _imports(path)
            if m.startswith(("kis_estimator.server.gen", "grpc_status", "kis_estimator.client"))
        ]
    assert bad == []


def test_the_python_client_needs_only_the_generated_code() -> None:
    bad = [
        f"client.py:{n} imports {m}"
        for n, m in _imports(ROOT / "kis_estimator" / "client.py")
        if m.split(".")[0] not in STDLIB | {"__future__", "grpc", "grpc_health", "grpc_status", "google"}
        and not m.startswith("kis_estimator.server.gen.")
    ]
    assert bad == []


def test_everything_imports_the_one_namespace() -> None:
    """Nothing imports ``server`` or ``workflows`` as top-level packages: in the wheel they exist only
    as ``kis_estimator.server`` and ``kis_estimator.workflows`` (a top-level import would load a second
    copy of a module in the checkout, and fail, or load another distribution's package, when installed)."""
    sources = [
        *ROOT.glob("kis_estimator/*.py"),
        *(
            p
            for top in ("server", "workflows", "tests", "bench", "tools")
            for p in (ROOT / top).rglob("*.py")
        ),
        ROOT / "deploy/local/kis-estimator-fault",
    ]
    bad = [
        f"{p.relative_to(ROOT)}:{n} imports {m}"
        for p in sources
        for n, m in _imports(p)
        if m.split(".")[0] in {"server", "workflows"}
    ]
    assert len(sources) > 200
    assert bad == []


def test_nothing_reads_the_environment_outside_settings() -> None:
    bad = []
    for path in _modules("server"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in {"server/settings.py", "server/clock.py"} or rel.startswith("server/gen"):
            continue
        text = path.read_text(encoding="utf-8")
        bad += [f"{rel} uses {name}" for name in ("os.environ", "os.getenv", "time.sleep(") if name in text]
    assert bad == []
