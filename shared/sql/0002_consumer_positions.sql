-- Per-aggregate sequencing on the consumer side (shared.sequencing).

-- The last sequence number a consumer applied for one aggregate (topic, key);
-- written in the transaction that applies the event, so it never runs ahead
-- of or behind the effects.
CREATE TABLE consumer_positions (
    consumer   text        NOT NULL,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    sequence   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, key)
);

-- Events that arrived ahead of a gap in their aggregate's sequence ("strict"
-- consumers): kept, never applied out of order, released in order once the
-- missing event applies.  The message is stored as it came off the topic.
CREATE TABLE parked_events (
    consumer   text        NOT NULL,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    sequence   bigint      NOT NULL,
    event_id   text        NOT NULL,
    message    bytea       NOT NULL,
    parked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, key, sequence)
);
