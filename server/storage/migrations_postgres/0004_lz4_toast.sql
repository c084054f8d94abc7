-- 0004 (PostgreSQL only): how the three large values of every create are stored (TOAST).
--
-- * evidence.bundle: 0002 stored it out of line *uncompressed* (STORAGE EXTERNAL), on the belief
--   that a ZIP is compressed already. The bundle's entries are STORED (docs/pricing-rules.md §15:
--   the reproducible layout), so it is ~26 KiB of JSON that compresses about fourfold; uncompressed,
--   every create wrote all of it to the table and to the WAL. Back to EXTENDED (compressed, then
--   out of line).
-- * the compression method of the bundle, the estimate document and the stored reply is lz4:
--   measured per insert of a real bundle, lz4 takes ~180 us of server CPU where pglz (the default)
--   takes ~420 us and storing it uncompressed ~215 us (more bytes to write), with the same size as
--   pglz; for a 14.6 KiB document ~170 us against pglz's ~290 us, 6.0 KB stored against 5.6 KB.
--   What reads the values back gets the same bytes; only new rows are written this way (existing
--   rows stay as they were stored, and read back as before).
--
-- lz4 needs PostgreSQL 14 or later built with it (Debian's, Ubuntu's and the official images are).
-- On a server without it the bundle is still compressed, with pglz, and the other two keep pglz:
-- the migration does not fail. EXECUTE defers parsing, so that PostgreSQL 13, which has no
-- SET COMPRESSION, reaches the handler too.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE evidence ALTER COLUMN bundle SET STORAGE EXTENDED,'
            ' ALTER COLUMN bundle SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE estimates ALTER COLUMN document SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE idempotency ALTER COLUMN response SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'lz4 TOAST compression unavailable (%): pglz is used', SQLERRM;
    ALTER TABLE evidence ALTER COLUMN bundle SET STORAGE EXTENDED;
END
$$;
