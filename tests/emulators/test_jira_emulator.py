"""The Jira emulator's own tests: raw HTTP for its contract, then the real ``jira`` library against it."""

from __future__ import annotations

import base64
import http.client
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from jira import JIRA, JIRAError

from tests.emulators.jira import JiraEmulator

AUTH = ("kis-bot", "emulator-secret")
TIMEOUT_S = 5.0


@pytest.fixture
def emulator() -> Iterator[JiraEmulator]:
    with JiraEmulator(basic_auth=AUTH) as emu:
        yield emu


@pytest.fixture
def client(emulator: JiraEmulator) -> Iterator[JIRA]:
    jira = JIRA(
        server=emulator.url, basic_auth=AUTH, max_retries=0, timeout=(2.0, 2.0), get_server_info=False
    )
    yield jira
    jira.close()  # type: ignore[no-untyped-call]


def call(
    emulator: JiraEmulator, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=TIMEOUT_S)
    token = base64.b64encode(":".join(AUTH).encode()).decode()
    sent = {"Authorization": f"Basic {token}", "Content-Type": "application/json", **(headers or {})}
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    try:
        conn.request(method, path, body=data, headers=sent)
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def create(emulator: JiraEmulator, labels: list[str], **fields: Any) -> str:
    body = {
        "fields": {
            "project": {"key": "KIS"},
            "issuetype": {"name": "Task"},
            "summary": "s",
            "labels": labels,
            **fields,
        }
    }
    status, _, data = call(emulator, "POST", "/rest/api/2/issue", body)
    assert status == 201, data
    return str(json.loads(data)["key"])


def test_creates_issues_with_sequential_keys_and_records_the_request(emulator: JiraEmulator) -> None:
    assert [create(emulator, ["a"]), create(emulator, ["b"])] == ["KIS-1", "KIS-2"]
    recorded = emulator.requests_to("POST /rest/api/2/issue")
    assert len(recorded) == 2
    assert recorded[0].json()["fields"]["labels"] == ["a"]
    assert (
        recorded[0].header(
            "authorization",
        )
        is not None
    )
    assert emulator.issue("KIS-2").labels == ["b"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"summary": "x" * 256}, "Summary must be less than 255 characters."),
        ({"summary": "two\nlines"}, "Summary must be less than 255 characters."),
        (
            {"description": "d" * 32_768},
            "The entered text is too long. It exceeds the allowed limit of 32767.",
        ),
        ({"labels": ["has space"]}, "The label 'has space' contains spaces which is invalid."),
        ({"priority": {"name": "Urgent!"}}, "Specify a valid value for priority"),
        ({"assignee": {"name": "nobody"}}, "User 'nobody' does not exist."),
        ({"issuetype": {"name": "Deployment"}}, "valid issue type is required"),
    ],
    ids=[
        "summary-256",
        "summary-newline",
        "description-32768",
        "label-space",
        "priority",
        "assignee",
        "type",
    ],
)
def test_create_rejects_what_jira_rejects(
    emulator: JiraEmulator, fields: dict[str, Any], message: str
) -> None:
    body = {"fields": {"project": {"key": "KIS"}, "issuetype": {"name": "Task"}, "summary": "s", **fields}}
    status, _, data = call(emulator, "POST", "/rest/api/2/issue", body)
    assert (status, list(json.loads(data)["errors"].values())) == (400, [message])
    assert emulator.issues == {}


