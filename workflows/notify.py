"""Send the deployment notice ("배포 완료 공지") to Slack and/or e-mail; never undo a deploy.

:meth:`Notifier.send` returns a :class:`NotifyReport` with one result per channel (sent, failed
with a reason, or skipped because the channel is not configured) and never raises: a notice that
could not be delivered is reported by the caller, the deploy it announces stands.

Retries (docs/conventions.md §5, stated in full, ``sleep`` injected):

- Slack incoming webhook: up to 3 attempts on connection errors, timeouts, 429 and 5xx. A webhook
  POST carries no idempotency key, so a retry after a 5xx that Slack had in fact processed can post
  the notice twice; a duplicate notice is accepted as cheaper than a lost one. 4xx is final.
- SMTP: up to 3 attempts when the connection cannot be opened or set up, or the server answers with
  a transient 4xx reply (the message was not accepted, so a retry cannot duplicate it). 5xx replies,
  and a connection lost once the mail transaction began, are final.

Failure reasons never contain the webhook URL or the SMTP password (both are secrets).
"""

from __future__ import annotations

import http.client
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from enum import StrEnum

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from kis_estimator.workflows.clock import Clock
from kis_estimator.workflows.settings import WorkflowSettings

__all__ = ["ChannelResult", "ChannelStatus", "Notifier", "NotifyOptions", "NotifyReport"]

log = logging.getLogger(__name__)


class ChannelStatus(StrEnum):
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"  # not configured


@dataclass(frozen=True, slots=True)
class ChannelResult:
    channel: str  # "slack" | "email"
    status: ChannelStatus
    detail: str = ""  # failure reason, recipients, or why skipped

    def line(self) -> str:
        return f"{self.channel}: {self.status}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True, slots=True)
class NotifyReport:
    results: tuple[ChannelResult, ...]

    @property
    def failed(self) -> tuple[ChannelResult, ...]:
        return tuple(r for r in self.results if r.status is ChannelStatus.FAILED)

    def status(self, channel: str) -> ChannelStatus:
        return next(r.status for r in self.results if r.channel == channel)

    def lines(self) -> list[str]:
        return [r.line() for r in self.results]


@dataclass(frozen=True, slots=True)
class NotifyOptions:
    """Where the notice goes; a channel without its address is skipped."""

    slack_webhook_url: str | None = field(default=None, repr=False)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = False
    smtp_from: str = "kis-devops@localhost"
    smtp_to: tuple[str, ...] = ()
    timeout_s: float = 10.0
    attempts: int = 3

    @classmethod
    def from_settings(cls, settings: WorkflowSettings) -> NotifyOptions:
        return cls(
            slack_webhook_url=settings.slack_webhook_url,
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            smtp_user=settings.smtp_user,
            smtp_password=settings.smtp_password,
            smtp_starttls=settings.smtp_starttls,
            smtp_from=settings.smtp_from,
            smtp_to=settings.smtp_to,
        )


class _Retryable(Exception):
    """A transient delivery failure; the message says why without secrets."""


class _Final(Exception):
    """A delivery failure that a retry cannot fix."""


