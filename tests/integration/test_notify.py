"""The deployment notice over real sockets: a local Slack-style webhook and a local SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from kis_estimator.server.clock import ManualClock
from kis_estimator.workflows.notify import ChannelResult, ChannelStatus, Notifier, NotifyOptions

NOW = datetime(2025, 9, 23, 3, 0, tzinfo=UTC)
SUBJECT = "[GA-1.0.0] KIS 견적 API 프로덕션 배포 완료"
BODY = (
    "안녕하세요, KIS 팀 여러분\n\n"
    "KIS Estimator GA-1.0.0 버전이 프로덕션 환경에 성공적으로 배포되었습니다.\n\n"
    "【배포 정보】\n• 버전: GA-1.0.0\n• 배포 시간: 2025-09-23 12:00:00 KST\n• 내부 포트: 8787\n"
    "【SLO 목표】\n• 응답시간: p95 ≤ 30ms ✅ (실측 12.4ms)\n"
)
SECRET_PATH = "/services/T000/B000/s3cr3t-token"


# ---------------------------------------------------------------------------------- webhook


@dataclass
class Webhook:
    """A Slack incoming-webhook stand-in: answers the scripted statuses in order, then 200 "ok"."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    state = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((self.path, dict(self.headers.items()), body))
            status = state.statuses.pop(0) if state.statuses else 200
            reply = b"ok" if status == 200 else b"server_error"
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}{SECRET_PATH}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def notifier(
    options: NotifyOptions, sleeps: list[float], tls_context: ssl.SSLContext | None = None
) -> Notifier:
    return Notifier(options, sleep=sleeps.append, clock=ManualClock(NOW), tls_context=tls_context)


def test_slack_webhook_receives_the_notice_as_json(webhook: Webhook) -> None:
    sleeps: list[float] = []
    report = notifier(NotifyOptions(slack_webhook_url=webhook.url, timeout_s=5), sleeps).send(SUBJECT, BODY)

    assert report.results == (
        ChannelResult("slack", ChannelStatus.SENT),
        ChannelResult("email", ChannelStatus.SKIPPED, "KIS_SMTP_HOST not set"),
    )
    [(path, headers, body)] = webhook.requests
    assert path == SECRET_PATH
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body) == {"text": f"*{SUBJECT}*\n\n{BODY}"}
    assert sleeps == []


def test_webhook_500_is_retried_then_reported_failed_without_raising(webhook: Webhook) -> None:
    webhook.statuses = [500, 500, 500]
    sleeps: list[float] = []

    report = notifier(NotifyOptions(slack_webhook_url=webhook.url, timeout_s=5), sleeps).send(SUBJECT, BODY)

    assert report.results[0] == ChannelResult("slack", ChannelStatus.FAILED, "HTTP 500")
    assert report.failed == (report.results[0],)
    assert len(webhook.requests) == 3
    assert sleeps == [0.5, 1.0]
    assert "s3cr3t" not in " ".join(report.lines())


def test_webhook_503_then_200_is_sent_after_one_retry(webhook: Webhook) -> None:
    webhook.statuses = [503]
    sleeps: list[float] = []

    report = notifier(NotifyOptions(slack_webhook_url=webhook.url, timeout_s=5), sleeps).send(SUBJECT, BODY)

    assert report.status("slack") is ChannelStatus.SENT
    assert len(webhook.requests) == 2
    assert sleeps == [0.5]


def test_webhook_400_is_final(webhook: Webhook) -> None:
    webhook.statuses = [400]
    sleeps: list[float] = []

    report = notifier(NotifyOptions(slack_webhook_url=webhook.url, timeout_s=5), sleeps).send(SUBJECT, BODY)

    assert report.results[0] == ChannelResult("slack", ChannelStatus.FAILED, "HTTP 400")
    assert len(webhook.requests) == 1
    assert sleeps == []


def test_unreachable_webhook_is_reported_failed() -> None:
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}{SECRET_PATH}"
        sleeps: list[float] = []
        report = notifier(NotifyOptions(slack_webhook_url=url, timeout_s=5), sleeps).send(SUBJECT, BODY)

    result = report.results[0]
    assert (result.channel, result.status) == ("slack", ChannelStatus.FAILED)
    assert result.detail.startswith("connection error: ConnectionRefusedError")
    assert "s3cr3t" not in result.detail
    assert sleeps == [0.5, 1.0]


def test_a_malformed_message_or_url_is_reported_not_raised() -> None:
    options = NotifyOptions(
        slack_webhook_url="not-a-url", smtp_host="127.0.0.1", smtp_to=("team@example.com",)
    )

    report = notifier(options, []).send("line\nbreak", BODY)

    assert [(r.status, r.detail.split(":")[0]) for r in report.results] == [
        (ChannelStatus.FAILED, "invalid webhook URL"),
        (ChannelStatus.FAILED, "invalid message"),
    ]


def test_nothing_configured_skips_both_channels() -> None:
    report = notifier(NotifyOptions(), []).send(SUBJECT, BODY)
    assert report.lines() == [
        "slack: skipped (KIS_SLACK_WEBHOOK_URL not set)",
        "email: skipped (KIS_SMTP_HOST not set)",
    ]


# ---------------------------------------------------------------------------------- SMTP


# The plain-text AUTH tests are deliberate (the STARTTLS test covers the encrypted path).
AUTH_WITHOUT_TLS = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


