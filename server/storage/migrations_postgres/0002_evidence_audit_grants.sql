-- 0002 (PostgreSQL): evidence bundles, the hash-chained audit log, MIXED grants, report indexes
-- (docs/pricing-rules.md §12, §15, §16.3; docs/conventions.md §3). The same schema and guards as
-- migrations/0002_evidence_audit_grants.sql; types as in 0001 (timestamptz, bigint, bytea, text).

-- One ZIP per estimate revision (docs/pricing-rules.md §15). GetEvidenceInfo reads the other columns only, so
-- the TOASTed bundle is never fetched for it.
CREATE TABLE evidence (
    estimate_id      text COLLATE "C" NOT NULL REFERENCES estimates (estimate_id),
    revision         integer     NOT NULL CHECK (revision >= 1),
    sha256           text        NOT NULL CHECK (length(sha256) = 64),
    size_bytes       bigint      NOT NULL CHECK (size_bytes >= 0),
    signature_key_id text        NULL,
    signature        text        NULL,
    created_at       timestamptz NOT NULL,
    manifest_json    bytea       NOT NULL,
    bundle           bytea       NOT NULL,
    PRIMARY KEY (estimate_id, revision),
    CHECK (size_bytes = octet_length(bundle)),
    CHECK ((signature_key_id IS NULL) = (signature IS NULL))
);

-- Stored out of line uncompressed here; 0004 compresses it (its entries are STORED, not deflated).
ALTER TABLE evidence ALTER COLUMN bundle SET STORAGE EXTERNAL;

-- The audit log. seq is assigned by the repository as last + 1 inside a write unit, which holds
-- the store's advisory lock (never a sequence: a rolled-back append must leave no gap). No
-- foreign key on estimate_id: events also name estimates that do not exist (a refused download of
-- an unknown id). details is JSON text, checked to parse; the hash covers its parsed value.
CREATE TABLE audit_events (
    seq         bigint      NOT NULL PRIMARY KEY CHECK (seq >= 1),
    at          timestamptz NOT NULL,
    action      text        NOT NULL,
    outcome     text        NOT NULL,
    actor       text        NOT NULL,
    role        text        NOT NULL,
    estimate_id text COLLATE "C" NULL,
    revision    integer     NULL,
    details     text        NOT NULL CHECK ((details::json) IS NOT NULL),
    peer        text        NOT NULL,
    prev_hash   text        NOT NULL CHECK (length(prev_hash) = 64),
    hash        text        NOT NULL CHECK (length(hash) = 64)
);

CREATE INDEX audit_events_action ON audit_events (action, seq);
CREATE INDEX audit_events_estimate ON audit_events (estimate_id, seq);
CREATE INDEX audit_events_at ON audit_events (at);

-- The last pruned event (seq 0 and the genesis hash until the first prune); verification of the
-- remaining events starts from it. pruned_before is the cutoff of the prune that set it.
CREATE TABLE audit_anchor (
    id            integer     NOT NULL PRIMARY KEY CHECK (id = 1),
    seq           bigint      NOT NULL CHECK (seq >= 0),
    hash          text        NOT NULL CHECK (length(hash) = 64),
    pruned_before timestamptz NULL
);

INSERT INTO audit_anchor (id, seq, hash, pruned_before)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', NULL);

-- Append-only, enforced in the database too. These triggers stop mistakes and casual edits; a
-- determined DBA can still drop them. The hash chain (server.engine.audit.verify_chain) is what
-- detects that kind of tampering. Trigger conditions need subqueries, which a trigger's WHEN
-- clause cannot hold in PostgreSQL, so each check lives in its function.
CREATE FUNCTION audit_events_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_no_update();

-- Deletes only through the prune path: the anchor moves first, then the prefix up to it goes.
CREATE FUNCTION audit_events_delete_only_pruned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq > (SELECT seq FROM audit_anchor WHERE id = 1) THEN
        RAISE EXCEPTION 'audit_events: only events up to the prune anchor may be deleted';
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER audit_events_delete_only_pruned BEFORE DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_delete_only_pruned();

-- Each insert extends the chain by exactly one: next seq, linked to the current head.
CREATE FUNCTION audit_events_append_at_head() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq  bigint;
    head_hash text;
BEGIN
    SELECT seq, hash INTO head_seq, head_hash FROM audit_events ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        SELECT seq, hash INTO head_seq, head_hash FROM audit_anchor WHERE id = 1;
    END IF;
    IF NEW.seq IS DISTINCT FROM head_seq + 1 OR NEW.prev_hash IS DISTINCT FROM head_hash THEN
        RAISE EXCEPTION 'audit_events: an insert must extend the chain at its head';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_events_append_at_head BEFORE INSERT ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_append_at_head();

-- The anchor only moves forward, onto an event that exists with that hash, and is never removed.
CREATE FUNCTION audit_anchor_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id
        OR NEW.seq < OLD.seq
        OR (NEW.seq > OLD.seq
            AND NEW.hash IS DISTINCT FROM (SELECT hash FROM audit_events WHERE seq = NEW.seq))
        OR (NEW.seq = OLD.seq AND NEW.hash IS DISTINCT FROM OLD.hash) THEN
        RAISE EXCEPTION 'audit_anchor only moves forward onto a stored event';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_anchor_forward_only BEFORE UPDATE ON audit_anchor
FOR EACH ROW EXECUTE FUNCTION audit_anchor_forward_only();

CREATE FUNCTION audit_anchor_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_anchor cannot be deleted';
END;
$$;

CREATE TRIGGER audit_anchor_no_delete BEFORE DELETE ON audit_anchor
FOR EACH ROW EXECUTE FUNCTION audit_anchor_no_delete();

-- TRUNCATE fires no row triggers; PostgreSQL has it, SQLite does not, so it gets its own guard.
CREATE FUNCTION audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% cannot be truncated (audit log)', TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate();

CREATE TRIGGER audit_anchor_no_truncate BEFORE TRUNCATE ON audit_anchor
FOR EACH STATEMENT EXECUTE FUNCTION audit_no_truncate();

-- GrantMixedException (docs/pricing-rules.md §12): at most one grant per KST month 'YYYY-MM'.
CREATE TABLE mixed_grants (
    grant_id   text COLLATE "C" NOT NULL PRIMARY KEY,
    month      text        NOT NULL UNIQUE CHECK (month ~ '^[0-9]{4}-[01][0-9]$'),
    reason     text        NOT NULL,
    actor      text        NOT NULL,
    granted_at timestamptz NOT NULL
);

-- TAT over a completed_at window (docs/pricing-rules.md §16.3); covering, so the report reads no documents.
CREATE INDEX estimates_completed ON estimates (completed_at, accepted_at, status)
    WHERE completed_at IS NOT NULL;
-- Auto-processing rate: counts by status over an accepted_at window, from the index alone.
CREATE INDEX estimates_accepted_status ON estimates (accepted_at, status);
