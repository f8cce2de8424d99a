-- Agreement expiry moved onto the shared durable timers (plumbing 0003): every
-- agreement still due to expire gets its timer; the index only the old
-- periodic sweep used goes.
INSERT INTO timers (kind, key, due_at, next_attempt_at)
SELECT 'catalog.agreement.expiry', id, expires_at, expires_at
FROM agreements
WHERE status = 'active' AND expires_at IS NOT NULL
ON CONFLICT (kind, key) DO NOTHING;

DROP INDEX agreements_expiring;
