"""Service and workflow settings: defaults, validation, namespaces, secrets never printed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kis_estimator.server.settings import WORKFLOW_PREFIXES, ClientSettings, Settings, SettingsError
from kis_estimator.workflows.settings import PREFIXES, WorkflowSettings, WorkflowSettingsError


def test_defaults_run_out_of_the_box() -> None:
    s = Settings.from_env({"HOME": "/Users/kim"})
    assert (s.grpc_address, s.database_url, s.metrics_address) == (
        "127.0.0.1:8787",
        "sqlite:////Users/kim/.local/state/kis-estimator/kis.db",
        "127.0.0.1:8788",
    )
    assert s.mixed_monthly_quota == 2 and s.rate_limit_per_hour == 1000


@pytest.mark.parametrize(
    ("env", "data_dir"),
    [
        ({"STATE_DIRECTORY": "/var/lib/kis-estimator", "HOME": "/root"}, "/var/lib/kis-estimator"),
        ({"XDG_STATE_HOME": "/srv/state", "HOME": "/Users/kim"}, "/srv/state/kis-estimator"),
        ({"HOME": "/Users/kim"}, "/Users/kim/.local/state/kis-estimator"),
        ({"HOME": "relative", "XDG_STATE_HOME": "also/relative"}, "/var/lib/kis-estimator"),
        ({}, "/var/lib/kis-estimator"),
        ({"KIS_DATA_DIR": "/data", "STATE_DIRECTORY": "/var/lib/x"}, "/data"),
    ],
    ids=["systemd", "xdg", "home", "relative-ignored", "nothing", "explicit"],
)
def test_the_default_store_never_depends_on_the_working_directory(env: dict[str, str], data_dir: str) -> None:
    s = Settings.from_env(env)
    assert s.data_dir == Path(data_dir)
    assert s.database_url == f"sqlite:///{data_dir}/kis.db"
    assert s.sqlite_path.is_absolute() and s.evidence_key_file == Path(data_dir) / "evidence-keys"


def test_a_relative_data_dir_is_refused() -> None:
    with pytest.raises(SettingsError, match="KIS_DATA_DIR='var': expected an absolute path"):
        Settings.from_env({"KIS_DATA_DIR": "var"})


def test_a_config_file_holds_the_same_settings_and_the_environment_overrides_it(tmp_path: Path) -> None:
    config = tmp_path / "kis-estimator.toml"
    config.write_text(
        'grpc_address = "0.0.0.0:9000"\nmax_workers = 4\nshutdown_grace_s = 2.5\n'
        'database_url = "sqlite:////srv/kis/kis.db"\n'
    )
    s = Settings.load({"KIS_MAX_WORKERS": "8"}, config)
    assert (s.grpc_address, s.max_workers, s.shutdown_grace_s) == ("0.0.0.0:9000", 8, 2.5)
    assert s.database_url == "sqlite:////srv/kis/kis.db"
    same = Settings.load({"KIS_CONFIG_FILE": str(config), "KIS_MAX_WORKERS": "8"})
    assert same == s


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('grpc_adress = "x:1"', "unknown setting 'grpc_adress'; did you mean grpc_address"),
        ("max_workers = 0", "max_workers='0': expected 1"),
        ("max_workers = true", "must be a string or a number"),
        ("max_workers = [1]", "must be a string or a number"),
        ("max_workers = ", "config file"),
    ],
    ids=["typo", "range", "bool", "list", "syntax"],
)
def test_a_bad_config_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "kis.toml"
    config.write_text(text + "\n")
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.load({}, config)


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"config file .*nope\.toml"):
        Settings.load({"KIS_CONFIG_FILE": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KIS_GRPC_ADDRES": "x:1"}, "did you mean KIS_GRPC_ADDRESS"),
        ({"KIS_GRPC_ADDRESS": "nope"}, "expected HOST:PORT"),
        ({"KIS_MAX_WORKERS": "0"}, "expected 1"),
        ({"KIS_DATABASE_URL": "postgres://x"}, "expected sqlite:///PATH"),
        ({"KIS_LOG_LEVEL": "LOUD"}, "expected one of"),
        ({"KIS_RATE_LIMIT_PER_HOUR": "many"}, "expected an integer"),
    ],
    ids=["typo", "address", "range", "url", "choice", "integer"],
)
def test_invalid_service_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_secrets_are_masked() -> None:
    s = Settings.from_env({"KIS_EVIDENCE_KEYS": "k1:" + "ab" * 32})
    assert "abab" not in repr(s) and "***" in repr(s)
    w = WorkflowSettings.load({"KIS_JIRA_TOKEN": "hunter2", "KIS_SMTP_PASSWORD": "pw"})
    assert "hunter2" not in repr(w) and "pw'" not in repr(w)
    assert "hunter2" not in repr(ClientSettings(token="hunter2"))


def test_namespaces_are_shared_and_disjoint() -> None:
    assert WORKFLOW_PREFIXES == PREFIXES
    both = {"KIS_JIRA_URL": "http://jira.local", "KIS_DATABASE_URL": "sqlite:///x.db"}
    assert Settings.from_env(both).database_url == "sqlite:///x.db"
    assert WorkflowSettings.load(both).jira_url == "http://jira.local"
    with pytest.raises(WorkflowSettingsError, match="did you mean KIS_JIRA_URL"):
        WorkflowSettings.load({"KIS_JIRA_URLL": "http://x"})


def test_workflow_config_file_rejects_unknown_keys(tmp_path: Path) -> None:
    good = tmp_path / "ok.toml"
    good.write_text('jira_url = "https://jira.example"\nstandby_checkpoints_min = [15, 30, 60]\n')
    loaded = WorkflowSettings.load({"KIS_JIRA_PROJECT": "OPS"}, good)
    assert (loaded.jira_url, loaded.jira_project, loaded.standby_checkpoints_min) == (
        "https://jira.example",
        "OPS",
        (15, 30, 60),
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('jira_ulr = "x"\n')
    with pytest.raises(WorkflowSettingsError, match="did you mean jira_url"):
        WorkflowSettings.load({}, bad)


@pytest.mark.parametrize(
    ("value", "stored"),
    [("none", "none"), ("AUTO", "auto"), ("0", "0"), ("3,1-2", "1,2,3"), (" 0-1 , 1 ", "0,1")],
)
def test_cpu_affinity_is_none_auto_or_a_cpu_list(value: str, stored: str) -> None:
    assert Settings.from_env({"KIS_CPU_AFFINITY": value}).cpu_affinity == stored


@pytest.mark.parametrize("value", ["", "x", "1-0", "-1", "0-", "1,,2", "4096", "0.5"])
def test_a_bad_cpu_affinity_names_the_variable_and_the_syntax(value: str) -> None:
    with pytest.raises(SettingsError, match=r"KIS_CPU_AFFINITY=.*expected none, auto or a CPU list"):
        Settings.from_env({"KIS_CPU_AFFINITY": value})


def test_worker_cpus_come_from_the_list_or_the_cpus_this_process_may_use() -> None:
    from kis_estimator.server.workers import worker_cpus

    allowed = tuple(sorted(os.sched_getaffinity(0)))
    assert worker_cpus("none") is None
    assert worker_cpus("auto") == allowed
    assert worker_cpus(str(allowed[-1])) == (allowed[-1],)
    foreign = max(allowed) + 1
    with pytest.raises(SettingsError, match=f"may not run on CPU {foreign} \\(it may run on "):
        worker_cpus(f"{allowed[0]},{foreign}")


def test_a_kernel_that_refuses_pinning_leaves_the_worker_serving_unpinned(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kis_estimator.server import workers

    def refuse(_pid: int, _cpus: set[int]) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    workers.pin_to_cpu((0, 1), 3)  # does not raise
    assert [(r.levelname, r.getMessage(), r.__dict__["cpu"]) for r in caplog.records] == [
        ("WARNING", "cannot pin to a CPU; serving unpinned", 1)
    ]
