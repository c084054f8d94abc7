"""JiraIssueTracker: the IssueTracker for Jira Server/Data Center over REST v2, with the ``jira`` library.

Failure modes this module exists for (docs/conventions.md §5, jiralert's notify.go):

- The library never retries or sleeps: ``JIRA(..., max_retries=0, timeout=(connect, read))``.
  :func:`tracker_retrying` owns retries: 429 (honouring an integer ``Retry-After``), 502/503/504,
  connection errors and timeouts; never 400/401/403 or anything else.
- Only idempotent units are retried. Creating an issue is made idempotent by a deterministic label
  (``kis-idem-<hash>``): the local ledger is consulted first, then JQL
  ``project = X AND labels = "kis-idem-…"``, and only then ``POST /issue`` — all under a file lock,
  so a reply lost after the create was committed (timeout, dropped connection), a re-run or a
  concurrent run on this host finds the issue instead of filing a second one. Attachments are
  skipped when a file of that name is already on the issue; comments carry a ``kis-idem:<hash>``
  marker that is looked for first; transitions check the current status first. Each of these
  check-then-act steps holds the ledger's lock too (never across a retry's sleep), so concurrent
  runs on this host do not both attach, comment or transition.
- Sizes: summary ≤ 255 and description/comment ≤ 32,767 UTF-16 units (Jira counts Java chars);
  the overflow goes into an attachment. Attachments are never empty; big text is gzipped.
- ``JIRAError`` and ``requests`` errors are translated to :class:`TrackerError` here and go no
  further. Their ``str()`` includes request headers (the Authorization header), so they are never
  formatted, logged or chained: messages carry only the status and Jira's error text.
- Jira Cloud (``deploymentType == "Cloud"``: ADF bodies, ``/rest/api/3/search/jql``) is detected
  from ``serverInfo`` before the first write and refused with a clear error.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import requests
from jira import JIRA, JIRAError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential
from tenacity.wait import wait_base

from kis_estimator.workflows.tracker.idempotency import IdempotencyLedger, idem_hash, idem_label
from kis_estimator.workflows.tracker.protocol import (
    Attachment,
    Document,
    IssueDraft,
    IssueRef,
    PreflightCheck,
    TrackerError,
    TrackerOptions,
)
from kis_estimator.workflows.tracker.render import escape_wiki, render_wiki

__all__ = [
    "DESCRIPTION_MAX_CHARS",
    "SUMMARY_MAX_CHARS",
    "JiraConfig",
    "JiraIssueTracker",
    "RetryAfterWait",
    "fit_text",
    "prepare_attachments",
    "tracker_retrying",
]

LOG = logging.getLogger(__name__)
T = TypeVar("T")

SUMMARY_MAX_CHARS = 255
DESCRIPTION_MAX_CHARS = 32_767
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
_TEXT_TYPES = frozenset({"application/json", "application/xml", "application/x-ndjson", "application/yaml"})
_TEXT_SUFFIXES = frozenset({".log", ".txt", ".md", ".json", ".csv", ".xml", ".yaml", ".yml", ".out", ".err"})


# ---------------------------------------------------------------------------------- retries


class RetryAfterWait(wait_base):
    """Wait what the server asked for (``TrackerError.retry_after_s``, capped), else ``fallback``."""

    def __init__(self, fallback: wait_base, max_s: float = 60.0) -> None:
        self.fallback = fallback
        self.max_s = max_s

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(error, TrackerError) and error.retry_after_s is not None:
            return min(error.retry_after_s, self.max_s)
        return self.fallback(retry_state)


def tracker_retrying(sleep: Callable[[float], None]) -> Retrying:
    """The retry policy for every idempotent tracker call (docs/conventions.md §5), plus ``Retry-After``."""
    return Retrying(
        stop=stop_after_attempt(5),  # attempts, not seconds: delay stops read time.monotonic()
        # A Retry-After above 60 s is capped: a release run should not block for minutes; the
        # outbox keeps the ticket if the server is still refusing after the last attempt.
        wait=RetryAfterWait(fallback=wait_exponential(multiplier=0.5, max=8.0), max_s=60.0),
        retry=retry_if_exception(lambda e: isinstance(e, TrackerError) and e.retryable),
        reraise=True,
        sleep=sleep,
    )


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn library errors into TrackerError; ``from None`` keeps auth headers out of tracebacks."""
    try:
        yield
    except JIRAError as exc:
        raise _from_jira_error(what, exc) from None
    except requests.exceptions.Timeout as exc:
        raise TrackerError(
            f"{what}: Jira did not answer in time ({type(exc).__name__})", retryable=True
        ) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        raise TrackerError(f"{what}: cannot reach Jira ({type(exc).__name__})", retryable=True) from None
    except requests.exceptions.RequestException as exc:
        raise TrackerError(f"{what}: request failed ({type(exc).__name__})", retryable=False) from None
    except ValueError:
        raise TrackerError(f"{what}: Jira sent a reply that is not JSON", retryable=False) from None


