-- The tables of github.com/mqkit/mq/idempotency/pgstore (PostgreSQL 11 or
-- later). pgstore.Migrate runs this file, in one transaction, with
-- "mq_idempotency" replaced by the configured table name; a DBA may run it
-- by hand instead. Every statement is idempotent.

-- One row per deduplication key: held (done = false) by the claim whose
-- token it names until expires_at, or done until expires_at. Rows past
-- expires_at count as absent; Store.Sweep deletes them.
CREATE TABLE IF NOT EXISTS mq_idempotency (
    key        bytea       PRIMARY KEY, -- any bytes: "<namespace>:<topic>:<message key>"
    token      text        NOT NULL,
    done       boolean     NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS mq_idempotency_expires ON mq_idempotency (expires_at);

-- One row per delivery count of package dlq's AttemptCounter.
CREATE TABLE IF NOT EXISTS mq_idempotency_attempts (
    key        bytea       PRIMARY KEY, -- any bytes: "<namespace>:<topic>:<message key>"
    n          integer     NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS mq_idempotency_attempts_expires ON mq_idempotency_attempts (expires_at);
