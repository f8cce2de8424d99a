-- Each order's events are applied in sequence by the shared batch consumer
-- (strict sequencing: consumer_positions and parked_events); settlement's own
-- copy of that guard goes.
DROP TABLE parked_order_events;
ALTER TABLE settled_orders DROP COLUMN last_sequence;
