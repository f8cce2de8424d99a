-- Agreement and account events carry their entity's sequence number (1, 2, 3 ...
-- per key; the outbox refuses a duplicate).  Each row counts the events recorded
-- about it; events recorded before numbering began count too, so the first
-- numbered event of an existing entity follows them.
ALTER TABLE agreements ADD COLUMN event_sequence bigint NOT NULL DEFAULT 0;
ALTER TABLE partners ADD COLUMN event_sequence bigint NOT NULL DEFAULT 0;
ALTER TABLE customers ADD COLUMN event_sequence bigint NOT NULL DEFAULT 0;

UPDATE agreements SET event_sequence = recorded.n
FROM (SELECT key, count(*) AS n FROM outbox WHERE topic = 'catalog.agreements' GROUP BY key)
    AS recorded
WHERE recorded.key = agreements.id;

UPDATE partners SET event_sequence = recorded.n
FROM (SELECT key, count(*) AS n FROM outbox WHERE topic = 'catalog.accounts' GROUP BY key)
    AS recorded
WHERE recorded.key = partners.id;

UPDATE customers SET event_sequence = recorded.n
FROM (SELECT key, count(*) AS n FROM outbox WHERE topic = 'catalog.accounts' GROUP BY key)
    AS recorded
WHERE recorded.key = customers.id;
