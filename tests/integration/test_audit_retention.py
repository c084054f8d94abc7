"""Audit retention: pruning old records keeps the rest of the chain verifiable (issue #3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from kis_estimator.server.clock import ManualClock
from kis_estimator.server.engine.roles import Role
from kis_estimator.server.service.admin import AdminService
from kis_estimator.server.service.caller import Caller
from kis_estimator.server.service.tokens import TokenService
from kis_estimator.server.storage.sqlite import SqliteStore


def test_prune_removes_only_expired_records_and_the_chain_still_verifies(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    store = SqliteStore(tmp_path / "kis.db")
    try:
        tokens = TokenService(store, clock)
        admin = AdminService(store, clock, mixed_monthly_quota=2, retention_days=30)
        for i in range(5):
            tokens.create(Role.VIEWER, f"old-{i}")
        clock.advance(timedelta(days=40))
        for i in range(3):
            tokens.create(Role.VIEWER, f"new-{i}")
        assert admin.verify_audit() == (8, None)
        removed = admin.prune_audit(Caller(None, "local"))
        assert removed == 5
        checked, broken = admin.verify_audit()
        assert broken is None and checked == 4  # 3 new records + the prune record
        page = admin.audit_events(100, "", action=None, estimate_id=None, since=None, until=None)
        assert page.events[0].action == "AUDIT_PRUNED"
        assert all(e.at >= clock.now() - timedelta(days=30) for e in page.events)
    finally:
        store.close()
