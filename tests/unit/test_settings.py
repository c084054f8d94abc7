"""Service and workflow settings: defaults, validation, namespaces, secrets never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import WORKFLOW_PREFIXES, ClientSettings, Settings, SettingsError
from workflows.settings import PREFIXES, WorkflowSettings, WorkflowSettingsError


def test_defaults_run_out_of_the_box() -> None:
    s = Settings.from_env({})
    assert (s.grpc_address, s.database_url, s.metrics_address) == (
        "127.0.0.1:8787",
        "sqlite:///var/kis.db",
        "127.0.0.1:8788",
    )
    assert s.mixed_monthly_quota == 2 and s.rate_limit_per_hour == 1000


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
