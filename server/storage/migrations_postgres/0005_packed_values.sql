-- 0005 (PostgreSQL only): a create's document and evidence bundle arrive packed.
--
-- The replica packs both as zstd frames before it sends them (server/storage/packing.py), so that
-- the database every replica shares no longer compresses them itself (0004's lz4 was 0.1-0.2 ms
-- of its CPU per create). Here:
--
-- * estimates.document becomes bytea: a zstd frame for new rows; the rows already stored become
--   their UTF-8 text as bytes, which the reader tells from a frame by its first byte. The type
--   change rewrites the table (and its indexes) once, under an exclusive lock: on a large table,
--   run it in a maintenance window. It runs before the storage change below, so the rewritten
--   rows stay compressed (lz4, as 0004 chose).
-- * evidence.bundle: size_bytes stays the size of the ZIP, so the check that it equals the stored
--   length now holds for the bundles stored as they are (before this migration); a packed bundle
--   must start with the zstd magic, and the reader checks its SHA-256 once unpacked.
-- * both columns are STORAGE EXTERNAL from now on: out of line when large, never compressed again
--   (a zstd frame does not shrink further; trying would cost CPU for nothing).
DO $$
BEGIN
    -- A type change resets the column's compression to the default (pglz): lz4 is set again in
    -- the same statement, so the rewrite uses it; where lz4 is unavailable, 0004's fallback holds.
    EXECUTE 'ALTER TABLE estimates ALTER COLUMN document TYPE bytea USING convert_to(document, ''UTF8''),'
            ' ALTER COLUMN document SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    ALTER TABLE estimates ALTER COLUMN document TYPE bytea USING convert_to(document, 'UTF8');
END
$$;
ALTER TABLE estimates ALTER COLUMN document SET STORAGE EXTERNAL;

ALTER TABLE evidence DROP CONSTRAINT evidence_check;
ALTER TABLE evidence ADD CONSTRAINT evidence_bundle_size CHECK (
    size_bytes = octet_length(bundle) OR substring(bundle FROM 1 FOR 4) = '\x28b52ffd'::bytea
);
ALTER TABLE evidence ALTER COLUMN bundle SET STORAGE EXTERNAL;