class Mailbox:
    """aiosmtpd handler: keeps what arrived; answers DATA with the scripted replies first."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.data_replies: list[str] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), message))
        return "250 OK"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"kis", b"pw")
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


class EphemeralController(Controller):
    """Binds 127.0.0.1:0; aiosmtpd's readiness probe needs the port the OS chose."""

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[tuple[Mailbox, EphemeralController]]:
    mailbox = Mailbox()
    kwargs: dict[str, Any] = getattr(request, "param", {})
    if kwargs.get("auth"):
        kwargs = {"authenticator": mailbox.authenticate, "auth_require_tls": False, "auth_required": True}
    controller = EphemeralController(mailbox, hostname="127.0.0.1", port=0, ready_timeout=5.0, **kwargs)
    controller.start()
    yield mailbox, controller
    controller.stop()


def smtp_options(controller: EphemeralController, **changes: Any) -> NotifyOptions:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": controller.port,
        "smtp_from": "kis-devops@example.com",
        "smtp_to": ("team@example.com", "ops@example.com"),
        "timeout_s": 5.0,
    }
    return NotifyOptions(**(values | changes))


def assert_notice(message: EmailMessage) -> None:
    assert message["Subject"] == SUBJECT
    assert message["From"] == "kis-devops@example.com"
    assert message["To"] == "team@example.com, ops@example.com"
    assert message["Date"] == formatdate(NOW.timestamp())
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message.get_content() == BODY


def test_smtp_server_receives_the_korean_notice(smtp_server: tuple[Mailbox, EphemeralController]) -> None:
    mailbox, controller = smtp_server
    sleeps: list[float] = []

    report = notifier(smtp_options(controller), sleeps).send(SUBJECT, BODY)

    assert report.results == (
        ChannelResult("slack", ChannelStatus.SKIPPED, "KIS_SLACK_WEBHOOK_URL not set"),
        ChannelResult("email", ChannelStatus.SENT, "team@example.com, ops@example.com"),
    )
    [(mail_from, rcpt_tos, message)] = mailbox.messages
    assert (mail_from, rcpt_tos) == ("kis-devops@example.com", ["team@example.com", "ops@example.com"])
    assert_notice(message)
    assert sleeps == []


@pytest.mark.parametrize("smtp_server", [{"auth": True}], indirect=True, ids=["auth-required"])
@AUTH_WITHOUT_TLS
def test_smtp_login_when_a_user_is_configured(smtp_server: tuple[Mailbox, EphemeralController]) -> None:
    mailbox, controller = smtp_server

    report = notifier(smtp_options(controller, smtp_user="kis", smtp_password="pw"), []).send(SUBJECT, BODY)

    assert report.status("email") is ChannelStatus.SENT
    assert mailbox.logins == ["kis"]
    assert_notice(mailbox.messages[0][2])


@pytest.mark.parametrize("smtp_server", [{"auth": True}], indirect=True, ids=["auth-required"])
@AUTH_WITHOUT_TLS
def test_smtp_wrong_password_is_final_and_never_shows_the_password(
    smtp_server: tuple[Mailbox, EphemeralController],
) -> None:
    mailbox, controller = smtp_server
    sleeps: list[float] = []

    report = notifier(smtp_options(controller, smtp_user="kis", smtp_password="hunter2"), sleeps).send(
        SUBJECT, BODY
    )

    result = report.results[1]
    assert (result.status, result.detail.split(":")[0]) == (ChannelStatus.FAILED, "SMTP 535")
    assert "hunter2" not in result.detail
    assert mailbox.messages == []
    assert sleeps == []


def test_smtp_transient_451_is_retried(smtp_server: tuple[Mailbox, EphemeralController]) -> None:
    mailbox, controller = smtp_server
    mailbox.data_replies = ["451 4.3.0 try again later"]
    sleeps: list[float] = []

    report = notifier(smtp_options(controller), sleeps).send(SUBJECT, BODY)

    assert report.status("email") is ChannelStatus.SENT
    assert len(mailbox.messages) == 1
    assert sleeps == [0.5]


def test_smtp_permanent_554_is_reported_failed_without_retry(
    smtp_server: tuple[Mailbox, EphemeralController],
) -> None:
    mailbox, controller = smtp_server
    mailbox.data_replies = ["554 5.6.0 rejected"]
    sleeps: list[float] = []

    report = notifier(smtp_options(controller), sleeps).send(SUBJECT, BODY)

    assert report.results[1] == ChannelResult("email", ChannelStatus.FAILED, "SMTP 554: 5.6.0 rejected")
    assert sleeps == []


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make a certificate for the STARTTLS test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def test_starttls_then_login(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    mailbox = Mailbox()
    controller = EphemeralController(
        mailbox,
        hostname="127.0.0.1",
        port=0,
        ready_timeout=5.0,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=mailbox.authenticate,
        auth_required=True,
    )
    controller.start()
    try:
        options = smtp_options(controller, smtp_starttls=True, smtp_user="kis", smtp_password="pw")
        trusted = ssl.create_default_context(cafile=str(cert))
        report = notifier(options, [], tls_context=trusted).send(SUBJECT, BODY)
        untrusted = notifier(options, [], tls_context=ssl.create_default_context()).send(SUBJECT, BODY)
    finally:
        controller.stop()

    assert report.status("email") is ChannelStatus.SENT
    assert mailbox.logins == ["kis"]
    assert len(mailbox.messages) == 1
    assert_notice(mailbox.messages[0][2])
    assert untrusted.status("email") is ChannelStatus.FAILED
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.results[1].detail


def test_slack_and_email_together_one_failing(
    webhook: Webhook, smtp_server: tuple[Mailbox, EphemeralController]
) -> None:
    mailbox, controller = smtp_server
    webhook.statuses = [502, 502, 502]

    report = notifier(smtp_options(controller, slack_webhook_url=webhook.url), []).send(SUBJECT, BODY)

    assert [(r.channel, r.status) for r in report.results] == [
        ("slack", ChannelStatus.FAILED),
        ("email", ChannelStatus.SENT),
    ]
    assert len(mailbox.messages) == 1
