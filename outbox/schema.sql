-- The transactional outbox of github.com/mqkit/mq/outbox (PostgreSQL 14 or
-- later). outbox.Migrate runs this file, in one transaction, with
-- "mq_outbox" replaced by the table's name; a DBA may run it by hand
-- instead. Every statement is idempotent.
--
-- A row is one message waiting to be published. Writers insert rows in
-- their own transactions (outbox.Add); a relay publishes committed rows
-- to the broker and deletes them once the broker accepted them, so the
-- table holds only the backlog.

CREATE TABLE IF NOT EXISTS mq_outbox (
    -- Insert order. Writers take a transaction-scoped advisory lock on the
    -- message key before inserting, so the rows of one key are numbered
    -- in commit order. The sequence must not cache values (CACHE 1, the
    -- default): cached values are handed out out of order across sessions.
    seq        bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    -- The message ID (a UUIDv7 unless the writer set one); a re-published
    -- row keeps it, so consumers that deduplicate by ID skip the copy.
    id         text        NOT NULL,
    topic      text        NOT NULL,
    -- The message key: any bytes (empty: no order).
    key        bytea       NOT NULL,
    -- The headers, sorted by name, each as uvarint(len(name)) name
    -- uvarint(len(value)) value; NULL for none.
    headers    bytea,
    body       bytea       NOT NULL,
    -- Which of the 64 partitions the row's key hashes to. A relay works on
    -- a partition only while it holds that partition's advisory lock.
    part       smallint    NOT NULL CHECK (part >= 0 AND part < 64),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The relay reads each partition in seq order.
CREATE INDEX IF NOT EXISTS mq_outbox_part_seq ON mq_outbox (part, seq);

-- Wakes the relays (LISTEN mq_outbox) when a transaction that inserted
-- rows commits. PostgreSQL folds the notifications of one transaction
-- into one; relays also poll, so a lost notification only delays.
CREATE OR REPLACE FUNCTION mq_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mq_outbox', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER mq_outbox_notify
    AFTER INSERT ON mq_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION mq_outbox_notify();