@pytest.mark.parametrize(
    ("jql", "expected"),
    [
        ('project = KIS AND labels = "kis-idem-1"', ["KIS-1"]),
        ('project = "KIS" AND labels = kis-idem-1', ["KIS-1"]),
        ('project = KIS AND labels = "shared" ORDER BY created DESC', ["KIS-3", "KIS-2"]),
        ('project = KIS AND labels = "shared" AND created >= "2025-09-23 12:00"', ["KIS-3"]),
        ('project = KIS AND labels = "nothing"', []),
    ],
    ids=["quoted-label", "quoted-project", "order-desc", "created-since", "none"],
)
def test_search_supports_the_jql_subset(emulator: JiraEmulator, jql: str, expected: list[str]) -> None:
    times = iter([datetime(2025, 9, 23, 11, 0, tzinfo=UTC), datetime(2025, 9, 23, 11, 30, tzinfo=UTC)])
    times2 = iter([datetime(2025, 9, 23, 12, 30, tzinfo=UTC)])
    emulator.now = lambda: next(times)
    create(emulator, ["kis-idem-1"])
    create(emulator, ["shared"])
    emulator.now = lambda: next(times2)
    create(emulator, ["shared"])
    status, _, data = call(emulator, "GET", "/rest/api/2/search?" + _query(jql))
    assert status == 200
    assert [i["key"] for i in json.loads(data)["issues"]] == expected


@pytest.mark.parametrize(
    "jql",
    ['labels = "x"', 'project = KIS AND summary ~ "x"', 'project = KIS OR labels = "x"', "text ~ x"],
    ids=["no-project", "summary", "or", "text"],
)
def test_search_answers_400_to_anything_else(emulator: JiraEmulator, jql: str) -> None:
    status, _, data = call(emulator, "GET", "/rest/api/2/search?" + _query(jql))
    assert status == 400
    assert json.loads(data)["errorMessages"][0].startswith("Error in the JQL Query")


def test_search_for_an_unknown_project_is_a_400(emulator: JiraEmulator) -> None:
    status, _, data = call(emulator, "GET", "/rest/api/2/search?" + _query('project = OPS AND labels = "x"'))
    assert (status, json.loads(data)["errorMessages"]) == (
        400,
        ["The value 'OPS' does not exist for the field 'project'."],
    )


def _query(jql: str) -> str:
    return urlencode({"jql": jql})


def test_attachments_need_the_xsrf_header_and_a_multipart_file_part(emulator: JiraEmulator) -> None:
    key = create(emulator, [])
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="deploy.log"\r\n'
        "Content-Type: text/plain\r\n\r\nline 1\nline 2\n\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    multipart = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, _, _ = call(emulator, "POST", f"/rest/api/2/issue/{key}/attachments", body, multipart)
    assert status == 403
    status, _, data = call(
        emulator,
        "POST",
        f"/rest/api/2/issue/{key}/attachments",
        body,
        {**multipart, "X-Atlassian-Token": "no-check"},
    )
    assert status == 200
    assert [(a["filename"], a["size"]) for a in json.loads(data)] == [("deploy.log", 14)]
    assert emulator.issue(key).attachments[0].data == b"line 1\nline 2\n"


def test_attachments_over_the_limit_get_413() -> None:
    with JiraEmulator(max_attachment_bytes=4) as emulator:
        jira = JIRA(server=emulator.url, max_retries=0, timeout=(2.0, 2.0), get_server_info=False)
        key = create(emulator, [])
        with pytest.raises(JIRAError) as caught:
            jira.add_attachment(key, io.BytesIO(b"12345"), filename="big.bin")
        jira.close()  # type: ignore[no-untyped-call]
    assert caught.value.status_code == 413
    assert emulator.issue(key).attachments == []


def test_fail_next_answers_the_scripted_status_then_recovers(emulator: JiraEmulator) -> None:
    emulator.fail_next("POST /rest/api/2/issue", 429, retry_after=7, times=2)
    body = {"fields": {"project": {"key": "KIS"}, "issuetype": {"name": "Task"}, "summary": "s"}}
    replies = [call(emulator, "POST", "/rest/api/2/issue", body) for _ in range(3)]
    assert [(s, h.get("Retry-After")) for s, h, _ in replies] == [(429, "7"), (429, "7"), (201, None)]
    assert list(emulator.issues) == ["KIS-1"]
    assert emulator.pending_faults() == 0