class Notifier:
    """Delivers one notice to every configured channel; ``sleep`` waits between retries."""

    def __init__(
        self,
        options: NotifyOptions,
        *,
        sleep: Callable[[float], None],
        clock: Clock,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._options = options
        self._sleep = sleep
        self._clock = clock  # the Date header
        self._tls_context = tls_context  # None: the system trust store, for STARTTLS

    def send(self, subject: str, body: str) -> NotifyReport:
        """Send ``subject``/``body`` to Slack and e-mail as configured; never raises."""
        report = NotifyReport((self._slack(subject, body), self._email(subject, body)))
        for result in report.results:
            if result.status is ChannelStatus.FAILED:
                log.warning("deployment notice not delivered: %s", result.line())
            else:
                log.info("deployment notice %s", result.line())
        return report

    def _retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self._options.attempts),
            wait=wait_exponential(multiplier=0.5, max=4.0),
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
            reraise=True,
            sleep=self._sleep,
        )

    # ------------------------------------------------------------------------------ slack

    def _slack(self, subject: str, body: str) -> ChannelResult:
        url = self._options.slack_webhook_url
        if not url:
            return ChannelResult("slack", ChannelStatus.SKIPPED, "KIS_SLACK_WEBHOOK_URL not set")
        payload = json.dumps({"text": f"*{subject}*\n\n{body}"}, ensure_ascii=False).encode()
        try:
            self._retrying()(self._post, url, payload)
        except (_Retryable, _Final) as exc:
            return ChannelResult("slack", ChannelStatus.FAILED, str(exc))
        return ChannelResult("slack", ChannelStatus.SENT)

    def _post(self, url: str, payload: bytes) -> None:
        try:
            request = urllib.request.Request(
                url, data=payload, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
            )
        except ValueError:
            raise _Final("invalid webhook URL") from None
        try:
            with urllib.request.urlopen(request, timeout=self._options.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            reason = f"HTTP {exc.code}"
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(reason) from None
            raise _Final(reason) from None
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            # Only the cause is reported, never the URL: it is a secret.
            cause: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise _Retryable(f"connection error: {type(cause).__name__}: {cause}") from None

    # ------------------------------------------------------------------------------ e-mail

    def _email(self, subject: str, body: str) -> ChannelResult:
        opts = self._options
        if not opts.smtp_host or not opts.smtp_to:
            missing = "KIS_SMTP_HOST" if not opts.smtp_host else "KIS_SMTP_TO"
            return ChannelResult("email", ChannelStatus.SKIPPED, f"{missing} not set")
        try:
            message = EmailMessage()
            message["Subject"] = subject
            message["From"] = opts.smtp_from
            message["To"] = ", ".join(opts.smtp_to)
            message["Date"] = formatdate(self._clock.now().timestamp())
            message["Message-ID"] = make_msgid(domain=opts.smtp_from.rpartition("@")[2] or "localhost")
            message.set_content(body, charset="utf-8")
        except ValueError as exc:  # e.g. a line break in the subject or an address
            return ChannelResult("email", ChannelStatus.FAILED, f"invalid message: {exc}")
        try:
            refused = self._retrying()(self._smtp_send, message)
        except (_Retryable, _Final) as exc:
            return ChannelResult("email", ChannelStatus.FAILED, str(exc))
        accepted = [to for to in opts.smtp_to if to not in refused]
        detail = ", ".join(accepted) + (f"; refused: {', '.join(sorted(refused))}" if refused else "")
        return ChannelResult("email", ChannelStatus.SENT, detail)

    def _smtp_send(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """Deliver once; the recipients the server refused while accepting the others."""
        opts = self._options
        assert opts.smtp_host is not None  # checked by _email
        sending = False
        try:
            with smtplib.SMTP(opts.smtp_host, opts.smtp_port, timeout=opts.timeout_s) as smtp:
                if opts.smtp_starttls:
                    smtp.starttls(context=self._tls_context or ssl.create_default_context())
                if opts.smtp_user:
                    smtp.login(opts.smtp_user, opts.smtp_password or "")
                sending = True
                return smtp.send_message(message, from_addr=opts.smtp_from, to_addrs=list(opts.smtp_to))
        except smtplib.SMTPResponseException as exc:
            reason = f"SMTP {exc.smtp_code}: {_smtp_text(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                raise _Retryable(reason) from None
            raise _Final(reason) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise _Final(f"recipients refused: {', '.join(sorted(exc.recipients))}") from None
        except (ssl.SSLError, smtplib.SMTPException) as exc:
            # No STARTTLS or AUTH offered, a certificate refused, the server hung up mid-dialogue:
            # a retry meets the same server, and after DATA it could deliver twice.
            raise _Final(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            reason = f"connection error: {type(exc).__name__}: {exc}"
            if sending:  # lost during the transaction: the server may have the message already
                raise _Final(reason + " (while sending; not retried)") from None
            raise _Retryable(reason) from None


def _smtp_text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