def _from_jira_error(what: str, exc: JIRAError) -> TrackerError:
    status = exc.status_code if isinstance(exc.status_code, int) else None
    detail = " ".join(str(exc.text or "").split())[:300]
    if status in (401, 403):
        hint = "check KIS_JIRA_USER / KIS_JIRA_TOKEN and the account's project permissions"
        return TrackerError(
            f"{what}: Jira refused the credentials (HTTP {status}); {hint}", retryable=False, status=status
        )
    retry_after: float | None = None
    if status == 429 and exc.response is not None:
        value = str(exc.response.headers.get("Retry-After", "")).strip()
        retry_after = float(int(value)) if value.isdigit() else None  # HTTP-date form: use our backoff
    label = f"HTTP {status}" if status is not None else "error"
    return TrackerError(
        f"{what}: Jira answered {label}{': ' + detail if detail else ''}",
        retryable=status in RETRYABLE_STATUSES,
        status=status,
        retry_after_s=retry_after,
    )


# ---------------------------------------------------------------------------------- sizes


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def fit_text(text: str, max_units: int, note: str = "") -> tuple[str, bool]:
    """``text`` cut to ``max_units`` UTF-16 units (Jira's char count) with ``note`` appended if cut."""
    if _utf16_units(text) <= max_units:
        return text, False
    room = max(0, max_units - _utf16_units(note))
    head = text.encode("utf-16-le")[: room * 2].decode("utf-16-le", errors="ignore")
    return head + note, True


def _one_line_summary(summary: str) -> str:
    flat = " ".join(summary.split())
    return fit_text(flat, SUMMARY_MAX_CHARS, "…")[0]


def _is_text(att: Attachment) -> bool:
    kind = att.content_type.split(";")[0].strip().lower()
    return (
        kind.startswith("text/")
        or kind in _TEXT_TYPES
        or PurePosixPath(att.name).suffix.lower() in _TEXT_SUFFIXES
    )


