-- Balances kept by the database as postings are booked, instead of indexes
-- that every read summed over.
--
-- The two secondary indexes on postings (by partner, by order) cost more to
-- maintain than the rest of a posting's insert together (a posting is written
-- ~5 times per order event).  What read them wants sums: a partner's
-- balances, the trial balance, what the ledger holds per order (the three-way
-- check).  Those sums are now kept in two tables that the statement-level
-- trigger below updates from each statement's new postings, aggregated: one
-- upsert per account and per order touched, not one index entry per posting.
-- Postings are append-only (UPDATE, DELETE and TRUNCATE refused), and every
-- INSERT into postings passes through the trigger, so each balance equals the
-- sum of its postings; the tables refuse writes from anywhere but the trigger.
-- Statements still read a partner's postings: one narrow index (partner id
-- only, compared bytewise) serves them.

-- Per account (kind, partner, currency): the signed sum of its postings (debit positive).
CREATE TABLE account_balances (
    account    text   NOT NULL,
    partner_id text,
    currency   text   NOT NULL,
    balance    bigint NOT NULL,
    UNIQUE NULLS NOT DISTINCT (account, partner_id, currency)
) WITH (fillfactor = 70);

-- Per order: the signed sum of its postings on each account kind (debit positive).
-- An order has one currency (settled_orders.currency).
CREATE TABLE order_balances (
    order_id             text   PRIMARY KEY,
    customer_receivables bigint NOT NULL,
    fee_revenue          bigint NOT NULL,
    partner_pending      bigint NOT NULL,
    partner_available    bigint NOT NULL,
    payouts_in_transit   bigint NOT NULL,
    cash                 bigint NOT NULL
) WITH (fillfactor = 70);

INSERT INTO account_balances (account, partner_id, currency, balance)
SELECT account, partner_id, currency, sum(amount) FROM postings
 GROUP BY account, partner_id, currency;

INSERT INTO order_balances
SELECT order_id,
       coalesce(sum(amount) FILTER (WHERE account = 'customer_receivables'), 0),
       coalesce(sum(amount) FILTER (WHERE account = 'fee_revenue'), 0),
       coalesce(sum(amount) FILTER (WHERE account = 'partner_pending'), 0),
       coalesce(sum(amount) FILTER (WHERE account = 'partner_available'), 0),
       coalesce(sum(amount) FILTER (WHERE account = 'payouts_in_transit'), 0),
       coalesce(sum(amount) FILTER (WHERE account = 'cash'), 0)
  FROM postings WHERE order_id IS NOT NULL GROUP BY order_id;

-- The balance check (0001) and the closed-entry check (0005) each read the new
-- postings again and found their entries with a hash join over every journal
-- entry: two scans of the whole journal per chunk, growing with the ledger.
-- Now one trigger, one aggregation per entry and currency, and one index
-- lookup per entry (LATERAL ... LIMIT 1 keeps the planner from the join).
-- Same rules, same errors.
CREATE OR REPLACE FUNCTION ledger_refuse_unbalanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wrong record;
BEGIN
    SELECT per_entry.entry_id, per_entry.currency, per_entry.total,
           found.entry_id IS NULL AS missing
      INTO wrong
      FROM (SELECT entry_id, currency, sum(amount) AS total FROM new_postings
             GROUP BY entry_id, currency) per_entry
      LEFT JOIN LATERAL (SELECT e.entry_id, e.created_by_xact FROM journal_entries e
                          WHERE e.entry_id = per_entry.entry_id LIMIT 1) found ON true
     WHERE per_entry.total <> 0 OR found.entry_id IS NULL
        OR found.created_by_xact <> pg_current_xact_id()
     ORDER BY per_entry.total <> 0 DESC, found.entry_id IS NULL DESC
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF wrong.total <> 0 THEN
        RAISE EXCEPTION 'journal entry % does not balance: its % postings sum to %',
            wrong.entry_id, wrong.currency, wrong.total
            USING ERRCODE = 'check_violation';
    END IF;
    IF wrong.missing THEN
        RAISE EXCEPTION 'postings name a journal entry that does not exist'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RAISE EXCEPTION 'journal entry % is closed: postings can only be added by the transaction that created it; book a correcting entry',
        wrong.entry_id USING ERRCODE = 'insufficient_privilege';
END
$$;
DROP TRIGGER postings_only_while_their_entry_is_open ON postings;
DROP FUNCTION ledger_refuse_postings_to_closed_entries();

-- Rows are upserted in key order, so two chunks committing at once lock the
-- shared rows (the house accounts) in the same order and never deadlock.
CREATE FUNCTION ledger_roll_up() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_balances AS b (account, partner_id, currency, balance)
    SELECT account, partner_id, currency, sum(amount) FROM new_postings
     GROUP BY account, partner_id, currency
     ORDER BY account, partner_id, currency
    ON CONFLICT (account, partner_id, currency)
    DO UPDATE SET balance = b.balance + EXCLUDED.balance;

    INSERT INTO order_balances AS b
    SELECT order_id,
           coalesce(sum(amount) FILTER (WHERE account = 'customer_receivables'), 0),
           coalesce(sum(amount) FILTER (WHERE account = 'fee_revenue'), 0),
           coalesce(sum(amount) FILTER (WHERE account = 'partner_pending'), 0),
           coalesce(sum(amount) FILTER (WHERE account = 'partner_available'), 0),
           coalesce(sum(amount) FILTER (WHERE account = 'payouts_in_transit'), 0),
           coalesce(sum(amount) FILTER (WHERE account = 'cash'), 0)
      FROM new_postings WHERE order_id IS NOT NULL
     GROUP BY order_id ORDER BY order_id
    ON CONFLICT (order_id) DO UPDATE SET
        customer_receivables = b.customer_receivables + EXCLUDED.customer_receivables,
        fee_revenue = b.fee_revenue + EXCLUDED.fee_revenue,
        partner_pending = b.partner_pending + EXCLUDED.partner_pending,
        partner_available = b.partner_available + EXCLUDED.partner_available,
        payouts_in_transit = b.payouts_in_transit + EXCLUDED.payouts_in_transit,
        cash = b.cash + EXCLUDED.cash;
    RETURN NULL;
END
$$;
CREATE TRIGGER postings_roll_up AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_roll_up();

-- Only the roll-up (a trigger, so one level deeper) may write the balances.
CREATE FUNCTION ledger_balances_refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION '% on % is refused: balances follow the postings; book an entry',
            TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER account_balances_kept BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON account_balances FOR EACH STATEMENT EXECUTE FUNCTION ledger_balances_refuse_writes();
CREATE TRIGGER order_balances_kept BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON order_balances FOR EACH STATEMENT EXECUTE FUNCTION ledger_balances_refuse_writes();

DROP INDEX postings_partner;
DROP INDEX postings_order;
-- A partner's statement lines: partner ids are ASCII, so bytewise order is enough.
CREATE INDEX postings_partner_lines ON postings (partner_id COLLATE "C")
    WHERE partner_id IS NOT NULL;
