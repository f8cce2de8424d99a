-- Per-key order is a constraint, not a convention: an event that carries its
-- aggregate's sequence number (1, 2, 3 ... per key) can be recorded only once
-- per (topic, key, sequence).  Two writers that both read version n of an
-- aggregate and both try to record n + 1 cannot both commit.  Events without a
-- sequence (older producers, topics without per-key order) are not constrained.
ALTER TABLE outbox ADD COLUMN sequence bigint;
CREATE UNIQUE INDEX outbox_key_sequence ON outbox (topic, key, sequence)
    WHERE sequence IS NOT NULL;