def _safe_name(name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name.strip()
    base = re.sub(r"[\x00-\x1f]", "_", base)
    return base if base not in {"", ".", ".."} else "attachment"


def prepare_attachments(
    attachments: Sequence[Attachment], *, limit_bytes: int = 1 << 20, max_bytes: int = 10 << 20
) -> tuple[Attachment, ...]:
    """Attachments as they are uploaded: named safely and uniquely, never empty, never over-size.

    - empty → ``<name>.empty.txt`` holding a note (Jira rejects and the library refuses empty files);
    - text over ``limit_bytes`` → gzipped as ``<name>.gz`` (logs compress ~10×); if still over
      ``max_bytes``, only the tail is kept (a log's end holds the failure) with a note at the top;
    - binary over ``max_bytes`` → cut to ``max_bytes`` plus ``<name>.truncated.txt`` saying so.
    """
    out: list[Attachment] = []
    for att in attachments:
        name = _safe_name(att.name)
        if not att.data:
            note = f"{name} was empty when it was filed; nothing to attach.\n"
            out.append(Attachment(f"{name}.empty.txt", note.encode("utf-8"), "text/plain"))
        elif _is_text(att) and len(att.data) > limit_bytes:
            packed = gzip.compress(att.data, mtime=0)
            if len(packed) > max_bytes:
                note = f"[truncated: the first {{}} of {len(att.data)} bytes of {name} were omitted]\n"
                keep = max_bytes * 4  # gzip ratio of plain logs; re-checked below
                while True:
                    tail = att.data[-keep:]
                    body = note.format(len(att.data) - len(tail)).encode("utf-8") + tail
                    packed = gzip.compress(body, mtime=0)
                    if len(packed) <= max_bytes or keep <= 1024:
                        break
                    keep //= 2
            out.append(Attachment(f"{name}.gz", packed, "application/gzip"))
        elif len(att.data) > max_bytes:
            out.append(Attachment(name, att.data[:max_bytes], att.content_type))
            note = f"{name} was {len(att.data)} bytes; only the first {max_bytes} bytes are attached.\n"
            out.append(Attachment(f"{name}.truncated.txt", note.encode("utf-8"), "text/plain"))
        else:
            out.append(Attachment(name, att.data, att.content_type))
    return _unique_names(out)


def _unique_names(attachments: list[Attachment]) -> tuple[Attachment, ...]:
    # Attachments are deduplicated by file name on the issue, so two different files may not share one.
    seen: set[str] = set()
    out: list[Attachment] = []
    for att in attachments:
        name, n = att.name, 1
        while name in seen:
            n += 1
            stem, dot, suffix = att.name.partition(".")
            name = f"{stem}-{n}{dot}{suffix}"
        seen.add(name)
        out.append(Attachment(name, att.data, att.content_type))
    return tuple(out)


# ---------------------------------------------------------------------------------- tracker


@dataclass(frozen=True, slots=True)
class JiraConfig:
    """How to reach Jira and where the local ledger lives; ``token`` is never shown."""

    url: str
    ledger_path: Path
    user: str | None = None
    token: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    default_assignee: str | None = None
    default_watchers: tuple[str, ...] = ()
    default_components: tuple[str, ...] = ()
    attachment_limit_bytes: int = 1 << 20
    attachment_max_bytes: int = 10 << 20


@dataclass(frozen=True, slots=True)
class _Prepared:
    summary: str
    description: str
    labels: tuple[str, ...]
    attachments: tuple[Attachment, ...]


class JiraIssueTracker:
    """IssueTracker for Jira Server/DC (REST v2, wiki markup). Not shared between threads."""

    def __init__(
        self, config: JiraConfig, options: TrackerOptions, *, sleep: Callable[[float], None]
    ) -> None:
        self._config = config
        self._options = options
        self._sleep = sleep
        self._ledger = IdempotencyLedger(config.ledger_path)
        self._browse = (options.browse_url or config.url).rstrip("/")
        self._supported: bool = False
        self._version: tuple[int, ...] = (0, 0, 0)
        self._unavailable = False  # the last call used up its retries: see _retry
        auth: dict[str, Any] = {}
        if config.user and config.token:
            auth["basic_auth"] = (config.user, config.token)
        elif config.token:
            auth["token_auth"] = config.token  # a Server/DC personal access token (Bearer)
        self._jira = JIRA(
            server=config.url,
            # max_retries=0: tenacity owns retries; the library would re-POST create_issue and sleep.
            max_retries=0,
            timeout=(config.connect_timeout_s, config.read_timeout_s),
            # get_server_info=False: no request at construction; serverInfo is read (and retried) lazily.
            get_server_info=False,
            **auth,
        )

    def close(self) -> None:
        self._jira.close()  # type: ignore[no-untyped-call]  # jira's close() carries no annotations

    # ------------------------------------------------------------------ IssueTracker

    def file(self, draft: IssueDraft) -> IssueRef:
        """Create the issue once per idempotency key, then attach, transition and add watchers."""
        self._ensure_supported()
        prepared = self._prepare(draft)
        key, created = self._find_or_create(draft, prepared)
        self._attach_all(key, prepared.attachments)
        target = draft.status
        status = self._retry(functools.partial(self._transition_once, key, target)) if target else ""
        for watcher in draft.watchers or self._config.default_watchers:
            self._add_watcher(key, watcher)
        if not status:
            status = self._retry(lambda: self._status_of(key)) or ""
        return IssueRef(key=key, url=self._url(key), created=created, status=status)

    def comment(self, key: str, body: Document, idempotency_key: str) -> None:
        """Add the comment unless one with its ``kis-idem`` marker is already on the issue."""
        self._ensure_supported()
        token = f"kis-idem:{idem_hash(idempotency_key)}"
        text = render_wiki(body).rstrip("\n")
        marker = f"\n\n\\[{token}\\]"  # escaped: a bare [..] is a wiki link
        overflow = f"comment-{idem_hash(idempotency_key)}.txt"
        fitted, cut = fit_text(
            text, DESCRIPTION_MAX_CHARS - len(marker), f"\n\n(truncated; full text in {overflow})"
        )
        if cut:
            self._attach_all(
                key, prepare_attachments([Attachment(overflow, text.encode("utf-8"), "text/plain")])
            )

        def once() -> None:
            with self._ledger.exclusive(), _translated(f"comment on {key}"):
                existing = self._jira.comments(key)
                if any(token in str(c.raw.get("body", "")) for c in existing):
                    return
                self._jira.add_comment(key, fitted + marker)

        self._retry(once)

    def attach(self, key: str, attachments: Sequence[Attachment]) -> None:
        self._ensure_supported()
        self._attach_all(
            key,
            prepare_attachments(
                attachments,
                limit_bytes=self._config.attachment_limit_bytes,
                max_bytes=self._config.attachment_max_bytes,
            ),
        )

    def transition(self, key: str, status: str) -> None:
        self._ensure_supported()
        self._retry(lambda: self._transition_once(key, status))

    def find(self, idempotency_key: str) -> IssueRef | None:
        self._ensure_supported()
        return self._retry(lambda: self._find_once(idempotency_key))

    def search_labels(self, label: str, since_iso: str | None = None) -> list[IssueRef]:
        """Issues in the project carrying ``label``, created at or after ``since_iso`` (aware ISO time).

        JQL dates are read in the Jira user's time zone, so the query asks from a day earlier and
        the exact bound is applied to each issue's ``created`` (which carries its offset).
        """
        self._ensure_supported()
        since = _parse_aware(since_iso) if since_iso else None
        jql = f'project = {self._project_jql()} AND labels = "{_jql_string(label)}"'
        if since is not None:
            jql += f' AND created >= "{(since - timedelta(days=1)).astimezone(UTC):%Y-%m-%d %H:%M}"'
        jql += " ORDER BY created DESC"
        found = self._retry(lambda: self._search_all(jql))
        refs = []
        for issue in found:
            created = _parse_jira_time(str(issue.get("fields", {}).get("created", "")))
            if since is not None and (created is None or created < since):
                continue
            refs.append(
                IssueRef(
                    key=str(issue["key"]),
                    url=self._url(str(issue["key"])),
                    created=False,
                    status=_status(issue),
                )
            )
        return refs

    # ------------------------------------------------------------------ pre-flight

    def preflight(self) -> list[PreflightCheck]:
        """Everything a DEPLOY or ROLLBACK issue needs, checked before anything is deployed.

        Server (reachable, Server/DC), credentials (``myself``), the project, the configured issue
        types in the project's create metadata (Jira ≥ 8.4: ``createmeta/{project}/issuetypes``), the
        configured priorities among each type's allowed values, and the rights to create issues, add
        attachments and comments, and transition (``mypermissions``), with attachments enabled.
        Stops at the first check the later ones depend on (no server, no credentials, no project).
        """
        checks: list[PreflightCheck] = []

        def check(name: str, fn: Callable[[], str]) -> bool:
            try:
                detail = self._retry(fn)
            except TrackerError as exc:
                # Jira answers 401 to any request with wrong credentials, serverInfo included
                shown = "credentials" if exc.status == 401 else name
                checks.append(PreflightCheck(shown, False, str(exc)))
                return False
            checks.append(PreflightCheck(name, True, detail))
            return True

        def server() -> str:
            self._supported = False
            self._ensure_supported()
            return f"{self._config.url} (Jira {'.'.join(map(str, self._version))})"

        def credentials() -> str:
            with _translated("read myself"):
                me = self._jira.myself()
            return f"signed in as {me.get('name') or me.get('displayName') or '?'}"

        project = self._options.project

        def project_found() -> str:
            with _translated(f"read project {project}"):
                found = self._jira.project(project)
            return f"{found.key} ({found.name})"

        if not (check("server", server) and check("credentials", credentials)):
            return checks
        if not check("project", project_found):
            return checks

        types: dict[str, str] = {}

        def issue_types() -> str:
            with _translated(f"read the create metadata of {project}"):
                found = self._jira.project_issue_types(project, maxResults=100)
            types.update({str(t.name): str(t.id) for t in found})
            wanted = sorted(set(self._options.issue_types.values()))
            missing = [t for t in wanted if t not in types]
            if missing:
                raise TrackerError(
                    f"issue type(s) {', '.join(missing)} cannot be created in {project} "
                    f"(it offers {', '.join(sorted(types)) or 'none'}); set KIS_JIRA_ISSUE_TYPE_DEPLOYMENT "
                    "/ KIS_JIRA_ISSUE_TYPE_INCIDENT",
                    retryable=False,
                )
            return ", ".join(
                f"{logical} → {name}" for logical, name in sorted(self._options.issue_types.items())
            )

        def priorities() -> str:
            wanted = sorted(set(self._options.priorities.values()))
            for name in sorted(set(self._options.issue_types.values())):
                with _translated(f"read the {name} fields of {project}"):
                    fields = [
                        f.raw for f in self._jira.project_issue_fields(project, types[name], maxResults=200)
                    ]
                priority = next((f for f in fields if f.get("fieldId") == "priority"), None)
                if priority is None:
                    raise TrackerError(
                        f"the Priority field is not on the create screen of {name} in {project}",
                        retryable=False,
                    )
                allowed = [str(v.get("name")) for v in priority.get("allowedValues", [])]
                missing = [p for p in wanted if p not in allowed]
                if missing:
                    raise TrackerError(
                        f"priority {', '.join(missing)} is not in {project}'s scheme for {name} "
                        f"({', '.join(allowed)}); set KIS_JIRA_PRIORITY_HIGH / _CRITICAL / _BLOCKER",
                        retryable=False,
                    )
            return ", ".join(f"{logical} → {name}" for logical, name in self._options.priorities.items())

        def permissions() -> str:
            wanted = ("CREATE_ISSUES", "CREATE_ATTACHMENTS", "ADD_COMMENTS", "TRANSITION_ISSUES")
            with _translated("read my permissions"):
                found = self._jira.my_permissions(projectKey=project, permissions=",".join(wanted))
                meta = self._jira.attachment_meta()
            have = found.get("permissions", {})
            missing = [p for p in wanted if not have.get(p, {}).get("havePermission")]
            if missing:
                raise TrackerError(f"the account lacks {', '.join(missing)} in {project}", retryable=False)
            if not meta.get("enabled"):
                raise TrackerError("attachments are disabled on this Jira", retryable=False)
            return f"{', '.join(wanted)}; attachments up to {int(meta.get('uploadLimit', 0)) >> 20} MiB"

        if check("issue types", issue_types):
            check("priorities", priorities)
        check("permissions", permissions)
        return checks

    # ------------------------------------------------------------------ steps

    def _retry(self, fn: Callable[[], T]) -> T:
        """``fn`` under :func:`tracker_retrying`; after a call that used up every attempt on a
        retryable failure (Jira down, unreachable, or refusing with 429/5xx), each later call makes
        one attempt, without waits, until one gets through. An outage then costs a caller one
        refused connection per call instead of five attempts and 7.5 s of backoff, so `kis-release
        watch`, whose every round may search, file and flush, keeps its pace while the outbox holds
        the tickets; the first call that gets an answer restores the full policy."""
        was_unavailable = self._unavailable
        try:
            result = fn() if was_unavailable else tracker_retrying(self._sleep)(fn)
        except TrackerError as exc:
            # a retryable failure (still) means unavailable; any other answer means Jira answered
            if exc.retryable and not was_unavailable:
                LOG.warning(
                    "Jira is unavailable (%s): later calls make one attempt until one gets through", exc
                )
            self._unavailable = exc.retryable
            raise
        self._unavailable = False
        return result

    def _ensure_supported(self) -> None:
        if self._supported:
            return

        def once() -> dict[str, Any]:
            with _translated("read Jira serverInfo"):
                return self._jira.server_info()

        info = self._retry(once)
        numbers = info.get("versionNumbers")
        self._version = tuple(int(n) for n in numbers) if isinstance(numbers, list) else (0, 0, 0)
        # The client was built without a serverInfo request; tell it what it would have read, so its
        # version-dependent calls (createmeta per project, Jira ≥ 8.4) know where they are.
        self._jira._version = self._version
        self._jira.deploymentType = info.get("deploymentType")
        if str(info.get("deploymentType", "")).lower() == "cloud":
            raise TrackerError(
                f"{self._config.url} is Jira Cloud (serverInfo deploymentType=Cloud). Cloud needs ADF "
                "bodies and /rest/api/3/search/jql, which this tracker does not support: use Jira "
                "Server/Data Center (REST v2), or unset KIS_JIRA_URL to use the file tracker.",
                retryable=False,
            )
        self._supported = True

    def _prepare(self, draft: IssueDraft) -> _Prepared:
        rendered = render_wiki(draft.body).rstrip("\n")
        extra: list[Attachment] = []
        description, cut = fit_text(
            rendered,
            DESCRIPTION_MAX_CHARS,
            "\n\n(truncated; the full description is attached as description-full.txt)",
        )
        if cut:
            extra.append(Attachment("description-full.txt", rendered.encode("utf-8"), "text/plain"))
        labels = tuple(
            dict.fromkeys(
                [*(_label(x) for x in draft.labels if x.strip()), idem_label(draft.idempotency_key)]
            )
        )
        attachments = prepare_attachments(
            [*draft.attachments, *extra],
            limit_bytes=self._config.attachment_limit_bytes,
            max_bytes=self._config.attachment_max_bytes,
        )
        return _Prepared(_one_line_summary(draft.summary), description, labels, attachments)

    def _fields(self, draft: IssueDraft, prepared: _Prepared) -> dict[str, Any]:
        fields: dict[str, Any] = {
            # Dicts, not names: the library would otherwise look the project and type up first.
            "project": {"key": self._options.project},
            "issuetype": {"name": self._options.issue_type(draft.issue_type)},
            "summary": prepared.summary,
            "description": prepared.description,
            "priority": {"name": self._options.priority(draft.priority)},
            "labels": list(prepared.labels),
        }
        assignee = draft.assignee or self._config.default_assignee
        if assignee:
            fields["assignee"] = {"name": assignee}
        components = draft.components or self._config.default_components
        if components:
            fields["components"] = [{"name": c} for c in components]
        return fields

    def _find_or_create(self, draft: IssueDraft, prepared: _Prepared) -> tuple[str, bool]:
        """(issue key, created by this call). Ledger, then label search, then create, under the lock."""
        label = idem_label(draft.idempotency_key)
        sent_create = False

        def once() -> tuple[str, bool]:
            nonlocal sent_create
            with self._ledger.locked() as ledger:
                known = ledger.get(draft.idempotency_key)
                if known is not None:
                    if self._status_of(known) is not None:
                        return known, sent_create
                    LOG.warning("ledger entry %s for %s is gone from Jira; searching by label", known, label)
                    ledger.remove(draft.idempotency_key)
                existing = self._search_label(label)
                if existing is not None:
                    # Found after our own POST whose reply was lost: still "created by this call".
                    ledger.put(draft.idempotency_key, existing)
                    return existing, sent_create
                sent_create = True
                with _translated(f"create issue {label}"):
                    issue = self._jira.create_issue(fields=self._fields(draft, prepared), prefetch=False)
                key = str(issue.key)
                ledger.put(draft.idempotency_key, key)
                LOG.info("filed %s (%s)", key, label)
                return key, True

        return self._retry(once)

    def _search_label(self, label: str) -> str | None:
        jql = f'project = {self._project_jql()} AND labels = "{_jql_string(label)}"'
        with _translated(f"search {label}"):
            result = self._jira.search_issues(jql, maxResults=10, fields="status,created", json_result=True)
        issues = [i for i in result.get("issues", []) if isinstance(i, dict) and "key" in i]
        if not issues:
            return None
        if len(issues) > 1:
            LOG.warning("%d issues carry %s; using the oldest", len(issues), label)
        oldest = min(
            issues, key=lambda i: int(str(i.get("id", "0"))) if str(i.get("id", "0")).isdigit() else 0
        )
        return str(oldest["key"])

    def _search_all(self, jql: str) -> list[dict[str, Any]]:
        issues: list[dict[str, Any]] = []
        start = 0
        while True:
            with _translated("search issues"):
                page = self._jira.search_issues(
                    jql, startAt=start, maxResults=100, fields="status,created,labels", json_result=True
                )
            batch = [i for i in page.get("issues", []) if isinstance(i, dict)]
            issues += batch
            start += len(batch)
            if not batch or start >= int(page.get("total", 0)):
                return issues

    def _status_of(self, key: str) -> str | None:
        """The issue's status name, or None when the issue does not exist (404)."""
        try:
            with _translated(f"read {key}"):
                issue = self._jira.issue(key, fields="status")
        except TrackerError as exc:
            if exc.status == 404:
                return None
            raise
        return _status(issue.raw)

    def _find_once(self, idempotency_key: str) -> IssueRef | None:
        known = self._ledger.lookup(idempotency_key)
        if known is not None:
            status = self._status_of(known)
            if status is not None:
                return IssueRef(key=known, url=self._url(known), created=False, status=status)
        found = self._search_label(idem_label(idempotency_key))
        if found is None:
            return None
        with self._ledger.locked() as ledger:
            ledger.put(idempotency_key, found)
        return IssueRef(key=found, url=self._url(found), created=False, status=self._status_of(found) or "")

    def _attach_all(self, key: str, attachments: Sequence[Attachment]) -> None:
        for att in attachments:
            try:
                self._retry(functools.partial(self._attach_once, key, att))
            except TrackerError as exc:
                if exc.status != 413:
                    raise
                # The server's size limit is below ours: leave a note rather than fail the whole run.
                note = f"Jira refused {att.name} ({len(att.data)} bytes) as too large (HTTP 413).\n"
                LOG.warning("attachment %s on %s refused as too large", att.name, key)
                replacement = Attachment(f"{att.name}.rejected.txt", note.encode("utf-8"), "text/plain")
                self._retry(functools.partial(self._attach_once, key, replacement))
                self._retry(functools.partial(self._mark_not_attached, key, att.name))

    def _mark_not_attached(self, key: str, name: str) -> None:
        """The description must not claim ``[attached]`` for a file Jira refused."""
        attached = escape_wiki(f"{name} [attached]")
        refused = escape_wiki(
            f"{name} [NOT attached: too large for Jira (HTTP 413), see {name}.rejected.txt]"
        )
        with self._ledger.exclusive(), _translated(f"update the description of {key}"):
            issue = self._jira.issue(key, fields="description")
            description = str(issue.raw.get("fields", {}).get("description") or "")
            if attached in description:
                issue.update(fields={"description": description.replace(attached, refused)})

    def _attach_once(self, key: str, att: Attachment) -> None:
        with self._ledger.exclusive(), _translated(f"attach {att.name} to {key}"):
            issue = self._jira.issue(key, fields="attachment")
            present = {str(a.get("filename")) for a in issue.raw.get("fields", {}).get("attachment") or []}
            if att.name in present:
                return
            # The library posts the stream as multipart "file" with X-Atlassian-Token: no-check.
            self._jira.add_attachment(key, io.BytesIO(att.data), filename=att.name)

    def _transition_once(self, key: str, status: str) -> str:
        with self._ledger.exclusive(), _translated(f"transition {key} to {status}"):
            current = self._status_of(key)
            if current is not None and current.casefold() == status.casefold():
                return current
            transitions = self._jira.transitions(key)
            wanted = status.casefold()
            for t in transitions:
                if (
                    str(t.get("to", {}).get("name", "")).casefold() == wanted
                    or str(t.get("name", "")).casefold() == wanted
                ):
                    self._jira.transition_issue(key, str(t["id"]))
                    return str(t.get("to", {}).get("name") or status)
        names = (
            ", ".join(sorted(str(t.get("to", {}).get("name", t.get("name"))) for t in transitions)) or "none"
        )
        raise TrackerError(
            f"transition {key} to {status}: no such transition from {current!r} (reachable: {names})",
            retryable=False,
        )

    def _add_watcher(self, key: str, watcher: str) -> None:
        def once() -> None:
            with _translated(f"add watcher {watcher} to {key}"):
                self._jira.add_watcher(key, watcher)

        try:
            self._retry(once)
        except TrackerError as exc:
            # A watcher is a courtesy: an unknown user must not fail a filed release ticket.
            if exc.retryable or exc.status in (401, 403):
                raise
            LOG.warning("could not add watcher %s to %s: %s", watcher, key, exc)

    def _project_jql(self) -> str:
        project = self._options.project
        return project if re.fullmatch(r"[A-Z][A-Z0-9_]*", project) else f'"{_jql_string(project)}"'

    def _url(self, key: str) -> str:
        return f"{self._browse}/browse/{key}"


def _status(raw: dict[str, Any]) -> str:
    return str((raw.get("fields", {}).get("status") or {}).get("name", ""))


def _label(text: str) -> str:
    # Jira labels are single words of at most 255 characters.
    return re.sub(r"\s+", "-", text.strip())[:255]


def _jql_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _parse_aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise TrackerError(f"since_iso={text!r}: expected a time with a UTC offset", retryable=False)
    return value


def _parse_jira_time(text: str) -> datetime | None:
    """Jira's ``2025-09-23T12:00:00.000+0900``."""
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return datetime.strptime(text, fmt)  # noqa: DTZ007  # %z in both formats: always aware
        except ValueError:
            continue
    return None
