-- Plumbing tables every service owns in its own database.

-- Transactional outbox: written in the same transaction as the state change it
-- describes; the relay publishes unsent rows and only then marks them sent.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     text        NOT NULL UNIQUE,
    topic        text        NOT NULL,
    key          text        NOT NULL,
    event_type   text        NOT NULL,
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
-- The relay only ever looks for unsent rows; keep that lookup tiny.
CREATE INDEX outbox_unsent ON outbox (id) WHERE published_at IS NULL;

-- Idempotent consumers: one row per (consumer, event) applied, inserted in the
-- transaction that applies the event, so an event is applied at most once.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Idempotency-Key for POSTs: the first successful response, replayed for the
-- same key and body; scoped by the caller so keys of two tenants never meet.
CREATE TABLE idempotency_keys (
    principal    text        NOT NULL,
    key          text        NOT NULL,
    fingerprint  bytea       NOT NULL,
    status       integer,
    content_type text,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
