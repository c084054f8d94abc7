-- 0002: evidence bundles, the hash-chained audit log, MIXED grants, report indexes
-- (docs/pricing-rules.md §12, §15, §16.3; docs/conventions.md §3). Timestamps as in 0001 (RFC 3339 UTC, 6 digits).

-- One ZIP per estimate revision (docs/pricing-rules.md §15). The bundle is the last column on purpose: SQLite
-- reads a row's columns in order, so GetEvidenceInfo's columns come without walking the blob's
-- overflow pages.
CREATE TABLE evidence (
    estimate_id      TEXT    NOT NULL REFERENCES estimates (estimate_id),
    revision         INTEGER NOT NULL CHECK (revision >= 1),
    sha256           TEXT    NOT NULL CHECK (length(sha256) = 64),
    size_bytes       INTEGER NOT NULL CHECK (size_bytes >= 0),
    signature_key_id TEXT    NULL,
    signature        TEXT    NULL,
    created_at       TEXT    NOT NULL,
    manifest_json    BLOB    NOT NULL,
    bundle           BLOB    NOT NULL,
    PRIMARY KEY (estimate_id, revision),
    CHECK (size_bytes = length(bundle)),
    CHECK ((signature_key_id IS NULL) = (signature IS NULL))
) STRICT;

-- The audit log. seq is assigned by the repository as last + 1 inside a BEGIN IMMEDIATE unit
-- (INTEGER PRIMARY KEY without AUTOINCREMENT: never a gap). No foreign key on estimate_id:
-- events also name estimates that do not exist (a refused download of an unknown id).
CREATE TABLE audit_events (
    seq         INTEGER NOT NULL PRIMARY KEY CHECK (seq >= 1),
    at          TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    estimate_id TEXT    NULL,
    revision    INTEGER NULL,
    details     TEXT    NOT NULL CHECK (json_valid(details)),
    peer        TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL CHECK (length(prev_hash) = 64),
    hash        TEXT    NOT NULL CHECK (length(hash) = 64)
) STRICT;

CREATE INDEX audit_events_action ON audit_events (action, seq);
CREATE INDEX audit_events_estimate ON audit_events (estimate_id, seq);
CREATE INDEX audit_events_at ON audit_events (at);

-- The last pruned event (seq 0 and the genesis hash until the first prune); verification of the
-- remaining events starts from it. pruned_before is the cutoff of the prune that set it.
CREATE TABLE audit_anchor (
    id            INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq           INTEGER NOT NULL CHECK (seq >= 0),
    hash          TEXT    NOT NULL CHECK (length(hash) = 64),
    pruned_before TEXT    NULL
) STRICT;

INSERT INTO audit_anchor (id, seq, hash, pruned_before)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', NULL);

-- Append-only, enforced in the database too. These triggers stop mistakes and casual edits; a
-- determined DBA can still drop them. The hash chain (server.engine.audit.verify_chain) is what
-- detects that kind of tampering.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

-- Deletes only through the prune path: the anchor moves first, then the prefix up to it goes.
CREATE TRIGGER audit_events_delete_only_pruned BEFORE DELETE ON audit_events
WHEN OLD.seq > (SELECT seq FROM audit_anchor WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'audit_events: only events up to the prune anchor may be deleted');
END;

-- Each insert extends the chain by exactly one: next seq, linked to the current head.
CREATE TRIGGER audit_events_append_at_head BEFORE INSERT ON audit_events
WHEN NEW.seq IS NOT coalesce(
        (SELECT max(seq) FROM audit_events), (SELECT seq FROM audit_anchor WHERE id = 1)) + 1
    OR NEW.prev_hash IS NOT coalesce(
        (SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1),
        (SELECT hash FROM audit_anchor WHERE id = 1))
BEGIN
    SELECT RAISE(ABORT, 'audit_events: an insert must extend the chain at its head');
END;

-- The anchor only moves forward, onto an event that exists with that hash, and is never removed.
CREATE TRIGGER audit_anchor_forward_only BEFORE UPDATE ON audit_anchor
WHEN NEW.id IS NOT OLD.id
    OR NEW.seq < OLD.seq
    OR (NEW.seq > OLD.seq
        AND NEW.hash IS NOT (SELECT hash FROM audit_events WHERE seq = NEW.seq))
    OR (NEW.seq = OLD.seq AND NEW.hash IS NOT OLD.hash)
BEGIN
    SELECT RAISE(ABORT, 'audit_anchor only moves forward onto a stored event');
END;

CREATE TRIGGER audit_anchor_no_delete BEFORE DELETE ON audit_anchor
BEGIN
    SELECT RAISE(ABORT, 'audit_anchor cannot be deleted');
END;

-- GrantMixedException (docs/pricing-rules.md §12): at most one grant per KST month 'YYYY-MM'.
CREATE TABLE mixed_grants (
    grant_id   TEXT NOT NULL PRIMARY KEY,
    month      TEXT NOT NULL UNIQUE CHECK (month GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]'),
    reason     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    granted_at TEXT NOT NULL
) STRICT;

-- TAT over a completed_at window (docs/pricing-rules.md §16.3); covering, so the report reads no documents.
CREATE INDEX estimates_completed ON estimates (completed_at, accepted_at, status)
    WHERE completed_at IS NOT NULL;
-- Auto-processing rate: counts by status over an accepted_at window, from the index alone.
CREATE INDEX estimates_accepted_status ON estimates (accepted_at, status);
