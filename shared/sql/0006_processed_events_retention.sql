-- Opted-in consumers' dedupe rows are pruned once older than the retention
-- setting (shared.retention); this index finds them per consumer without
-- reading every row the consumer has kept.
CREATE INDEX processed_events_processed_at ON processed_events (consumer, processed_at);
