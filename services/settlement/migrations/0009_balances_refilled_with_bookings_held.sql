-- The kept balances refilled from every posting, with bookings held back.
--
-- 0007 filled account_balances and order_balances from the postings its
-- statement could see, and only later in its transaction added the roll-up
-- trigger: nothing stopped bookings in between.  In a rolling upgrade the
-- older release keeps consuming while the new one migrates, and a chunk it
-- committed in that window was neither seen by the fill nor rolled up by the
-- trigger: its money was missing from every balance, for good.  SHARE mode
-- waits for each booking in flight and holds new ones until this commits, so
-- the balances are rebuilt from exactly the postings there are.  On a ledger
-- that lost nothing the result is the same rows.
LOCK TABLE postings IN SHARE MODE;

-- The balances refuse writes except from the roll-up: this migration is the
-- one other writer, within its own transaction.
ALTER TABLE account_balances DISABLE TRIGGER account_balances_kept;
ALTER TABLE order_balances DISABLE TRIGGER order_balances_kept;

DELETE FROM account_balances;
INSERT INTO account_balances (account, partner_id, currency, balance)
SELECT account, partner_id, currency, sum(amount) FROM postings
 GROUP BY account, partner_id, currency;

DELETE FROM order_balances;
INSERT INTO order_balances
SELECT order_id,
       coalesce(sum(amount) FILTER (WHERE account = 'customer_receivables'), 0),
       coalesce(sum(amount) FILTER (WHERE account = 'fee_revenue'), 0),
       coalesce(sum(amount) FILTER (WHERE account = 'partner_pending'), 0),
       coalesce(sum(amount) FILTER (WHERE account = 'partner_available'), 0),
       coalesce(sum(amount) FILTER (WHERE account = 'payouts_in_transit'), 0),
       coalesce(sum(amount) FILTER (WHERE account = 'cash'), 0)
  FROM postings WHERE order_id IS NOT NULL GROUP BY order_id;

ALTER TABLE account_balances ENABLE TRIGGER account_balances_kept;
ALTER TABLE order_balances ENABLE TRIGGER order_balances_kept;
