"""A Jira Server/DC REST v2 emulator over real HTTP, for the real ``jira`` library (docs/conventions.md §9).

It serves what :mod:`kis_estimator.workflows.tracker.jira` uses — ``serverInfo``, ``field``, ``search`` (the
JQL subset below; anything else is a 400 with ``errorMessages``, as Jira answers a bad query), issue
create/get/update, comments, transitions, attachments (multipart ``file`` part; requires ``X-Atlassian-Token:
no-check`` like Jira's XSRF check; replies with the stored size), watchers and ``user/search`` — and validates
like Jira does (summary ≤ 255, description ≤ 32,767, labels without spaces, known project/type/priority/user),
so a request Jira would refuse fails here too.

Defaults are a stock Jira Server/DC 9.12 with a Jira Software project, not what our code sends:
the default priority scheme (Highest, High, Medium, Low, Lowest; ids 1-5 — Jira 7 replaced
Blocker/Critical/Major/Minor/Trivial with these), the software project's issue types (Epic, Story,
Task, Sub-task, Bug), the pre-flight resources (``myself``, ``project/{key}``, ``priority``,
``issuetype``, ``mypermissions``, ``attachment/meta``) and Jira 9's per-project create metadata
(``issue/createmeta/{project}/issuetypes[/{id}]``; the global ``issue/createmeta`` was removed in 9.0
and answers 404 here too). ``priorities=``, ``issue_types=`` and ``permissions=`` configure an
instance with other schemes or fewer rights.

JQL subset: ``project = KIS AND labels = "x"``, optionally ``AND created >= "yyyy-MM-dd[ HH:mm]"``
(read as UTC), optionally ``ORDER BY created ASC|DESC``.

Scripting, per route (``"POST /rest/api/2/issue"``, or a template such as
``"POST /rest/api/2/issue/{key}/attachments"``):

- :meth:`JiraEmulator.fail_next` — the next N requests get ``status`` (e.g. 429 with
  ``Retry-After``, 503) without being processed;
- :meth:`JiraEmulator.drop` — the connection is closed before processing;
- :meth:`JiraEmulator.drop_after_commit` — the request is processed (the issue exists) and then the
  connection is closed without a reply: the client cannot know it succeeded;
- :meth:`JiraEmulator.slow` — the reply is held for ``seconds`` after processing (a client read
  timeout after the commit), interrupted by :meth:`stop`;
- :meth:`JiraEmulator.reject_auth` — every request is a 401; ``max_attachment_bytes`` → 413.

Every request is recorded (method, path, query, headers, body, route) for assertions. ``stop()``
also cuts open keep-alive connections, so a stopped emulator is really unreachable; ``start()``
again (optionally on the same port) keeps the stored issues, like a restarted server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["EmulatedAttachment", "EmulatedIssue", "JiraEmulator", "RecordedRequest"]

API = "/rest/api/2"
SUMMARY_MAX = 255
DESCRIPTION_MAX = 32_767
STATUSES = ("Open", "In Progress", "Done")
TRANSITIONS = (("11", "Start Progress", "In Progress"), ("21", "Done", "Done"), ("31", "Reopen", "Open"))
PRIORITIES = ("Highest", "High", "Medium", "Low", "Lowest")  # Jira ≥ 7 default priority scheme
ISSUE_TYPES = ("Epic", "Story", "Task", "Sub-task", "Bug")  # a Jira Software project's defaults
PERMISSIONS = ("BROWSE_PROJECTS", "CREATE_ISSUES", "CREATE_ATTACHMENTS", "ADD_COMMENTS", "TRANSITION_ISSUES")
FIELDS = (
    ("summary", "Summary"),
    ("description", "Description"),
    ("labels", "Labels"),
    ("priority", "Priority"),
    ("issuetype", "Issue Type"),
    ("project", "Project"),
    ("status", "Status"),
    ("assignee", "Assignee"),
    ("components", "Component/s"),
    ("created", "Created"),
    ("updated", "Updated"),
    ("attachment", "Attachment"),
    ("comment", "Comment"),
)

_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (template, re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"))
    for template in (
        f"{API}/serverInfo",
        f"{API}/field",
        f"{API}/myself",
        f"{API}/search",
        f"{API}/issue",
        f"{API}/issue/{{key}}",
        f"{API}/issue/{{key}}/comment",
        f"{API}/issue/{{key}}/transitions",
        f"{API}/issue/{{key}}/attachments",
        f"{API}/issue/{{key}}/watchers",
        f"{API}/user/search",
        f"{API}/project/{{project}}",
        f"{API}/priority",
        f"{API}/issuetype",
        f"{API}/mypermissions",
        f"{API}/attachment/meta",
        f"{API}/issue/createmeta/{{project}}/issuetypes",
        f"{API}/issue/createmeta/{{project}}/issuetypes/{{type_id}}",
        "/secure/attachment/{id}/{filename}",
    )
)

_JQL = re.compile(
    r"""^\s*project\s*=\s*(?P<project>"[^"]*"|[A-Za-z][A-Za-z0-9_]*)
        \s+AND\s+labels\s*=\s*(?P<label>"(?:[^"\\]|\\.)*"|[^\s"()]+)
        (?:\s+AND\s+created\s*>=\s*"(?P<created>[^"]*)")?
        (?:\s+ORDER\s+BY\s+created(?:\s+(?P<order>ASC|DESC))?)?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    route: str  # "POST /rest/api/2/issue/{key}/attachments"; "" when no route matched

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class EmulatedAttachment:
    id: int
    filename: str
    data: bytes
    mime_type: str
    created: str


