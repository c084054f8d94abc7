"""The issue-tracker seam: what workflows file, and the one Protocol every tracker implements.

Issue bodies are structured :class:`Document` objects; each tracker renders them in its own markup
(Jira wiki markup for Jira Server/DC REST v2, Markdown for the file tracker), so templates are
written once (``workflows/templates.py``) and tested on the rendered text.

Every create is idempotent: an :class:`IssueDraft` carries a deterministic ``idempotency_key``
(a hash of the release version or incident id) that the tracker stores as a label and looks up
before creating, so retries, re-runs and concurrent runs never file duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kis_estimator.workflows.errors import WorkflowError


class TrackerError(WorkflowError):
    """A tracker call failed; ``retryable`` says whether the same call may succeed later."""

    def __init__(
        self, message: str, *, retryable: bool, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s  # the server's Retry-After (integer seconds), if it sent one


class DeadLettered(TrackerError):
    """The tracker refused a ticket for good (a 4xx such as an unknown priority): it is kept in the
    outbox's dead-letter state with the tracker's answer, on-call is paged, and ``kis-release outbox
    flush`` files it once the configuration is fixed. Never retryable as it stands."""

    def __init__(self, message: str, *, status: int | None = None, record: str = "") -> None:
        super().__init__(message, retryable=False, status=status)
        self.record = record


# ---------------------------------------------------------------------------------- documents


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Field:
    """``- Label: value`` (a key/value line of the seed templates)."""

    label: str
    value: str


@dataclass(frozen=True, slots=True)
class Check:
    """``- [x] text`` / ``- [ ] text``."""

    done: bool
    text: str


@dataclass(frozen=True, slots=True)
class Code:
    text: str
    language: str = ""


Block = Text | Field | Check | Code


@dataclass(frozen=True, slots=True)
class Section:
    heading: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True, slots=True)
class Document:
    sections: tuple[Section, ...]


# ---------------------------------------------------------------------------------- issues


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    data: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class IssueDraft:
    """An issue to file. ``issue_type`` and ``status`` are logical names mapped by the tracker."""

    idempotency_key: str
    summary: str
    body: Document
    issue_type: str  # "Deployment" | "Incident" (mapped to the instance's names by configuration)
    priority: str  # "High" | "Critical" | "Blocker": the seed's names, mapped by TrackerOptions.priorities
    labels: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    status: str | None = None  # target status after creation, e.g. "Done", "In Progress"
    assignee: str | None = None
    watchers: tuple[str, ...] = ()
    components: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PreflightCheck:
    """One line of ``kis-release jira check``: what was checked, whether it holds, and why not."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class IssueRef:
    key: str
    url: str
    created: bool = True  # False: an issue with this idempotency key already existed
    pending: bool = False  # True: kept in the outbox, not yet filed
    status: str = ""


class IssueTracker(Protocol):
    def file(self, draft: IssueDraft) -> IssueRef:
        """Create the issue unless one with ``draft.idempotency_key`` exists; attach, transition."""
        ...

    def comment(self, key: str, body: Document, idempotency_key: str) -> None:
        """Add a comment once per ``idempotency_key``."""
        ...

    def attach(self, key: str, attachments: Sequence[Attachment]) -> None: ...

    def transition(self, key: str, status: str) -> None: ...

    def find(self, idempotency_key: str) -> IssueRef | None:
        """The issue filed for ``idempotency_key`` (with its current status), or None."""
        ...

    def search_labels(self, label: str, since_iso: str | None = None) -> list[IssueRef]:
        """Issues carrying ``label`` (created at or after ``since_iso``), for bug-report counting."""
        ...


DEFAULT_PRIORITIES: tuple[tuple[str, str], ...] = (
    ("High", "High"),
    ("Critical", "Highest"),
    ("Blocker", "Highest"),
)


@dataclass(frozen=True, slots=True)
class TrackerOptions:
    """Field mapping for a tracker (from configuration)."""

    project: str = "KIS"
    # Logical issue types onto the instance's: a stock Jira Software project has Task and Bug.
    issue_types: dict[str, str] = field(default_factory=lambda: {"Deployment": "Task", "Incident": "Bug"})
    # The seed's priorities onto the instance's scheme. Jira ≥ 7's default scheme is Highest, High,
    # Medium, Low, Lowest: Critical and Blocker (the pre-7 names the seed uses) become Highest.
    priorities: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    browse_url: str = ""

    def priority(self, logical: str) -> str:
        return self.priorities.get(logical, logical)

    def issue_type(self, logical: str) -> str:
        return self.issue_types.get(logical, logical)