def test_faults_match_route_templates(emulator: JiraEmulator) -> None:
    key = create(emulator, [])
    emulator.fail_next("GET /rest/api/2/issue/{key}", 503)
    assert call(emulator, "GET", f"/rest/api/2/issue/{key}")[0] == 503
    assert call(emulator, "GET", f"/rest/api/2/issue/{key}")[0] == 200


def test_drop_after_commit_creates_the_issue_but_sends_no_reply(emulator: JiraEmulator) -> None:
    emulator.drop_after_commit("POST /rest/api/2/issue")
    body = {"fields": {"project": {"key": "KIS"}, "issuetype": {"name": "Task"}, "summary": "s"}}
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        call(emulator, "POST", "/rest/api/2/issue", body)
    assert list(emulator.issues) == ["KIS-1"]


def test_drop_closes_before_anything_is_committed(emulator: JiraEmulator) -> None:
    emulator.drop("POST /rest/api/2/issue")
    body = {"fields": {"project": {"key": "KIS"}, "issuetype": {"name": "Task"}, "summary": "s"}}
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        call(emulator, "POST", "/rest/api/2/issue", body)
    assert emulator.issues == {}


def test_slow_reply_commits_first_and_outlasts_a_short_client_timeout(emulator: JiraEmulator) -> None:
    emulator.slow("POST /rest/api/2/issue", 1.0)
    body: dict[str, Any] = {
        "fields": {"project": {"key": "KIS"}, "issuetype": {"name": "Task"}, "summary": "s"}
    }
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{emulator.url}/rest/api/2/issue", json=body, auth=AUTH, timeout=(1.0, 0.3))
    assert list(emulator.issues) == ["KIS-1"]


def test_reject_auth_answers_401_to_everything(emulator: JiraEmulator) -> None:
    emulator.reject_auth()
    assert call(emulator, "GET", "/rest/api/2/serverInfo")[0] == 401
    emulator.reject_auth(False)
    assert call(emulator, "GET", "/rest/api/2/serverInfo")[0] == 200


def test_wrong_credentials_are_a_401(emulator: JiraEmulator) -> None:
    reply = requests.get(
        f"{emulator.url}/rest/api/2/serverInfo", auth=("kis-bot", "wrong"), timeout=TIMEOUT_S
    )
    assert reply.status_code == 401


def test_stop_makes_it_unreachable_and_a_restart_keeps_the_issues(emulator: JiraEmulator) -> None:
    session = requests.Session()
    assert session.get(f"{emulator.url}/rest/api/2/serverInfo", auth=AUTH, timeout=TIMEOUT_S).ok  # keep-alive
    key = create(emulator, ["kept"])
    port = emulator.port
    emulator.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"{emulator.url}/rest/api/2/serverInfo", auth=AUTH, timeout=TIMEOUT_S)
    emulator.start(port)
    assert emulator.port == port
    assert [i.key for i in emulator.issues_with_label("kept")] == [key]
    session.close()


def test_the_real_jira_library_round_trip(emulator: JiraEmulator, client: JIRA) -> None:
    assert client.server_info()["deploymentType"] == "Server"
    issue = client.create_issue(
        fields={
            "project": {"key": "KIS"},
            "issuetype": {"name": "Bug"},
            "summary": "[ROLLBACK] KIS Estimator GA 1.0.0 → 0.9",
            "priority": {"name": "Highest"},
            "labels": ["kis-rollback"],
            "assignee": {"name": "alice"},
        },
        prefetch=False,
    )
    key = str(issue.key)
    found = client.search_issues(
        'project = KIS AND labels = "kis-rollback"', fields="status", json_result=True
    )
    assert [i["key"] for i in found["issues"]] == [key]
    attachment = client.add_attachment(key, io.BytesIO(b"rollback log\n"), filename="rollback.log")
    assert attachment.size == 13
    upload = emulator.requests_to("POST /rest/api/2/issue/{key}/attachments")[0]
    assert upload.header("X-Atlassian-Token") == "no-check"
    assert (upload.header("Content-Type") or "").startswith("multipart/form-data; boundary=")
    client.transition_issue(key, "11")
    assert client.issue(key, fields="status").raw["fields"]["status"]["name"] == "In Progress"
    client.add_comment(key, "started")
    assert [c.raw["body"] for c in client.comments(key)] == ["started"]
    client.add_watcher(key, "bob")
    assert emulator.issue(key).watchers == ["bob"]
    assert emulator.issue(key).fields["assignee"] == {"name": "alice"}
    with pytest.raises(JIRAError) as caught:
        client.search_issues("assignee = alice", json_result=True)
    assert caught.value.status_code == 400


