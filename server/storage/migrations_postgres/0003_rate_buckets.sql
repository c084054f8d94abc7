-- 0003 (PostgreSQL only): the per-token request budget shared by every replica on this database
-- (server/service/shared_rate_limit.py). One token bucket per key, refilled continuously; the
-- database clock stamps it, so replicas with skewed clocks still agree. SQLite deployments are one
-- host and keep their buckets in process memory (server/service/rate_limit.py).
CREATE TABLE rate_buckets (
    bucket_key   text COLLATE "C" NOT NULL PRIMARY KEY,
    tokens       double precision NOT NULL,
    last_allowed boolean          NOT NULL,
    updated_at   timestamptz      NOT NULL
);
