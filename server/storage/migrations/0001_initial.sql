-- 0001: estimates, transport idempotency records, API tokens (docs/pricing-rules.md §13, §16.1).
-- Timestamps are TEXT in RFC 3339 UTC with exactly six fractional digits
-- ('2025-10-01T03:04:05.000000Z'): fixed width, so text order is time order.
-- The JSON document (server.engine.codec, format 1) is the full record; the other columns
-- repeat what queries and unique indexes need and are written from the same record.

CREATE TABLE estimates (
    estimate_id          TEXT    NOT NULL PRIMARY KEY,
    revision             INTEGER NOT NULL CHECK (revision >= 1),
    status               TEXT    NOT NULL
        CHECK (status IN ('COMPLETED', 'NEEDS_REVIEW', 'REVIEWED', 'REJECTED')),
    decision             TEXT    NOT NULL CHECK (decision IN ('OK', 'ABSTAIN', 'REJECT')),
    brand                TEXT    NOT NULL,
    request_id           TEXT    NULL UNIQUE,
    dedup_key            TEXT    NULL UNIQUE,
    request_hash         TEXT    NOT NULL,
    actor                TEXT    NOT NULL,
    accepted_at          TEXT    NOT NULL,
    completed_at         TEXT    NULL,
    total_krw            INTEGER NULL,
    partial_subtotal_krw INTEGER NOT NULL,
    catalog_version      TEXT    NOT NULL,
    document             TEXT    NOT NULL
) STRICT;

-- ListEstimates / ListReviewQueue: newest first, keyset on (accepted_at, estimate_id).
CREATE INDEX estimates_accepted ON estimates (accepted_at, estimate_id);
CREATE INDEX estimates_status_accepted ON estimates (status, accepted_at, estimate_id);
-- MIXED monthly quota (docs/pricing-rules.md §12).
CREATE INDEX estimates_brand_accepted ON estimates (brand, accepted_at);

CREATE TABLE idempotency (
    request_id   TEXT NOT NULL PRIMARY KEY,
    request_hash TEXT NOT NULL,
    estimate_id  TEXT NOT NULL REFERENCES estimates (estimate_id),
    response     BLOB NOT NULL,
    created_at   TEXT NOT NULL
) STRICT;

CREATE INDEX idempotency_estimate ON idempotency (estimate_id);

CREATE TABLE tokens (
    token_id     TEXT NOT NULL PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT NULL
) STRICT;
