"""Where the store lives: an absolute default, a config file, and local commands that never invent a store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = Path(sys.executable).parent / "kis-estimator"


def _run(
    args: list[str], home: Path, cwd: Path = Path("/"), **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIS_") and k != "XDG_STATE_HOME"}
    env |= {"HOME": str(home)} | extra
    return subprocess.run([str(CLI), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_a_read_command_on_a_missing_store_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    for args in (["token", "list"], ["token", "revoke", "tok_x"], ["audit", "verify"]):
        proc = _run(args, tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert f"no store at {tmp_path}/.local/state/kis-estimator/kis.db" in proc.stderr
        assert "KIS_DATABASE_URL" in proc.stderr
    assert not (tmp_path / ".local").exists()
    assert not Path("/kis.db").exists() and not Path("/var/kis.db").exists()


def test_the_default_store_is_the_same_from_any_directory(tmp_path: Path) -> None:
    created = _run(["token", "create", "--role", "VIEWER", "--name", "ops"], tmp_path, cwd=Path("/"))
    assert created.returncode == 0, created.stderr
    assert "creating a new store" in created.stderr
    store = tmp_path / ".local/state/kis-estimator/kis.db"
    assert store.exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = _run(["token", "list"], tmp_path, cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert " VIEWER " in listed.stdout and listed.stdout.rstrip().endswith("ops")


def test_a_config_file_points_local_commands_at_the_store(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    config = tmp_path / "kis-estimator.toml"
    config.write_text(f'data_dir = "{data}"\n')
    created = _run(["--config", str(config), "token", "create", "--role", "ADMIN", "--name", "a"], tmp_path)
    assert created.returncode == 0, created.stderr
    assert (data / "kis.db").exists()
    via_env = _run(["token", "list"], tmp_path, KIS_CONFIG_FILE=str(config))
    assert via_env.returncode == 0 and " ADMIN " in via_env.stdout
    bad = _run(["--config", str(tmp_path / "missing.toml"), "token", "list"], tmp_path)
    assert bad.returncode == 2 and "configuration error: config file" in bad.stderr