def test_cloud_mode_reports_cloud_in_server_info() -> None:
    with JiraEmulator(deployment_type="Cloud") as emulator:
        reply = requests.get(f"{emulator.url}/rest/api/2/serverInfo", timeout=TIMEOUT_S)
    assert reply.json()["deploymentType"] == "Cloud"


# --- a stock Jira: what the defaults are, documented, not what our code sends ---------------------


@pytest.mark.parametrize("priority", ["Critical", "Blocker", "Major", "Minor", "Trivial"])
def test_the_pre_jira_7_priorities_do_not_exist_in_the_default_scheme(
    emulator: JiraEmulator, priority: str
) -> None:
    body = {
        "fields": {
            "project": {"key": "KIS"},
            "issuetype": {"name": "Bug"},
            "summary": "s",
            "priority": {"name": priority},
        }
    }
    status, _, data = call(emulator, "POST", "/rest/api/2/issue", body)
    assert status == 400 and "priority" in json.loads(data)["errors"]


def test_the_default_priorities_and_issue_types_are_listed(emulator: JiraEmulator) -> None:
    _, _, data = call(emulator, "GET", "/rest/api/2/priority")
    assert [(p["id"], p["name"]) for p in json.loads(data)] == [
        ("1", "Highest"),
        ("2", "High"),
        ("3", "Medium"),
        ("4", "Low"),
        ("5", "Lowest"),
    ]
    _, _, data = call(emulator, "GET", "/rest/api/2/issue/createmeta/KIS/issuetypes")
    types = {t["name"]: t["id"] for t in json.loads(data)["values"]}
    assert set(types) == {"Epic", "Story", "Task", "Sub-task", "Bug"}
    _, _, data = call(emulator, "GET", f"/rest/api/2/issue/createmeta/KIS/issuetypes/{types['Bug']}")
    priority = next(f for f in json.loads(data)["values"] if f["fieldId"] == "priority")
    assert [v["name"] for v in priority["allowedValues"]] == ["Highest", "High", "Medium", "Low", "Lowest"]


def test_jira_9_has_no_global_createmeta(emulator: JiraEmulator) -> None:
    status, _, _ = call(emulator, "GET", "/rest/api/2/issue/createmeta?projectKeys=KIS")
    assert status == 404


def test_permissions_and_unknown_projects_answer_as_jira_does() -> None:
    with JiraEmulator(permissions=("BROWSE_PROJECTS", "CREATE_ISSUES")) as emulator:
        _, _, data = call(
            emulator,
            "GET",
            "/rest/api/2/mypermissions?projectKey=KIS&permissions=CREATE_ISSUES,CREATE_ATTACHMENTS",
        )
        have = {k: v["havePermission"] for k, v in json.loads(data)["permissions"].items()}
        assert have == {"CREATE_ISSUES": True, "CREATE_ATTACHMENTS": False}
        status, _, data = call(emulator, "GET", "/rest/api/2/project/NOPE")
        assert status == 404 and "No project could be found" in json.loads(data)["errorMessages"][0]
