-- Sent outbox rows are pruned once older than the retention setting; this
-- index finds them without reading the rows still inside it.
CREATE INDEX outbox_sent ON outbox (published_at) WHERE published_at IS NOT NULL;
