"""The release record module and the one error path of ``kis-release`` (kis_estimator.workflows.errors)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kis_estimator.workflows.cli import main
from kis_estimator.workflows.errors import WorkflowError
from kis_estimator.workflows.release.record import (
    SCHEMA,
    StateFileError,
    promoted_records,
    read_record,
    record_path,
    write_record,
)
from kis_estimator.workflows.settings import WorkflowSettingsError
from kis_estimator.workflows.tracker.protocol import TrackerError


def test_a_record_round_trips_with_its_schema_and_typed_fields(tmp_path: Path) -> None:
    write_record(
        tmp_path,
        "1.0.1",
        {
            "status": "promoted",
            "promoted_at": "2025-09-23T03:00:00Z",
            "issue_key": "KIS-7",
            "artifact": "a.whl",
        },
    )
    raw = json.loads(record_path(tmp_path, "1.0.1").read_text())
    assert (raw["schema"], raw["version"]) == (SCHEMA, "1.0.1")
    record = read_record(tmp_path, "1.0.1")
    assert record is not None and record.promoted
    assert (record.promoted_at, record.issue_key, record.artifact) == (
        datetime(2025, 9, 23, 3, 0, tzinfo=UTC),
        "KIS-7",
        "a.whl",
    )
    assert read_record(tmp_path, "9.9.9") is None


def test_promoted_records_are_in_promotion_order_and_skip_refused_ones(tmp_path: Path) -> None:
    write_record(tmp_path, "1.0.2", {"status": "promoted", "promoted_at": "2025-09-24T00:00:00Z"})
    write_record(tmp_path, "1.0.1", {"status": "promoted", "promoted_at": "2025-09-23T00:00:00Z"})
    write_record(tmp_path, "1.0.3", {"status": "refused"})
    (tmp_path / "1.0.4").mkdir()
    (tmp_path / "1.0.4" / "promotion.json").write_text("{torn")
    assert [r.version for r in promoted_records(tmp_path)] == ["1.0.1", "1.0.2"]
    with pytest.raises(StateFileError, match="unreadable state file"):
        promoted_records(tmp_path, skip_unreadable=False)


def test_a_newer_schema_is_refused_not_misread(tmp_path: Path) -> None:
    path = record_path(tmp_path, "1.0.1")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema": SCHEMA + 1, "status": "promoted"}))
    with pytest.raises(StateFileError, match="newer than this tool"):
        read_record(tmp_path, "1.0.1")


def test_every_explained_failure_is_a_workflow_error_with_its_exit_code() -> None:
    assert issubclass(TrackerError, WorkflowError) and issubclass(StateFileError, WorkflowError)
    assert WorkflowSettingsError("x").exit_code == 2 and StateFileError("x").exit_code == 2
    assert TrackerError("x", retryable=False).exit_code == 1


def test_a_corrupt_record_is_an_error_message_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KIS_RELEASE_DIR", str(tmp_path))
    path = record_path(tmp_path, "1.0.1")
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2]")
    code = main(["standby", "1.0.1", "--artifact", "x.whl", "--pid-file", str(tmp_path / "pid")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "expected a JSON object" in err
    assert "Traceback" not in err
