-- 0003: the evidence ZIP is stored packed (a zstd frame, server/storage/packing.py).
--
-- The bundle's entries are STORED JSON (docs/pricing-rules.md §15), ~26 KiB a create that SQLite
-- kept as it is; packed it is ~6 KiB, so a create's rows shrink by nearly half. size_bytes stays
-- the size of the ZIP, so the check that it equals the stored length now holds for the bundles
-- stored before this migration, and a packed bundle must start with the zstd magic; the reader
-- unpacks a frame and checks the bundle's SHA-256.
--
-- SQLite cannot change a CHECK in place: the table is rebuilt (its rows copied as they are; no
-- other table references evidence, and it has no index or trigger of its own). The JSON document
-- stays TEXT: its STRICT column could only change with estimates rebuilt, which other tables
-- reference.
CREATE TABLE evidence_packed (
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
    CHECK (size_bytes = length(bundle) OR substr(bundle, 1, 4) = X'28B52FFD'),
    CHECK ((signature_key_id IS NULL) = (signature IS NULL))
) STRICT;

INSERT INTO evidence_packed
SELECT estimate_id, revision, sha256, size_bytes, signature_key_id, signature, created_at, manifest_json, bundle
FROM evidence;

DROP TABLE evidence;

ALTER TABLE evidence_packed RENAME TO evidence;
