-- 0001 (PostgreSQL): estimates, transport idempotency records, API tokens (docs/pricing-rules.md §13, §16.1).
-- The same schema as migrations/0001_initial.sql in PostgreSQL types:
-- * times are timestamptz (microsecond resolution, like the SQLite text form), read back in UTC;
-- * money and counters are bigint; blobs are bytea;
-- * the JSON document is text, not jsonb: it is written once by server.engine.codec and read back
--   byte for byte (jsonb would reorder keys and re-render numbers, and nothing queries inside it);
-- * keys and ids are COLLATE "C": byte order, as in SQLite, so keyset paging on
--   (accepted_at, estimate_id) sorts the same on both backends whatever the database collation.

CREATE TABLE estimates (
    estimate_id          text COLLATE "C" NOT NULL PRIMARY KEY,
    revision             integer     NOT NULL CHECK (revision >= 1),
    status               text        NOT NULL
        CHECK (status IN ('COMPLETED', 'NEEDS_REVIEW', 'REVIEWED', 'REJECTED')),
    decision             text        NOT NULL CHECK (decision IN ('OK', 'ABSTAIN', 'REJECT')),
    brand                text        NOT NULL,
    request_id           text COLLATE "C" NULL UNIQUE,
    dedup_key            text COLLATE "C" NULL UNIQUE,
    request_hash         text        NOT NULL,
    actor                text        NOT NULL,
    accepted_at          timestamptz NOT NULL,
    completed_at         timestamptz NULL,
    total_krw            bigint      NULL,
    partial_subtotal_krw bigint      NOT NULL,
    catalog_version      text        NOT NULL,
    document             text        NOT NULL
);

-- ListEstimates / ListReviewQueue: newest first, keyset on (accepted_at, estimate_id).
CREATE INDEX estimates_accepted ON estimates (accepted_at, estimate_id);
CREATE INDEX estimates_status_accepted ON estimates (status, accepted_at, estimate_id);
-- MIXED monthly quota (docs/pricing-rules.md §12).
CREATE INDEX estimates_brand_accepted ON estimates (brand, accepted_at);

CREATE TABLE idempotency (
    request_id   text COLLATE "C" NOT NULL PRIMARY KEY,
    request_hash text        NOT NULL,
    estimate_id  text COLLATE "C" NOT NULL REFERENCES estimates (estimate_id),
    response     bytea       NOT NULL,
    created_at   timestamptz NOT NULL
);

CREATE INDEX idempotency_estimate ON idempotency (estimate_id);

CREATE TABLE tokens (
    token_id     text COLLATE "C" NOT NULL PRIMARY KEY,
    name         text        NOT NULL,
    role         text        NOT NULL,
    token_sha256 text COLLATE "C" NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz NULL
);