@dataclass
class EmulatedIssue:
    id: int
    key: str
    fields: dict[str, Any]
    status: str = "Open"
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    comments: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[EmulatedAttachment] = field(default_factory=list)
    watchers: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return list(self.fields.get("labels") or [])

    @property
    def summary(self) -> str:
        return str(self.fields.get("summary", ""))

    @property
    def description(self) -> str:
        return str(self.fields.get("description") or "")


@dataclass
class _Fault:
    route: str
    kind: str  # "status" | "drop" | "drop_after_commit" | "slow"
    remaining: int
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0
    body: Any = None


class _Reply(Exception):
    """Raised by a route handler to answer with an error status."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _errors(status: int, *messages: str, **fields: str) -> _Reply:
    return _Reply(status, {"errorMessages": list(messages), "errors": fields})


class JiraEmulator:
    """In-memory Jira behind a ThreadingHTTPServer on ``127.0.0.1``; see the module docstring."""

    def __init__(
        self,
        *,
        project: str = "KIS",
        deployment_type: str = "Server",
        users: tuple[str, ...] = ("kis-bot", "alice", "bob", "carol"),
        basic_auth: tuple[str, str] | None = None,
        token: str | None = None,
        max_attachment_bytes: int | None = None,
        now: Callable[[], datetime] | None = None,
        priorities: tuple[str, ...] = PRIORITIES,
        issue_types: tuple[str, ...] = ISSUE_TYPES,
        permissions: tuple[str, ...] = PERMISSIONS,
        attachments_enabled: bool = True,
    ) -> None:
        self.priorities = priorities
        self.issue_types = issue_types
        self.permissions = permissions
        self.attachments_enabled = attachments_enabled
        self.project = project
        self.deployment_type = deployment_type
        self.users = users
        self.basic_auth = basic_auth
        self.token = token
        self.max_attachment_bytes = max_attachment_bytes
        self.now = now or (lambda: datetime.now(UTC))
        self.issues: dict[str, EmulatedIssue] = {}
        self._lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._reject_auth = False
        self._next_id = 10_000
        self._next_attachment = 1
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0) -> JiraEmulator:
        """Serve on ``127.0.0.1:port`` (0: any free port); state survives a stop/start."""
        self._stopping = threading.Event()
        server = _Server(("127.0.0.1", port), _Handler)
        server.emulator = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (held replies are released unanswered)."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.cut_connections()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> JiraEmulator:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ scripting

    def fail_next(
        self,
        route: str,
        status: int,
        *,
        retry_after: int | str | None = None,
        times: int = 1,
        body: Any = None,
    ) -> None:
        """The next ``times`` requests on ``route`` get ``status`` and are not processed."""
        ra = None if retry_after is None else str(retry_after)
        self._add(_Fault(route, "status", times, status=status, retry_after=ra, body=body))

    def drop(self, route: str, *, times: int = 1) -> None:
        """Close the connection before processing (nothing is committed)."""
        self._add(_Fault(route, "drop", times))

    def drop_after_commit(self, route: str, *, times: int = 1) -> None:
        """Process the request, then close the connection without replying."""
        self._add(_Fault(route, "drop_after_commit", times))

    def slow(self, route: str, seconds: float, *, times: int = 1) -> None:
        """Process the request, then hold the reply for ``seconds`` (or until :meth:`stop`)."""
        self._add(_Fault(route, "slow", times, seconds=seconds))

    def reject_auth(self, on: bool = True) -> None:
        """401 for every request while on (credentials revoked)."""
        self._reject_auth = on

    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _add(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def _take(self, request: RecordedRequest, kinds: tuple[str, ...]) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                routes = {request.route, f"{request.method} {request.path}"}
                if fault.kind in kinds and fault.route in routes and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ------------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, route: str) -> list[RecordedRequest]:
        """Requests whose route template or ``METHOD path`` equals ``route``."""
        return [r for r in self.requests if route in (r.route, f"{r.method} {r.path}")]

    def issues_with_label(self, label: str) -> list[EmulatedIssue]:
        with self._lock:
            return [i for i in self.issues.values() if label in i.labels]

    def issue(self, key: str) -> EmulatedIssue:
        with self._lock:
            return self.issues[key]

    # ------------------------------------------------------------------ request handling

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self._reject_auth:
            return False
        given = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if self.basic_auth is None and self.token is None:
            return True
        if self.basic_auth is not None:
            expected = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if given == f"Basic {expected}":
                return True
        return self.token is not None and given == f"Bearer {self.token}"

    def _dispatch(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        handlers: dict[str, Callable[[RecordedRequest, dict[str, str]], tuple[int, Any]]] = {
            f"GET {API}/serverInfo": self._server_info,
            f"GET {API}/field": lambda r, p: (200, self._fields()),
            f"GET {API}/myself": lambda r, p: (200, self._user(self.users[0])),
            f"GET {API}/search": self._search,
            f"POST {API}/search": self._search,
            f"POST {API}/issue": self._create,
            f"GET {API}/issue/{{key}}": self._get_issue,
            f"PUT {API}/issue/{{key}}": self._update_issue,
            f"GET {API}/issue/{{key}}/comment": self._comments,
            f"POST {API}/issue/{{key}}/comment": self._add_comment,
            f"GET {API}/issue/{{key}}/transitions": self._transitions,
            f"POST {API}/issue/{{key}}/transitions": self._transition,
            f"POST {API}/issue/{{key}}/attachments": self._attach,
            f"GET {API}/issue/{{key}}/watchers": self._watchers,
            f"POST {API}/issue/{{key}}/watchers": self._add_watcher,
            f"GET {API}/user/search": self._user_search,
            f"GET {API}/project/{{project}}": self._project,
            f"GET {API}/priority": lambda r, p: (200, [self._priority_json(n) for n in self.priorities]),
            f"GET {API}/issuetype": lambda r, p: (200, [self._type_json(n) for n in self.issue_types]),
            f"GET {API}/mypermissions": self._my_permissions,
            f"GET {API}/attachment/meta": lambda r, p: (
                200,
                {"enabled": self.attachments_enabled, "uploadLimit": self.max_attachment_bytes or 10_485_760},
            ),
            f"GET {API}/issue/createmeta/{{project}}/issuetypes": self._createmeta_types,
            f"GET {API}/issue/createmeta/{{project}}/issuetypes/{{type_id}}": self._createmeta_fields,
            "GET /secure/attachment/{id}/{filename}": self._attachment_content,
        }
        handler = handlers.get(request.route)
        if handler is None:
            raise _errors(404, f"null for uri: {request.path}")
        with self._lock:
            return handler(request, params)

    def _server_info(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        return 200, {
            "baseUrl": self.url,
            "version": "9.12.2",
            "versionNumbers": [9, 12, 2],
            "deploymentType": self.deployment_type,
            "buildNumber": 912002,
            "serverTitle": "KIS Jira (emulator)",
        }

    # ------------------------------------------------------------------ metadata (pre-flight)

    def _priority_json(self, name: str) -> dict[str, Any]:
        pid = str(self.priorities.index(name) + 1)
        return {"self": f"{self.url}{API}/priority/{pid}", "id": pid, "name": name, "statusColor": "#cccccc"}

    def _type_json(self, name: str) -> dict[str, Any]:
        tid = str(10_000 + self.issue_types.index(name))
        return {
            "self": f"{self.url}{API}/issuetype/{tid}",
            "id": tid,
            "name": name,
            "subtask": name == "Sub-task",
            "description": "",
        }

    def _check_project(self, key: str) -> None:
        if key not in (self.project, "10000"):
            raise _errors(404, f"No project could be found with key '{key}'.")
        if "BROWSE_PROJECTS" not in self.permissions:
            raise _errors(404, f"No project could be found with key '{key}'.")

    def _project(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        self._check_project(params["project"])
        return 200, {
            "self": f"{self.url}{API}/project/10000",
            "id": "10000",
            "key": self.project,
            "name": f"{self.project} project",
            "projectTypeKey": "software",
            "issueTypes": [self._type_json(n) for n in self.issue_types],
        }

    def _my_permissions(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        wanted = ",".join(request.query.get("permissions", [""])).split(",")
        if not [w for w in wanted if w]:
            raise _errors(400, "The 'permissions' query parameter is required.")
        return 200, {
            "permissions": {
                key: {
                    "id": str(i),
                    "key": key,
                    "name": key.title(),
                    "type": "PROJECT",
                    "havePermission": key in self.permissions,
                }
                for i, key in enumerate(w for w in wanted if w)
            }
        }

    def _createmeta_types(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        self._check_project(params["project"])
        values = [self._type_json(n) for n in self.issue_types] if "CREATE_ISSUES" in self.permissions else []
        return 200, {"maxResults": 50, "startAt": 0, "total": len(values), "isLast": True, "values": values}

    def _createmeta_fields(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        self._check_project(params["project"])
        by_id = {self._type_json(n)["id"]: n for n in self.issue_types}
        if params["type_id"] not in by_id:
            raise _errors(404, f"Issue type with id '{params['type_id']}' does not exist.")
        values = [
            {"required": True, "name": "Summary", "fieldId": "summary", "schema": {"type": "string"}},
            {
                "required": False,
                "name": "Description",
                "fieldId": "description",
                "schema": {"type": "string"},
            },
            {"required": False, "name": "Labels", "fieldId": "labels", "schema": {"type": "array"}},
            {
                "required": False,
                "name": "Priority",
                "fieldId": "priority",
                "schema": {"type": "priority", "system": "priority"},
                "allowedValues": [self._priority_json(n) for n in self.priorities],
                "hasDefaultValue": True,
            },
        ]
        return 200, {"maxResults": 50, "startAt": 0, "total": len(values), "isLast": True, "values": values}

    def _fields(self) -> list[dict[str, Any]]:
        return [
            {"id": fid, "name": name, "custom": False, "navigable": True, "clauseNames": [fid]}
            for fid, name in FIELDS
        ]

    def _user(self, name: str) -> dict[str, Any]:
        return {
            "self": f"{self.url}{API}/user?username={name}",
            "name": name,
            "key": name,
            "displayName": name.title(),
            "active": True,
        }

    def _find(self, key: str) -> EmulatedIssue:
        issue = self.issues.get(key) or next((i for i in self.issues.values() if str(i.id) == key), None)
        if issue is None:
            raise _errors(404, "Issue Does Not Exist")
        return issue

    def _issue_json(self, issue: EmulatedIssue, wanted: str | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {
            **issue.fields,
            "status": {"name": issue.status, "id": str(STATUSES.index(issue.status) + 1)},
            "created": _jira_time(issue.created),
            "updated": _jira_time(issue.created),
            "attachment": [self._attachment_json(a) for a in issue.attachments],
            "comment": {"comments": list(issue.comments), "total": len(issue.comments), "startAt": 0},
            "watches": {"watchCount": len(issue.watchers), "isWatching": False},
        }
        names = {n.strip() for n in (wanted or "*all").split(",") if n.strip()}
        if not names & {"*all", "*navigable"}:
            fields = {k: v for k, v in fields.items() if k in names}
        return {
            "id": str(issue.id),
            "key": issue.key,
            "self": f"{self.url}{API}/issue/{issue.id}",
            "fields": fields,
        }

    def _attachment_json(self, att: EmulatedAttachment) -> dict[str, Any]:
        return {
            "self": f"{self.url}{API}/attachment/{att.id}",
            "id": str(att.id),
            "filename": att.filename,
            "size": len(att.data),
            "mimeType": att.mime_type,
            "created": att.created,
            "content": f"{self.url}/secure/attachment/{att.id}/{att.filename}",
        }

    def _search(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        args: dict[str, Any] = (
            request.json()
            if request.method == "POST"
            else {k: ",".join(v) if k == "fields" else v[-1] for k, v in request.query.items()}
        )
        jql = str(args.get("jql", ""))
        match = _JQL.match(jql)
        if match is None:
            raise _errors(400, f"Error in the JQL Query: the emulator supports only its subset, not {jql!r}")
        project = match["project"].strip('"')
        if project != self.project:
            raise _errors(400, f"The value '{project}' does not exist for the field 'project'.")
        label = match["label"]
        if label.startswith('"'):
            label = re.sub(r"\\(.)", r"\1", label[1:-1])
        found = [i for i in self.issues.values() if label in i.labels]
        if match["created"] is not None:
            since = _jql_time(match["created"])
            found = [i for i in found if i.created >= since]
        descending = (match["order"] or "ASC").upper() == "DESC" and "ORDER" in jql.upper()
        found.sort(key=lambda i: (i.created, i.id), reverse=descending)
        start = int(args.get("startAt") or 0)
        limit = int(args.get("maxResults") or 50)
        wanted = args.get("fields")
        wanted_text = ",".join(wanted) if isinstance(wanted, list) else wanted
        page = found[start : start + limit]
        return 200, {
            "startAt": start,
            "maxResults": limit,
            "total": len(found),
            "issues": [self._issue_json(i, wanted_text) for i in page],
        }

    def _create(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        fields = dict(request.json().get("fields") or {})
        project = fields.get("project") or {}
        if project.get("key") != self.project and project.get("id") != "10000":
            raise _errors(400, project="valid project is required")
        issue_type = (fields.get("issuetype") or {}).get("name")
        if issue_type not in self.issue_types:
            raise _errors(400, issuetype="valid issue type is required")
        if "CREATE_ISSUES" not in self.permissions:
            raise _errors(400, project="You do not have permission to create issues in this project.")
        self._validate(fields)
        self._next_id += 1
        key = f"{self.project}-{self._next_id - 10_000}"
        issue = EmulatedIssue(id=self._next_id, key=key, fields=fields, created=self.now())
        self.issues[key] = issue
        return 201, {"id": str(issue.id), "key": key, "self": f"{self.url}{API}/issue/{issue.id}"}

    def _validate(self, fields: dict[str, Any]) -> None:
        if "summary" in fields:
            summary = fields.get("summary")
            if not isinstance(summary, str) or not summary.strip():
                raise _errors(400, summary="You must specify a summary of the issue.")
            if len(summary) > SUMMARY_MAX or "\n" in summary:
                raise _errors(400, summary="Summary must be less than 255 characters.")
        description = fields.get("description")
        if isinstance(description, str) and len(description.encode("utf-16-le")) // 2 > DESCRIPTION_MAX:
            raise _errors(
                400, description="The entered text is too long. It exceeds the allowed limit of 32767."
            )
        for label in fields.get("labels") or []:
            if not isinstance(label, str) or not label or re.search(r"\s", label) or len(label) > 255:
                raise _errors(400, labels=f"The label '{label}' contains spaces which is invalid.")
        priority = fields.get("priority")
        if priority is not None and priority.get("name") not in self.priorities:
            raise _errors(400, priority="Specify a valid value for priority")
        assignee = fields.get("assignee")
        if assignee is not None and assignee.get("name") not in self.users:
            raise _errors(400, assignee=f"User '{assignee.get('name')}' does not exist.")

    def _get_issue(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        wanted = request.query.get("fields", [None])[-1]
        return 200, self._issue_json(self._find(params["key"]), wanted)

    def _update_issue(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        issue = self._find(params["key"])
        body = request.json()
        fields = dict(body.get("fields") or {})
        for op in (body.get("update") or {}).get("labels", []):
            labels = issue.labels
            if "add" in op and op["add"] not in labels:
                labels.append(op["add"])
            if "remove" in op and op["remove"] in labels:
                labels.remove(op["remove"])
            fields["labels"] = labels
        self._validate(fields)
        issue.fields.update(fields)
        return 204, None

    def _comments(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        issue = self._find(params["key"])
        n = len(issue.comments)
        return 200, {"startAt": 0, "maxResults": n, "total": n, "comments": list(issue.comments)}

    def _add_comment(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        issue = self._find(params["key"])
        body = request.json().get("body")
        if not isinstance(body, str) or not body.strip():
            raise _errors(400, comment="Comment body can not be empty!")
        if len(body.encode("utf-16-le")) // 2 > DESCRIPTION_MAX:
            raise _errors(400, comment="The entered text is too long. It exceeds the allowed limit of 32767.")
        comment = {
            "id": str(20_000 + sum(len(i.comments) for i in self.issues.values())),
            "body": body,
            "author": self._user(self.users[0]),
            "created": _jira_time(self.now()),
        }
        issue.comments.append(comment)
        return 201, comment

    def _available(self, issue: EmulatedIssue) -> list[dict[str, Any]]:
        return [
            {"id": tid, "name": name, "to": {"name": to, "id": str(STATUSES.index(to) + 1)}}
            for tid, name, to in TRANSITIONS
            if to != issue.status
        ]

    def _transitions(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        return 200, {"expand": "transitions", "transitions": self._available(self._find(params["key"]))}

    def _transition(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        issue = self._find(params["key"])
        wanted = str((request.json().get("transition") or {}).get("id"))
        chosen = next((t for t in self._available(issue) if t["id"] == wanted), None)
        if chosen is None:
            raise _errors(400, f"Transition id '{wanted}' is not valid for this issue.")
        issue.status = chosen["to"]["name"]
        return 204, None

    def _attach(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        issue = self._find(params["key"])
        if request.header("X-Atlassian-Token") != "no-check":
            raise _Reply(403, {"message": "XSRF check failed"})
        if not self.attachments_enabled or "CREATE_ATTACHMENTS" not in self.permissions:
            raise _errors(403, "You do not have permission to create attachments for this issue.")
        content_type = request.header("Content-Type") or ""
        if not content_type.startswith("multipart/form-data"):
            raise _errors(415, "attachments must be multipart/form-data")
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = BytesParser(policy=default_policy).parsebytes(head + request.body)
        parts = [
            p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "file"
        ]
        if not parts:
            raise _errors(400, "no 'file' part in the upload")
        created = []
        for part in parts:
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            if self.max_attachment_bytes is not None and len(data) > self.max_attachment_bytes:
                raise _errors(
                    413, f"the file exceeds the maximum attachment size of {self.max_attachment_bytes}"
                )
            att = EmulatedAttachment(
                id=self._next_attachment,
                filename=part.get_filename() or "file",
                data=data,
                mime_type=part.get_content_type(),
                created=_jira_time(self.now()),
            )
            self._next_attachment += 1
            issue.attachments.append(att)
            created.append(self._attachment_json(att))
        return 200, created

    def _watchers(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        issue = self._find(params["key"])
        return 200, {"watchCount": len(issue.watchers), "watchers": [self._user(w) for w in issue.watchers]}

    def _add_watcher(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        issue = self._find(params["key"])
        name = request.json()
        if name not in self.users:
            raise _errors(404, f'The user "{name}" does not exist')
        if name not in issue.watchers:
            issue.watchers.append(name)
        return 204, None

    def _user_search(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        wanted = (request.query.get("username") or [""])[-1].lower()
        return 200, [self._user(u) for u in self.users if wanted and u.lower().startswith(wanted)]

    def _attachment_content(self, request: RecordedRequest, params: dict[str, str]) -> tuple[int, Any]:
        for issue in self.issues.values():
            for att in issue.attachments:
                if str(att.id) == params["id"]:
                    return 200, att.data
        raise _errors(404, "attachment not found")


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    for template, pattern in _ROUTES:
        m = pattern.match(path)
        if m:
            return f"{method} {template}", m.groupdict()
    return "", {}


def _jira_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+0000"


def _jql_time(text: str) -> datetime:
    for fmt in ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d", "%Y/%m/%d"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
    raise _errors(400, f"Date value '{text}' for field 'created' is invalid.")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    emulator: JiraEmulator

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or are cut by stop() leave broken pipes behind: expected here.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the client's delayed ACK adds ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        emulator = self.server.emulator
        body = self._read_body()
        parts = urlsplit(self.path)
        route, params = _route(self.command, parts.path)
        request = RecordedRequest(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=dict(self.headers.items()),
            body=body,
            route=route,
        )
        emulator._record(request)
        fault = emulator._take(request, ("status", "drop"))
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            return
        if fault is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            message = (
                fault.body if fault.body is not None else {"errorMessages": [f"scripted HTTP {fault.status}"]}
            )
            self._send(fault.status, message, extra)
            return
        if not emulator._authorized(request.headers):
            self._send(
                401,
                {"errorMessages": ["You are not authenticated."]},
                {"X-Seraph-LoginReason": "AUTHENTICATED_FAILED"},
            )
            return
        try:
            status, payload = emulator._dispatch(request, params)
            headers: dict[str, str] = {}
        except _Reply as reply:
            status, payload, headers = reply.status, reply.body, reply.headers
        after = emulator._take(request, ("drop_after_commit", "slow"))
        if after is not None and after.kind == "drop_after_commit":
            self.close_connection = True
            return
        if after is not None and emulator._stopping.wait(after.seconds):
            self.close_connection = True
            return
        self._send(status, payload, headers)

    def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        if payload is None:
            data, kind = b"", "application/json;charset=UTF-8"
        elif isinstance(payload, bytes):
            data, kind = payload, "application/octet-stream"
        else:
            data, kind = json.dumps(payload).encode("utf-8"), "application/json;charset=UTF-8"
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if data or status != 204:
                self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True


def serve(emulator: JiraEmulator) -> Iterator[JiraEmulator]:
    """For fixtures: ``yield from serve(JiraEmulator(...))`` starts it and stops it afterwards."""
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
