"""The CLI an estimator lives in, run as a process the way the README's walk-through runs it.

list → review → quote against a live server; Korean tables (and ``--lang en``); local errors that
are bilingual, name the field path and the fix, and print as JSON with ``--json``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from tests.integration.conftest import Served, start_app
from tests.integration.test_prometheus import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE: dict[str, Any] = json.loads((ROOT / "examples" / "example1.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = start_app(tmp_path_factory.mktemp("cli"))
    yield s
    s.app.stop(0)


def kis(
    served: Served | None, *args: str, stdin: str = "", token: str | None = "ESTIMATOR"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIS_")}
    if served is not None:
        env["KIS_TARGET"] = served.address
        if token:
            env["KIS_TOKEN"] = served.tokens[token]
    return subprocess.run(
        [sys.executable, "-m", "kis_estimator.server.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )


def _request_file(tmp_path: Path, name: str, **changes: Any) -> Path:
    path = tmp_path / name
    path.write_text(
        json.dumps({k: v for k, v in {**EXAMPLE, **changes}.items() if k != "request_id"}), "utf-8"
    )
    return path


def test_list_review_quote_as_the_readme_walks_through_it(served: Served, tmp_path: Path) -> None:
    request = _request_file(
        tmp_path,
        "custom.json",
        enclosure={"kind": "CUSTOM"},
        customer={"name": "대한전기(주)"},
        project={"name": "OO빌딩", "location": "서울"},
    )
    created = kis(served, "estimate", str(request), "--json")
    assert created.returncode == 0, created.stderr
    estimate_id = json.loads(created.stdout)["estimate_id"]

    listed = kis(served, "list", "--status", "NEEDS_REVIEW")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["견적번호", "개정", "상태"]
    assert any(r.split()[:3] == [estimate_id, "1", "NEEDS_REVIEW"] for r in rows), listed.stdout

    shown = kis(served, "get", estimate_id)
    assert "수신: 대한전기(주)" in shown.stdout and "현장명: OO빌딩 / 서울" in shown.stdout
    assert "검토 질문:" in shown.stdout

    reviewed = kis(served, "review", estimate_id, stdin="450,000\n")  # answered at the prompt
    assert reviewed.returncode == 0, reviewed.stdout + reviewed.stderr
    assert "단가 (unit price, KRW):" in reviewed.stdout and "REVIEWED" in reviewed.stdout
    assert "합계 (원)" in reviewed.stdout

    out = tmp_path / "견적서.xlsx"
    quoted = kis(served, "quote", estimate_id, "-o", str(out), token="VIEWER")
    assert quoted.returncode == 0, quoted.stderr
    cover = {
        r[0]: r[1]
        for r in openpyxl.load_workbook(io.BytesIO(out.read_bytes()))["표지"].iter_rows(values_only=True)
    }
    assert cover["수신"] == "대한전기(주) 귀하" and str(cover["합계 금액"]).startswith("일금 ")

    version = kis(None, "--version")
    assert version.returncode == 0 and version.stdout.startswith("kis-estimator ")


def test_review_answers_on_the_command_line_and_refuses_a_malformed_one(
    served: Served, tmp_path: Path
) -> None:
    created = kis(
        served, "estimate", str(_request_file(tmp_path, "c.json", enclosure={"kind": "CUSTOM"})), "--json"
    )
    estimate_id = json.loads(created.stdout)["estimate_id"]
    bad = kis(served, "review", estimate_id, "--answer", "R1=lots")
    assert bad.returncode == 2 and "REASON=단가" in bad.stderr and "--answer R1=lots" in bad.stderr
    done = kis(served, "review", estimate_id, "--answer", "R1=450000", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ESTIMATE_STATUS_REVIEWED"


def test_the_table_is_korean_unless_asked_for_english(served: Served) -> None:
    ko = kis(served, "estimate", str(ROOT / "examples" / "example1.json"), "--dry-run")
    assert ko.returncode == 0, ko.stderr
    for text in (
        "번호",
        "구분",
        "품명 / 규격",
        "외함",
        "분기차단기",
        "소계",
        "부가세 10%",
        "합계 (원)",
        "1,134,100",
    ):
        assert text in ko.stdout, text
    en = kis(served, "estimate", str(ROOT / "examples" / "example1.json"), "--dry-run", "--lang", "en")
    assert "BRANCH_BREAKERS" in en.stdout and "subtotal" in en.stdout and "소계" not in en.stdout


@pytest.mark.parametrize(
    ("changes", "path", "en", "ko"),
    [
        (
            {"branches": [{}, {}, {"kind": "ELB", "qtty": 1}]},
            "branches[2].qtty",
            "unknown field",
            "알 수 없는 필드",
        ),
        ({"branches": [{}, {}, {"qty": "x"}]}, "branches[2].qty", 'expected an integer, got "x"', "정수여야"),
        ({"installation": "INDOOR"}, "installation", "expected a JSON object", "JSON 객체"),
    ],
    ids=["unknown-field", "wrong-type", "not-an-object"],
)
def test_local_errors_are_bilingual_and_name_the_field_path(
    served: Served, tmp_path: Path, changes: dict[str, Any], path: str, en: str, ko: str
) -> None:
    bad = _request_file(tmp_path, "bad.json", **changes)
    done = kis(served, "estimate", str(bad))
    assert done.returncode == 2
    assert f"error: {path}: {en}" in done.stderr and ko in done.stderr and "Traceback" not in done.stderr
    as_json = kis(served, "estimate", str(bad), "--json")
    error = json.loads(as_json.stdout)["error"]
    assert (error["field"], as_json.returncode) == (path, 2) and ko in error["message_ko"]


def test_no_token_and_no_server_say_what_to_do(served: Served) -> None:
    no_token = kis(served, "get", "est_x", token=None)
    assert (
        no_token.returncode == 2
        and "set KIS_TOKEN" in no_token.stderr
        and "KIS_TOKEN을 설정" in no_token.stderr
    )
    env_target = f"127.0.0.1:{free_port()}"  # nothing listens there
    down = kis(None, "get", "est_x", "--target", env_target, "--token", "t", "--timeout", "2")
    assert down.returncode == 2 and f"is the server running on {env_target}?" in down.stderr
    assert "실행 중인지 확인하세요" in down.stderr
